"""The txt2img and img2img tabs: prompts with token counters, sampling, seed, hires and inpainting controls,
Generate / Interrupt / Skip, progress, previews and results; a Generate click queues a job and follows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import gradio as gr
from anyio import to_thread
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.jobs import JobStatus
from latentstudio.ui.backend import Kind
from latentstudio.ui.common import (
    MASKED_CONTENT,
    RESIZE_MODES,
    GetBackend,
    error_box,
    error_md,
    error_update,
    progress_html_idle,
)
from latentstudio.ui.icons import tool_button
from latentstudio.ui.runner import ResultImage, watch


@dataclass
class GenTab:
    """The controls and outputs of one generation tab (txt2img or img2img)."""

    kind: Kind
    prompt: gr.Textbox
    negative: gr.Textbox
    fields: dict[str, gr.components.Component]  # A1111 request field → control
    clip_skip: gr.Slider
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    error: gr.Markdown
    job: gr.State
    images: gr.State
    selected: gr.State
    to_img2img: gr.Button
    to_inpaint: gr.Button
    to_extras: gr.Button
    loras: gr.Dataset
    embeddings: gr.Dataset
    size_set: gr.State  # True once the user set Width or Height here: they no longer follow the checkpoint

    @property
    def size(self) -> list[gr.Slider]:
        """The Width and Height sliders."""
        return [cast(gr.Slider, self.fields[name]) for name in ("width", "height")]


def native_sizes(native: int | None, *size_set: bool) -> tuple[Any, ...]:
    """Width and Height of each tab (``size_set`` in tab order): the checkpoint's ``native`` size where the
    user has not set them, else (and when the size is unknown) left as they are."""
    sizes: list[Any] = []
    for user_set in size_set:
        value = gr.skip() if native is None or user_set else native
        sizes += [value, value]
    return tuple(sizes)


def _token_counter(elem: str) -> gr.HTML:
    return gr.HTML("0/75", elem_id=elem, elem_classes="ls-tokens", padding=False)


def _wire_counter(get: GetBackend, prompt: gr.Textbox, steps: Any, counter: gr.HTML) -> None:
    """A1111's ``23/75`` counter, updated as the prompt or the step count changes."""

    def count(text: str, n: float) -> str:
        tokens, bound = get().token_count(text or "", int(n or 20))
        return f"{tokens}/{bound}"

    for trigger in (prompt.change, steps.change):
        trigger(
            count, [prompt, steps], counter, show_progress="hidden", queue=False, trigger_mode="always_last"
        )


