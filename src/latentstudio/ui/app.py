"""The Gradio Blocks app: txt2img, img2img (with inpainting), Extras, PNG Info, History and Settings tabs,
and the checkpoint / VAE bar on top, laid out as A1111's so its users find everything where they expect.

Every generation goes through :class:`~latentstudio.ui.backend.Backend` to the job service (the same jobs
the API makes); the controls are named after A1111's request fields so a refused value is reported next to
the control it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
from anyio import to_thread

from latentstudio.core import FieldError
from latentstudio.jobs import JobNotFoundError
from latentstudio.ui.backend import OptionField
from latentstudio.ui.common import (
    CSS,
    GetBackend,
    error_box,
    error_md,
    error_update,
)
from latentstudio.ui.generate import gen_tab, native_sizes, wire_generate, wire_networks
from latentstudio.ui.icons import tool_button
from latentstudio.ui.inputs import GuardedBlocks
from latentstudio.ui.runner import ResultImage, image_file
from latentstudio.ui.tabs import (
    EXTRAS_FIELDS,
    extras_tab,
    history_tab,
    pnginfo_tab,
    settings_tab,
    wire_extras,
    wire_history,
)
from latentstudio.ui.uploads import UploadError, uploaded_image

__all__ = ["CSS", "GetBackend", "build_ui"]


def build_ui(  # noqa: PLR0915
    get: GetBackend, options: Sequence[OptionField], *, max_image_pixels: int
) -> gr.Blocks:
    """The whole UI. ``get`` returns the backend (built when the server starts); ``options`` lays out the
    Settings tab (their current values load with the page); ``max_image_pixels``: the largest image an
    image input takes."""
    demo = GuardedBlocks(title="latentstudio", analytics_enabled=False, max_image_pixels=max_image_pixels)
    with demo:
        with gr.Row(equal_height=True):
            checkpoint = gr.Dropdown(
                [], label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=4
            )
            vae = gr.Dropdown(
                ["Automatic", "None"], value="Automatic", label="SD VAE", elem_id="setting_sd_vae", scale=2
            )
            refresh = tool_button("Refresh", "refresh", "refresh_models")
            models_error = error_box("models_error")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i, _ = gen_tab(get, "txt2img")
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i, i2i_extra = gen_tab(get, "img2img")
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                ex = extras_tab()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo_tab()
            with gr.Tab("History", id="history", elem_id="tab_history") as history_page:
                hist = history_tab()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                setting_controls, apply, apply_status = settings_tab(options)

        # refusals name the controls by their A1111 request fields and settings
        for tab in (t2i, i2i):
            demo.name_controls({"prompt": tab.prompt, "negative_prompt": tab.negative, **tab.fields})
            demo.name_controls({"clip_skip": tab.clip_skip})
        for key in ("init", "editor", "upload_init"):
            demo.name_controls({"init_images": i2i_extra[key]})
        demo.name_controls({"mask": i2i_extra["upload_mask"]})
        demo.name_controls({name: ex[key] for key, (name, _) in EXTRAS_FIELDS.items() if key in ex})
        demo.name_controls({"image": ex["image"], "page": hist["page"], **setting_controls})

        wire_generate(get, t2i, {})
        wire_generate(get, i2i, i2i_extra)
        wire_networks(t2i)
        wire_networks(i2i)
        wire_extras(get, ex)
        wire_history(get, hist)
        history_page.select(
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
            ex["gfpgan"],
            ex["codeformer"],
            ex["codeformer_weight"],
            t2i.loras,
            t2i.embeddings,
            i2i.loras,
            i2i.embeddings,
            *setting_controls.values(),
            *t2i.size,
            *i2i.size,
        ]
        size_set = [t2i.size_set, i2i.size_set]

        async def load_catalog(rescan: bool, *user_set: bool) -> tuple[Any, ...]:
            """The dropdowns' choices (after a rescan by the job worker when ``rescan``)."""
            backend = get()
            if rescan:
                await backend.refresh()
            c, options = await to_thread.run_sync(lambda: (backend.catalog(), backend.options()))
            samplers = gr.update(choices=list(c.samplers))
            schedulers = gr.update(choices=list(c.schedulers))
            loras = gr.Dataset(samples=[[name] for name in c.loras])
            embeddings = gr.Dataset(samples=[[name] for name in c.embeddings])
            values = {o.key: o.value for o in options}
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
                gr.update(visible="GFPGAN" in c.face_restorers),
                gr.update(visible="CodeFormer" in c.face_restorers),
                gr.update(visible="CodeFormer" in c.face_restorers),
                loras,
                embeddings,
                loras,
                embeddings,
                *(values.get(key) for key in setting_controls),
                *native_sizes(c.native_size, *user_set),
            )

        async def on_load(*user_set: bool) -> tuple[Any, ...]:
            return await load_catalog(False, *user_set)

        async def on_refresh(*user_set: bool) -> tuple[Any, ...]:
            return await load_catalog(True, *user_set)

        demo.load(on_load, size_set, catalog_outputs, queue=False)
        refresh.click(on_refresh, size_set, catalog_outputs, queue=False)

        def set_model(key: str, value: str | None) -> str:
            """Store the choice; the refusal's message, or '' when stored."""
            if not value:
                return ""
            try:
                get().set_options({key: value})
            except FieldError as e:
                return error_md(e)
            return ""

        def set_checkpoint(value: str | None, *user_set: bool) -> tuple[Any, ...]:
            message = set_model("sd_model_checkpoint", value)
            native = get().native_size(value) if value and not message else None
            return (error_update(message), *native_sizes(native, *user_set))

        checkpoint.input(
            set_checkpoint, [checkpoint, *size_set], [models_error, *t2i.size, *i2i.size], queue=False
        )
        vae.input(lambda v: error_update(set_model("sd_vae", v)), vae, models_error, queue=False)

        def apply_settings(*values: Any) -> str:
            changes = dict(zip(setting_controls, values, strict=True))
            try:
                for option in options:
                    if isinstance(option.default, int | float) and not isinstance(option.default, bool):
                        if changes[option.key] is None:  # an emptied number box
                            raise FieldError(option.key, "enter a number")
                        if isinstance(option.default, int):
                            changes[option.key] = int(changes[option.key])
                get().set_options(changes)
            except FieldError as e:
                return f'<span class="ls-error">{error_md(e)}</span>'
            return "Settings saved."

        apply.click(apply_settings, list(setting_controls.values()), apply_status, queue=False)

        # -- PNG Info and "send to" ------------------------------------------------------------------------
        def read_png(path: str | None) -> tuple[Any, str, Any]:
            if not path:
                return None, "", error_update("")
            try:
                image = uploaded_image(path, max_image_pixels)
            except UploadError as e:
                return None, "", error_update(error_md(FieldError("image", e.message)))
            text = get().read_infotext(image)
            return image, text, error_update("" if text else "This image carries no generation parameters.")

        png["file"].change(read_png, png["file"], [png["image"], png["text"], png["error"]], queue=False)

        paste_targets = [
            t2i.prompt, t2i.negative, *t2i.fields.values(), t2i.clip_skip, t2i.size_set, tabs, png["error"],
        ]  # fmt: skip

        def paste(text: str) -> tuple[Any, ...]:
            skip = gr.skip()
            if not text.strip():
                return (
                    *(skip for _ in paste_targets[:-1]),
                    error_update(error_md(FieldError("parameters", "nothing to send"))),
                )
            try:
                request = get().paste(text)
            except FieldError as e:
                return (*(skip for _ in paste_targets[:-1]), error_update(error_md(e)))
            values: list[Any] = [request["prompt"], request["negative_prompt"]]
            for name in t2i.fields:
                value = request.get(name)
                if name == "sampler_name":
                    value = value or skip
                elif name == "scheduler":
                    value = value or "Automatic"
                values.append(skip if value is None else value)
            clip = (request.get("override_settings") or {}).get("CLIP_stop_at_last_layers", 1)
            # the pasted Width and Height count as the user's: a checkpoint change keeps them
            return (*values, clip, True, gr.Tabs(selected="txt2img"), error_update(""))

        png["to_txt2img"].click(paste, png["text"], paste_targets, queue=False)

        def send(images: list[ResultImage], index: int, target: str) -> tuple[Any, ...]:
            try:  # by id from the image store (deleted meanwhile: nothing to send)
                image = image_file(get().jobs.image_path(images[min(index, len(images) - 1)].image_id))
            except (IndexError, JobNotFoundError):
                return tuple(gr.skip() for _ in range(7))
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
            try:
                image = uploaded_image(path, max_image_pixels)
            except UploadError:  # not an image: PNG Info's own event said so already
                return gr.skip(), gr.skip()
            return image, gr.Tabs(selected="img2img")

        png["to_img2img"].click(png_to_img2img, png["file"], [i2i_extra["init"], tabs], queue=False)
    return demo
