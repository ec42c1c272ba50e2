"""The Gradio Blocks app: txt2img, img2img (with inpainting), Extras, PNG Info, History and Settings tabs,
and the checkpoint / VAE bar on top, laid out as A1111's so its users find everything where they expect.

Every generation goes through :class:`~latentstudio.ui.backend.Backend` to the job service (the same jobs
the API makes); the controls are named after A1111's request fields so a refused value is reported next to
the control it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from latentstudio.jobs import JobStatus
from latentstudio.ui.backend import Backend, FieldError, Kind, OptionField
from latentstudio.ui.runner import ResultImage, image_file, results, watch

GetBackend = Callable[[], Backend]
RESIZE_MODES = ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]
MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]
HISTORY_PAGE = 12  # jobs per History page
CSS = """
.ls-progress {position: relative; height: 1.6em; border-radius: 4px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); overflow: hidden;}
.ls-progress-bar {position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft);}
.ls-progress-text {position: relative; padding: 0 0.5em; line-height: 1.6em;}
.ls-error {color: var(--error-text-color, #b91c1c);}
.ls-tokens {text-align: right; font-size: 0.85em; opacity: 0.8;}
.ls-tool {max-width: 3em; min-width: 3em !important;}
"""


def _error_md(error: FieldError | str) -> str:
    if isinstance(error, FieldError):
        return f"**{error.field}**: {error.message}"
    return error


def _error_update(text: str) -> Any:
    return gr.update(value=text, visible=bool(text))


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
        random_seed = gr.Button("🎲", elem_id=f"{p}_random_seed", elem_classes="ls-tool", scale=0)
        reuse_seed = gr.Button("♻", elem_id=f"{p}_reuse_seed", elem_classes="ls-tool", scale=0)
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


def _gen_tab(get: GetBackend, kind: Kind) -> tuple[GenTab, dict[str, Any]]:
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
            error = gr.Markdown("", elem_id=f"{p}_error", elem_classes="ls-error", visible=False)
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
    )

    def reuse(images: list[ResultImage], index: int) -> Any:
        return images[index].seed if images and 0 <= index < len(images) else gr.skip()

    reuse_seed.click(reuse, [tab.images, tab.selected], seed, queue=False, show_progress="hidden")
    return tab, extra


def progress_html_idle() -> str:
    return '<div class="ls-progress" data-status="idle"><span class="ls-progress-text">Idle</span></div>'


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
            init = gr.Image(type="pil", label="Image for img2img", elem_id="img2img_image", height=360)
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t_inpaint:
            editor = gr.ImageEditor(
                type="pil",
                label="Image for inpainting with mask",
                elem_id="img2img_inpaint_editor",
                image_mode="RGBA",
                layers=False,
                transforms=(),
                height=420,
                brush=gr.Brush(default_size=24, colors=["#ffffff"], color_mode="fixed"),
                eraser=gr.Eraser(),
            )
            mask_info = gr.Markdown("No image yet.", elem_id="img2img_mask_info")
            # Gradio hands an editor's uploaded pieces to the first event that reads them and then drops
            # them, sending later only what changed; so one tracker keeps the whole (image, mask) here and
            # Generate reads that, never the editor itself.
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


def track_editor(value: dict[str, Any] | None, state: Edited | None) -> tuple[Any, Any]:
    """The editor's whole (image, mask) after an event: pieces it did not resend are kept from ``state``
    (an event that brings nothing changes nothing).

    The mask is white wherever a layer is painted (any alpha); layers are scaled to the image if needed.
    """
    value = value or {}
    if value.get("background") is None and not any(layer is not None for layer in value.get("layers") or []):
        return gr.skip(), gr.skip()
    state = dict(state or {"init": None, "mask": None})
    if value.get("background") is not None:
        state["init"] = value["background"].convert("RGB")
        state["mask"] = None
    init = state["init"]
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    if init is None:
        return gr.skip(), gr.skip()
    if layers:
        mask = Image.new("L", init.size, 0)
        for layer in layers:
            alpha = layer.convert("RGBA").getchannel("A")
            if alpha.size != init.size:
                alpha = alpha.resize(init.size, Image.Resampling.NEAREST)
            mask.paste(255, (0, 0), alpha.point(lambda v: 255 if v > 0 else 0))
        state["mask"] = mask if mask.getbbox() is not None else None
    painted = state["mask"]
    if painted is None:
        return state, f"Image {init.width}×{init.height} · no mask yet: paint over what to repaint."
    covered = sum(painted.histogram()[1:]) / (init.width * init.height)
    return state, f"Image {init.width}×{init.height} · mask covers {covered:.1%}"


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


def _wire_generate(get: GetBackend, tab: GenTab, extra: dict[str, Any]) -> None:
    outputs = [tab.progress, tab.preview, tab.gallery, tab.info, tab.error, tab.job, tab.images, tab.selected]
    image_inputs = (
        [extra["mode"], extra["init"], extra["edited"], extra["upload_init"], extra["upload_mask"]]
        if extra
        else []
    )
    count = len(_inputs(tab))

    def run(*values: Any) -> Iterator[tuple[Any, ...]]:
        backend = get()
        init = mask = None
        if tab.kind == "img2img":
            mode, plain, edited, upload_init, upload_mask = values[count:]
            if mode == "img2img" and plain is None:  # the sub-tab event may lag: take the filled one
                mode = "inpaint" if edited and edited.get("init") is not None else "inpaint_upload"
            if mode == "img2img":
                init = plain
            elif mode == "inpaint":
                init, mask = (edited["init"], edited["mask"]) if edited else (None, None)
                if init is not None and mask is None:
                    yield _failed("**mask**: draw over the part to repaint (nothing is painted)")
                    return
            else:
                init, mask = upload_init, upload_mask
        try:
            record = backend.submit(tab.kind, _request_fields(tab, values[:count]), init, mask)
        except FieldError as e:
            yield _failed(_error_md(e))
            return
        skip = gr.skip()
        for view in watch(backend.jobs, record.id):
            preview = gr.update(value=view.preview, visible=True) if view.preview is not None else skip
            if not view.status.terminal:
                yield (view.progress_html, preview, skip, skip, _error_update(""), record.id, skip, skip)
                continue
            images = list(view.results)
            gallery = [(r.path, f"Seed {r.seed}") for r in images]
            info = images[0].infotext if images else ""
            yield (
                view.progress_html,
                gr.update(visible=False),
                gallery,
                info,
                _error_update(view.message),
                None,
                images,
                0,
            )

    def _failed(message: str) -> tuple[Any, ...]:
        skip = gr.skip()
        return (progress_html_idle(), skip, skip, skip, _error_update(message), None, skip, skip)

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


def _wire_networks(tab: GenTab) -> None:
    def add(prompt: str, sample: list[str], template: str) -> str:
        token = template.format(sample[0])
        return f"{prompt}, {token}" if prompt.strip() else token

    tab.loras.click(lambda p, s: add(p, s, "<lora:{}:1>"), [tab.prompt, tab.loras], tab.prompt, queue=False)
    tab.embeddings.click(lambda p, s: add(p, s, "{}"), [tab.prompt, tab.embeddings], tab.prompt, queue=False)


def _extras_tab() -> dict[str, Any]:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Source", elem_id="extras_image")
            with gr.Tabs():
                with gr.Tab("Scale by", id="by") as by:
                    factor = gr.Slider(
                        1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize"
                    )
                with gr.Tab("Scale to", id="to") as to:
                    with gr.Row():
                        width = gr.Slider(
                            64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w"
                        )
                        height = gr.Slider(
                            64, 8192, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h"
                        )
                    crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            mode = gr.State(0)
            by.select(lambda: 0, None, mode, queue=False)
            to.select(lambda: 1, None, mode, queue=False)
            upscaler_1 = gr.Dropdown(["None"], value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
            upscaler_2 = gr.Dropdown(["None"], value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
            visibility = gr.Slider(
                0.0,
                1.0,
                value=0.0,
                step=0.01,
                label="Upscaler 2 visibility",
                elem_id="extras_upscaler_2_visibility",
            )
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            error = gr.Markdown("", elem_id="extras_error", elem_classes="ls-error", visible=False)
            output = gr.Image(
                type="pil", label="Result", elem_id="extras_result", format="png", interactive=False
            )
            info = gr.HTML("", elem_id="extras_info")
    return {
        "image": image,
        "mode": mode,
        "factor": factor,
        "width": width,
        "height": height,
        "crop": crop,
        "upscaler_1": upscaler_1,
        "upscaler_2": upscaler_2,
        "visibility": visibility,
        "run": run,
        "error": error,
        "output": output,
        "info": info,
    }


def _wire_extras(get: GetBackend, ex: dict[str, Any]) -> None:
    def run(image: Image.Image | None, *values: Any) -> tuple[Any, Any, Any]:
        if image is None:
            return gr.skip(), "", _error_update("**image**: drop an image to upscale")
        mode, factor, width, height, crop, up1, up2, visibility = values
        fields = {
            "resize_mode": int(mode),
            "upscaling_resize": float(factor),
            "upscaling_resize_w": int(width),
            "upscaling_resize_h": int(height),
            "upscaling_crop": bool(crop),
            "upscaler_1": up1,
            "upscaler_2": up2,
            "extras_upscaler_2_visibility": float(visibility),
        }
        try:
            result, text = get().extras(image, fields)
        except FieldError as e:
            return gr.skip(), "", _error_update(_error_md(e))
        return result, f"<p>{text}</p>", _error_update("")

    names = ["mode", "factor", "width", "height", "crop", "upscaler_1", "upscaler_2", "visibility"]
    ex["run"].click(run, [ex["image"], *(ex[n] for n in names)], [ex["output"], ex["info"], ex["error"]])


def _pnginfo_tab() -> dict[str, Any]:
    with gr.Row():
        with gr.Column():
            file = gr.File(label="Drop a PNG", file_types=["image"], type="filepath", elem_id="pnginfo_file")
            image = gr.Image(label="Image", interactive=False, elem_id="pnginfo_image", height=300)
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_parameters")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
            error = gr.Markdown("", elem_id="pnginfo_error", elem_classes="ls-error", visible=False)
    return {
        "file": file,
        "image": image,
        "text": text,
        "to_txt2img": to_txt2img,
        "to_img2img": to_img2img,
        "error": error,
    }


def _history_tab() -> dict[str, Any]:
    with gr.Row():
        previous = gr.Button("◀ Newer", size="sm", elem_id="history_newer")
        page = gr.Number(
            1, precision=0, minimum=1, label="Page", elem_id="history_page", scale=0, min_width=100
        )
        following = gr.Button("Older ▶", size="sm", elem_id="history_older")
        refresh = gr.Button("🔄 Refresh", size="sm", elem_id="history_refresh")
    summary = gr.Markdown("", elem_id="history_summary")
    gallery = gr.Gallery(label="History", columns=6, height=420, elem_id="history_gallery", format="png")
    with gr.Row():
        info = gr.Textbox(
            label="Generation info", lines=3, interactive=False, elem_id="history_info", scale=4
        )
        delete = gr.Button("🗑 Delete job", variant="stop", elem_id="history_delete", scale=1)
    error = gr.Markdown("", elem_id="history_error", elem_classes="ls-error", visible=False)
    return {
        "previous": previous,
        "page": page,
        "following": following,
        "refresh": refresh,
        "summary": summary,
        "gallery": gallery,
        "info": info,
        "delete": delete,
        "error": error,
        "entries": gr.State([]),
        "selected": gr.State(None),
    }


def _wire_history(get: GetBackend, h: dict[str, Any]) -> None:
    def load(page: float | None) -> tuple[Any, ...]:
        jobs = get().jobs
        total = jobs.count()
        pages = max(1, -(-total // HISTORY_PAGE))
        page_n = min(max(1, int(page or 1)), pages)
        entries: list[tuple[str, ResultImage]] = []
        for record in jobs.list(offset=(page_n - 1) * HISTORY_PAGE, limit=HISTORY_PAGE):
            if record.status is JobStatus.DONE:
                entries += [(record.id, r) for r in results(jobs, record)]
        gallery = [(r.path, f"{job_id[:8]} · seed {r.seed}") for job_id, r in entries]
        summary = f"Page {page_n} of {pages} · {total} jobs"
        return page_n, summary, gallery, entries, None, "", _error_update("")

    outputs = [h["page"], h["summary"], h["gallery"], h["entries"], h["selected"], h["info"], h["error"]]
    h["refresh"].click(load, h["page"], outputs, queue=False)
    h["page"].submit(load, h["page"], outputs, queue=False)
    h["previous"].click(lambda p: load((p or 1) - 1), h["page"], outputs, queue=False)
    h["following"].click(lambda p: load((p or 1) + 1), h["page"], outputs, queue=False)

    def select(entries: list[tuple[str, ResultImage]], evt: gr.SelectData) -> tuple[str, str | None]:
        index = int(evt.index) if isinstance(evt.index, int) else -1
        if not 0 <= index < len(entries):
            return "", None
        return entries[index][1].infotext, entries[index][0]

    h["gallery"].select(select, h["entries"], [h["info"], h["selected"]], queue=False)

    def delete(page: float | None, job_id: str | None) -> tuple[Any, ...]:
        if not job_id:
            return (*load(page)[:-1], _error_update("**job**: select an image of the job to delete"))
        try:
            get().delete_job(job_id)
        except FieldError as e:
            return (*load(page)[:-1], _error_update(_error_md(e)))
        return load(page)

    h["delete"].click(delete, [h["page"], h["selected"]], outputs, queue=False)
    h["load"] = load


def _settings_tab(
    options: Sequence[OptionField],
) -> tuple[dict[str, gr.components.Component], gr.Button, gr.Markdown]:
    controls: dict[str, gr.components.Component] = {}
    for option in options:
        label = f"{option.key} (default {option.default!r})"
        elem = f"setting_{option.key}"
        control: gr.components.Component
        if isinstance(option.default, bool):
            control = gr.Checkbox(bool(option.value), label=label, elem_id=elem)
        elif option.choices:
            control = gr.Dropdown(list(option.choices), value=option.value, label=label, elem_id=elem)
        elif isinstance(option.default, int | float):
            precision = 0 if isinstance(option.default, int) else None
            # no minimum/maximum here: the server's check names the setting and the range instead
            info = (
                f"{option.low:g} to {option.high:g}"
                if option.low is not None and option.high is not None
                else None
            )
            control = gr.Number(option.value, label=label, info=info, precision=precision, elem_id=elem)
        else:
            control = gr.Textbox(str(option.value), label=label, elem_id=elem)
        controls[option.key] = control
    apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    status = gr.Markdown("", elem_id="settings_status")
    return controls, apply, status


def build_ui(get: GetBackend, options: Sequence[OptionField]) -> gr.Blocks:  # noqa: PLR0915
    """The whole UI. ``get`` returns the backend (built when the server starts); ``options`` lays out the
    Settings tab (their current values load with the page)."""
    demo = gr.Blocks(title="latentstudio", analytics_enabled=False)
    with demo:
        with gr.Row(equal_height=True):
            checkpoint = gr.Dropdown(
                [], label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=4
            )
            vae = gr.Dropdown(
                ["Automatic", "None"], value="Automatic", label="SD VAE", elem_id="setting_sd_vae", scale=2
            )
            refresh = gr.Button("🔄", elem_id="refresh_models", elem_classes="ls-tool", scale=0)
            models_error = gr.Markdown("", elem_id="models_error", elem_classes="ls-error", visible=False)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i, _ = _gen_tab(get, "txt2img")
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i, i2i_extra = _gen_tab(get, "img2img")
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                ex = _extras_tab()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = _pnginfo_tab()
            with gr.Tab("History", id="history", elem_id="tab_history") as history_tab:
                hist = _history_tab()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                setting_controls, apply, apply_status = _settings_tab(options)

        _wire_generate(get, t2i, {})
        _wire_generate(get, i2i, i2i_extra)
        _wire_networks(t2i)
        _wire_networks(i2i)
        _wire_extras(get, ex)
        _wire_history(get, hist)
        history_tab.select(
            hist["load"],
            hist["page"],
            [
                hist["page"],
                hist["summary"],
                hist["gallery"],
                hist["entries"],
                hist["selected"],
                hist["info"],
                hist["error"],
            ],
            queue=False,
        )

        # -- catalog: dropdown choices on page load and refresh --------------------------------------------
        catalog_outputs = [
            checkpoint,
            vae,
            t2i.fields["sampler_name"],
            t2i.fields["scheduler"],
            i2i.fields["sampler_name"],
            i2i.fields["scheduler"],
            t2i.fields["hr_upscaler"],
            ex["upscaler_1"],
            ex["upscaler_2"],
            t2i.loras,
            t2i.embeddings,
            i2i.loras,
            i2i.embeddings,
            *setting_controls.values(),
        ]

        def load_catalog(rescan: bool = False) -> tuple[Any, ...]:
            backend = get()
            if rescan:
                backend.refresh()
            c = backend.catalog()
            samplers = gr.update(choices=list(c.samplers))
            schedulers = gr.update(choices=list(c.schedulers))
            loras = gr.Dataset(samples=[[name] for name in c.loras])
            embeddings = gr.Dataset(samples=[[name] for name in c.embeddings])
            values = {o.key: o.value for o in backend.options()}
            return (
                gr.update(choices=list(c.checkpoints), value=c.current_checkpoint),
                gr.update(choices=list(c.vaes), value=c.current_vae),
                samplers,
                schedulers,
                samplers,
                schedulers,
                gr.update(choices=[*c.latent_upscalers, *c.upscalers]),
                gr.update(choices=list(c.upscalers)),
                gr.update(choices=list(c.upscalers)),
                loras,
                embeddings,
                loras,
                embeddings,
                *(values.get(key) for key in setting_controls),
            )

        demo.load(load_catalog, None, catalog_outputs, queue=False)
        refresh.click(lambda: load_catalog(True), None, catalog_outputs, queue=False)

        def set_model(key: str, value: str | None) -> Any:
            if not value:
                return _error_update("")
            try:
                get().set_options({key: value})
            except FieldError as e:
                return _error_update(_error_md(e))
            return _error_update("")

        checkpoint.input(lambda v: set_model("sd_model_checkpoint", v), checkpoint, models_error, queue=False)
        vae.input(lambda v: set_model("sd_vae", v), vae, models_error, queue=False)

        def apply_settings(*values: Any) -> str:
            changes = dict(zip(setting_controls, values, strict=True))
            for option in options:
                if isinstance(option.default, int) and not isinstance(option.default, bool):
                    changes[option.key] = int(changes[option.key])
            try:
                get().set_options(changes)
            except FieldError as e:
                return f'<span class="ls-error">{_error_md(e)}</span>'
            return "Settings saved."

        apply.click(apply_settings, list(setting_controls.values()), apply_status, queue=False)

        # -- PNG Info and "send to" ------------------------------------------------------------------------
        def read_png(path: str | None) -> tuple[Any, str, Any]:
            if not path:
                return None, "", _error_update("")
            try:
                image = image_file(path)
            except OSError as e:
                return None, "", _error_update(f"**image**: not an image ({e})")
            text = get().read_infotext(image)
            return image, text, _error_update("" if text else "This image carries no generation parameters.")

        png["file"].change(read_png, png["file"], [png["image"], png["text"], png["error"]], queue=False)

        paste_targets = [t2i.prompt, t2i.negative, *t2i.fields.values(), t2i.clip_skip, tabs, png["error"]]

        def paste(text: str) -> tuple[Any, ...]:
            skip = gr.skip()
            if not text.strip():
                return (*(skip for _ in paste_targets[:-1]), _error_update("**parameters**: nothing to send"))
            try:
                request = get().paste(text)
            except FieldError as e:
                return (*(skip for _ in paste_targets[:-1]), _error_update(_error_md(e)))
            values: list[Any] = [request["prompt"], request["negative_prompt"]]
            for name in t2i.fields:
                value = request.get(name)
                if name == "sampler_name":
                    value = value or skip
                elif name == "scheduler":
                    value = value or "Automatic"
                values.append(skip if value is None else value)
            clip = (request.get("override_settings") or {}).get("CLIP_stop_at_last_layers", 1)
            return (*values, clip, gr.Tabs(selected="txt2img"), _error_update(""))

        png["to_txt2img"].click(paste, png["text"], paste_targets, queue=False)

        def send(images: list[ResultImage], index: int, target: str) -> tuple[Any, ...]:
            if not images:
                return tuple(gr.skip() for _ in range(7))
            image = image_file(images[min(index, len(images) - 1)].path)
            tab_id = "extras" if target == "extras" else "img2img"
            plain = image if target == "img2img" else gr.skip()
            inpaint = target == "inpaint"
            editor = {"background": image, "layers": [], "composite": None} if inpaint else gr.skip()
            edited = {"init": image.convert("RGB"), "mask": None} if inpaint else gr.skip()
            info = f"Image {image.width}×{image.height} · no mask yet: paint over what to repaint."
            extras_image = image if target == "extras" else gr.skip()
            mode_tab = gr.Tabs(selected=target) if target in ("img2img", "inpaint") else gr.skip()
            return (
                plain, editor, edited, info if inpaint else gr.skip(), extras_image, gr.Tabs(selected=tab_id),
                mode_tab,
            )  # fmt: skip

        send_targets = [
            i2i_extra["init"], i2i_extra["editor"], i2i_extra["edited"], i2i_extra["mask_info"], ex["image"],
            tabs, i2i_extra["modes"],
        ]  # fmt: skip
        for tab in (t2i, i2i):
            for button, target in (
                (tab.to_img2img, "img2img"),
                (tab.to_inpaint, "inpaint"),
                (tab.to_extras, "extras"),
            ):
                button.click(
                    lambda imgs, i, t=target: send(imgs, i, t),
                    [tab.images, tab.selected],
                    send_targets,
                    queue=False,
                )
                if target != "extras":
                    button.click(lambda t=target: t, None, i2i_extra["mode"], queue=False)
            if tab is t2i:
                for button in (tab.to_img2img, tab.to_inpaint):
                    button.click(
                        lambda p, n: (p, n),
                        [t2i.prompt, t2i.negative],
                        [i2i.prompt, i2i.negative],
                        queue=False,
                    )

        def png_to_img2img(path: str | None) -> tuple[Any, ...]:
            if not path:
                return gr.skip(), gr.skip()
            return image_file(path), gr.Tabs(selected="img2img")

        png["to_img2img"].click(png_to_img2img, png["file"], [i2i_extra["init"], tabs], queue=False)
    return demo