def _sampling_controls(p: str) -> dict[str, gr.components.Component]:
    with gr.Row():
        sampler = gr.Dropdown(["DPM++ 2M"], value="DPM++ 2M", label="Sampling method", elem_id=f"{p}_sampler")
        scheduler = gr.Dropdown(
            ["Automatic"], value="Automatic", label="Schedule type", elem_id=f"{p}_scheduler"
        )
        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{p}_steps")
    with gr.Row():
        width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{p}_width")
        height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{p}_height")
        batch_count = gr.Slider(1, 64, value=1, step=1, label="Batch count", elem_id=f"{p}_batch_count")
        batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{p}_batch_size")
    cfg = gr.Slider(0.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{p}_cfg_scale")
    return {
        "sampler_name": sampler,
        "scheduler": scheduler,
        "steps": steps,
        "width": width,
        "height": height,
        "n_iter": batch_count,
        "batch_size": batch_size,
        "cfg_scale": cfg,
    }


def _seed_controls(p: str, fields: dict[str, gr.components.Component]) -> tuple[gr.Button, gr.Number]:
    with gr.Row():
        seed = gr.Number(-1, label="Seed", precision=0, elem_id=f"{p}_seed", scale=4)
        random_seed = tool_button("Random seed", "dice", f"{p}_random_seed")
        reuse_seed = tool_button("Reuse seed", "reuse", f"{p}_reuse_seed")
    random_seed.click(lambda: -1, None, seed, queue=False, show_progress="hidden")
    fields["seed"] = seed
    return reuse_seed, seed


def _networks_panel(p: str) -> tuple[gr.Dataset, gr.Dataset]:
    with gr.Accordion("Extra networks", open=False, elem_id=f"{p}_networks"):
        loras = gr.Dataset(
            components=["text"], samples=[], label="LoRA (click to add to the prompt)", elem_id=f"{p}_loras"
        )
        embeddings = gr.Dataset(
            components=["text"], samples=[], label="Textual inversion", elem_id=f"{p}_embeddings"
        )
    return loras, embeddings


def gen_tab(get: GetBackend, kind: Kind) -> tuple[GenTab, dict[str, Any]]:
    """The shared layout of txt2img and img2img; returns the tab and the kind-specific inputs."""
    p = kind
    extra: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{p}_prompt", placeholder="Prompt")
            counter = _token_counter(f"{p}_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{p}_neg_prompt")
            negative_counter = _token_counter(f"{p}_negative_token_counter")
        with gr.Column(scale=1, min_width=180):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{p}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{p}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{p}_skip", size="sm")
            error = error_box(f"{p}_error")
    with gr.Row():
        with gr.Column(scale=1):
            if kind == "img2img":
                extra.update(_img2img_inputs())
            fields = _sampling_controls(p)
            reuse_seed, seed = _seed_controls(p, fields)
            clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id=f"{p}_clip_skip")
            if kind == "txt2img":
                fields.update(_hires_controls())
            else:
                fields.update(extra.pop("fields"))
            loras, embeddings = _networks_panel(p)
        with gr.Column(scale=1):
            progress = gr.HTML(progress_html_idle(), elem_id=f"{p}_progress", padding=False)
            preview = gr.Image(
                label="Preview", elem_id=f"{p}_preview", visible=False, format="jpeg", height=256
            )
            gallery = gr.Gallery(label="Output", elem_id=f"{p}_gallery", columns=2, height=420, format="png")
            with gr.Row():
                to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{p}_send_to_img2img")
                to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{p}_send_to_inpaint")
                to_extras = gr.Button("Send to extras", size="sm", elem_id=f"{p}_send_to_extras")
            info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{p}_info")
    _wire_counter(get, prompt, fields["steps"], counter)
    _wire_counter(get, negative, fields["steps"], negative_counter)
    tab = GenTab(
        kind,
        prompt,
        negative,
        fields,
        clip_skip,
        generate,
        interrupt,
        skip,
        progress,
        preview,
        gallery,
        info,
        error,
        gr.State(None),
        gr.State([]),
        gr.State(0),
        to_img2img,
        to_inpaint,
        to_extras,
        loras,
        embeddings,
        gr.State(False),
    )
    for slider in tab.size:  # .input fires for the user's changes only, never for the catalog's updates
        slider.input(lambda: True, None, tab.size_set, queue=False, show_progress="hidden")

    def reuse(images: list[ResultImage], index: int) -> Any:
        return images[index].seed if images and 0 <= index < len(images) else gr.skip()

    reuse_seed.click(reuse, [tab.images, tab.selected], seed, queue=False, show_progress="hidden")
    return tab, extra


def _hires_controls() -> dict[str, gr.components.Component]:
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        enable = gr.Checkbox(False, label="Enable", elem_id="txt2img_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(
                ["Latent"], value="Latent", label="Upscaler", elem_id="txt2img_hr_upscaler"
            )
            hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps", elem_id="txt2img_hires_steps")
            denoise = gr.Slider(
                0.0,
                1.0,
                value=0.7,
                step=0.01,
                label="Denoising strength",
                elem_id="txt2img_denoising_strength",
            )
        with gr.Row():
            scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            resize_x = gr.Slider(
                0, 2048, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x"
            )
            resize_y = gr.Slider(
                0, 2048, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y"
            )
    return {
        "enable_hr": enable,
        "hr_upscaler": upscaler,
        "hr_second_pass_steps": hr_steps,
        "denoising_strength": denoise,
        "hr_scale": scale,
        "hr_resize_x": resize_x,
        "hr_resize_y": resize_y,
    }


def _img2img_inputs() -> dict[str, Any]:
    mode = gr.State("img2img")
    with gr.Tabs(elem_id="img2img_mode_tabs") as modes:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t_img:
            # PNG, not Gradio's default lossy WebP: an image sent here by the server comes back exact
            init = gr.Image(
                type="pil", label="Image for img2img", elem_id="img2img_image", height=360, format="png"
            )
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t_inpaint:
            editor = gr.ImageEditor(
                type="pil",
                label="Image for inpainting with mask",
                elem_id="img2img_inpaint_editor",
                image_mode="RGBA",
                format="png",
                layers=False,
                transforms=(),
                height=420,
                brush=gr.Brush(default_size=24, colors=["#ffffff"], color_mode="fixed"),
                eraser=gr.Eraser(),
            )
            mask_info = gr.Markdown("No image yet.", elem_id="img2img_mask_info")
            # Gradio hands an editor's uploaded pieces to the first event that reads them and then drops
            # them, sending later only what changed; so the whole (image, mask) is tracked here too and
            # Generate merges its own value over it.
            edited = gr.State(None)
            editor.change(
                track_editor, [editor, edited], [edited, mask_info], queue=False, show_progress="hidden"
            )
            editor.clear(lambda: (None, "No image yet."), None, [edited, mask_info], queue=False)
        with (
            gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t_upload,
            gr.Row(),
        ):
            upload_init = gr.Image(type="pil", label="Image", elem_id="img2img_upload_image")
            upload_mask = gr.Image(type="pil", label="Mask", elem_id="img2img_upload_mask", image_mode="L")
    for tab, name in ((t_img, "img2img"), (t_inpaint, "inpaint"), (t_upload, "inpaint_upload")):
        tab.select(lambda n=name: n, None, mode, queue=False, show_progress="hidden")
    resize_mode = gr.Radio(
        RESIZE_MODES, value=RESIZE_MODES[0], type="index", label="Resize mode", elem_id="img2img_resize_mode"
    )
    denoise = gr.Slider(
        0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
    )
    with gr.Accordion("Inpainting", open=True, elem_id="img2img_inpaint_controls"):
        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
        invert = gr.Radio(
            ["Inpaint masked", "Inpaint not masked"],
            value="Inpaint masked",
            type="index",
            label="Mask mode",
            elem_id="img2img_mask_mode",
        )
        fill = gr.Radio(
            MASKED_CONTENT,
            value="original",
            type="index",
            label="Masked content",
            elem_id="img2img_inpainting_fill",
        )
        full_res = gr.Radio(
            ["Whole picture", "Only masked"],
            value="Whole picture",
            type="index",
            label="Inpaint area",
            elem_id="img2img_inpaint_full_res",
        )
        padding = gr.Slider(
            0,
            256,
            value=32,
            step=4,
            label="Only masked padding, pixels",
            elem_id="img2img_inpaint_full_res_padding",
        )
    return {
        "mode": mode,
        "modes": modes,
        "init": init,
        "editor": editor,
        "edited": edited,
        "mask_info": mask_info,
        "upload_init": upload_init,
        "upload_mask": upload_mask,
        "fields": {
            "resize_mode": resize_mode,
            "denoising_strength": denoise,
            "mask_blur": mask_blur,
            "inpainting_mask_invert": invert,
            "inpainting_fill": fill,
            "inpaint_full_res": full_res,
            "inpaint_full_res_padding": padding,
        },
    }


Edited = dict[str, Image.Image | None]  # {"init": RGB image, "mask": L image or None}


def merge_editor(value: dict[str, Any] | None, state: Edited | None) -> Edited | None:
    """The editor's whole (image, mask): what ``value`` brings over ``state``, pieces it did not resend
    kept from ``state``. The mask is white wherever a layer is painted (any alpha), scaled to the image."""
    value = value or {}
    merged: Edited = dict(state or {"init": None, "mask": None})
    if value.get("background") is not None:
        merged = {"init": value["background"].convert("RGB"), "mask": None}
    init = merged["init"]
    if init is None:
        return state
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    if layers:
        mask = Image.new("L", init.size, 0)
        for layer in layers:
            alpha = layer.convert("RGBA").getchannel("A")
            if alpha.size != init.size:
                alpha = alpha.resize(init.size, Image.Resampling.NEAREST)
            mask.paste(255, (0, 0), alpha.point(lambda v: 255 if v > 0 else 0))
        merged["mask"] = mask if mask.getbbox() is not None else None
    return merged


def track_editor(value: dict[str, Any] | None, state: Edited | None) -> tuple[Any, str]:
    """The tracked (image, mask) after an editor event, and the line under the editor describing it."""
    merged = merge_editor(value, state)
    init = merged["init"] if merged else None
    if merged is None or init is None:
        return gr.skip(), "No image yet."
    painted = merged["mask"]
    if painted is None:
        return merged, f"Image {init.width}×{init.height} · no mask yet: paint over what to repaint."
    covered = sum(painted.histogram()[1:]) / (init.width * init.height)
    return merged, f"Image {init.width}×{init.height} · mask covers {covered:.1%}"


def _request_fields(tab: GenTab, values: Sequence[Any]) -> dict[str, Any]:
    """The A1111 request from the controls' values (in ``_inputs`` order)."""
    names = ["prompt", "negative_prompt", *tab.fields, "clip_skip"]
    raw = dict(zip(names, values, strict=True))
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k != "clip_skip"}
    for key in (
        "steps",
        "width",
        "height",
        "n_iter",
        "batch_size",
        "seed",
        "hr_second_pass_steps",
        "hr_resize_x",
        "hr_resize_y",
        "mask_blur",
        "inpaint_full_res_padding",
    ):
        if fields.get(key) is not None:
            fields[key] = int(fields[key])
    if "inpaint_full_res" in fields:
        fields["inpaint_full_res"] = bool(fields["inpaint_full_res"])
    fields["override_settings"] = {"CLIP_stop_at_last_layers": int(raw["clip_skip"])}
    fields["save_images"] = False
    return fields


def _inputs(tab: GenTab) -> list[Any]:
    return [tab.prompt, tab.negative, *tab.fields.values(), tab.clip_skip]


def wire_generate(get: GetBackend, tab: GenTab, extra: dict[str, Any]) -> None:
    outputs = [tab.progress, tab.preview, tab.gallery, tab.info, tab.error, tab.job, tab.images, tab.selected]
    image_inputs = (
        [
            extra["mode"],
            extra["init"],
            extra["editor"],
            extra["edited"],
            extra["upload_init"],
            extra["upload_mask"],
        ]
        if extra
        else []
    )
    count = len(_inputs(tab))

    async def run(*values: Any) -> AsyncIterator[tuple[Any, ...]]:
        """Queue the job (in a pool thread), then follow its events (holding no thread)."""
        backend = get()
        init = mask = None
        if tab.kind == "img2img":
            mode, plain, editor_value, tracked, upload_init, upload_mask = values[count:]
            edited = merge_editor(editor_value, tracked)  # the click's own value, else what was tracked
            if mode == "img2img" and plain is None:  # the sub-tab event may lag: take the filled one
                mode = "inpaint" if edited and edited.get("init") is not None else "inpaint_upload"
            if mode == "img2img":
                init = plain
            elif mode == "inpaint":
                init, mask = (edited["init"], edited["mask"]) if edited else (None, None)
                if init is not None and mask is None:
                    yield _failed(
                        error_md(FieldError("mask", "draw over the part to repaint (nothing is painted)"))
                    )
                    return
            else:
                init, mask = upload_init, upload_mask
        fields = _request_fields(tab, values[:count])
        try:
            record = await to_thread.run_sync(lambda: backend.submit(tab.kind, fields, init, mask))
        except FieldError as e:
            yield _failed(error_md(e))
            return
        skip = gr.skip()
        async for view in watch(backend.jobs, record.id):
            preview = gr.update(value=view.preview, visible=True) if view.preview is not None else skip
            if not view.status.terminal:
                yield (view.progress_html, preview, skip, skip, error_update(""), record.id, skip, skip)
                continue
            images = list(view.results)
            gallery = [(r.path, f"Seed {r.seed}") for r in images]
            info = images[0].infotext if images else ""
            yield (
                view.progress_html,
                gr.update(visible=False),
                gallery,
                info,
                error_update(view.message),
                None,
                images,
                0,
            )

    def _failed(message: str) -> tuple[Any, ...]:
        skip = gr.skip()
        return (progress_html_idle(), skip, skip, skip, error_update(message), None, skip, skip)

    tab.generate.click(
        run, [*_inputs(tab), *image_inputs], outputs, concurrency_limit=None, show_progress="hidden"
    )
    tab.interrupt.click(
        lambda job: _control(get, job, "interrupt"), tab.job, None, queue=False, show_progress="hidden"
    )
    tab.skip.click(lambda job: _control(get, job, "skip"), tab.job, None, queue=False, show_progress="hidden")

    def select(images: list[ResultImage], evt: gr.SelectData) -> tuple[Any, int]:
        index = int(evt.index) if isinstance(evt.index, int) else 0
        return (images[index].infotext if 0 <= index < len(images) else ""), index

    tab.gallery.select(select, tab.images, [tab.info, tab.selected], queue=False, show_progress="hidden")


def _control(get: GetBackend, job_id: str | None, action: str) -> None:
    """Interrupt / Skip for this page's job: a queued job is cancelled, a running one told to stop."""
    if not job_id:
        return
    jobs = get().jobs
    record = jobs.get(job_id)
    if record.status is JobStatus.QUEUED:
        jobs.cancel(job_id)
    elif action == "interrupt":
        jobs.interrupt(job_id)
    else:
        jobs.skip(job_id)


def wire_networks(tab: GenTab) -> None:
    def add(prompt: str, sample: list[str], template: str) -> str:
        token = template.format(sample[0])
        return f"{prompt}, {token}" if prompt.strip() else token

    tab.loras.click(lambda p, s: add(p, s, "<lora:{}:1>"), [tab.prompt, tab.loras], tab.prompt, queue=False)
    tab.embeddings.click(lambda p, s: add(p, s, "{}"), [tab.prompt, tab.embeddings], tab.prompt, queue=False)
