"""PNG Info's events and the "Send to" buttons: reading an image's generation parameters, pasting them
into txt2img, and sending a result or a dropped image to img2img, inpaint or Extras."""

from __future__ import annotations

from typing import Any

import gradio as gr

from latentstudio.core import FieldError
from latentstudio.jobs import JobNotFoundError
from latentstudio.ui.common import GetBackend, error_md, error_update
from latentstudio.ui.control import pasted_values
from latentstudio.ui.page import Page
from latentstudio.ui.runner import ResultImage, image_file
from latentstudio.ui.uploads import UploadError, uploaded_image


def wire_transfers(get: GetBackend, page: Page, max_image_pixels: int) -> None:
    """PNG Info's reading and pasting, the result tabs' "Send to" buttons, PNG Info's Send to img2img."""
    _wire_read_png(get, page, max_image_pixels)
    _wire_paste(get, page)
    _wire_send(get, page)
    _wire_png_to_img2img(page, max_image_pixels)


def _wire_read_png(get: GetBackend, page: Page, max_image_pixels: int) -> None:
    png = page.png

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


def _wire_paste(get: GetBackend, page: Page) -> None:
    """Send to txt2img: the parameters read into txt2img's controls, and its tab shown."""
    t2i, png = page.t2i, page.png
    unit_targets = [component for unit in t2i.control for component in unit.fields.values()]
    paste_targets = [
        t2i.prompt, t2i.negative, *t2i.fields.values(), t2i.clip_skip, t2i.size_set, *unit_targets,
        page.tabs, png["error"],
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
        units, modules = request.get("controlnet_units") or {}, get().control_modules()
        unit_values = [v for unit in t2i.control for v in pasted_values(unit, units.get(unit.index), modules)]
        # the pasted Width and Height count as the user's: a checkpoint change keeps them
        return (*values, clip, True, *unit_values, gr.Tabs(selected="txt2img"), error_update(""))

    png["to_txt2img"].click(paste, png["text"], paste_targets, queue=False)


def _send(get: GetBackend, images: list[ResultImage], index: int, target: str) -> tuple[Any, ...]:
    """A result image sent to img2img, inpaint or Extras: the values of ``_wire_send``'s targets."""
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


def _wire_send(get: GetBackend, page: Page) -> None:
    """The txt2img and img2img results' Send to img2img / inpaint / extras buttons."""
    t2i, i2i, i2i_extra = page.t2i, page.i2i, page.i2i_extra
    send_targets = [
        i2i_extra["init"], i2i_extra["editor"], i2i_extra["edited"], i2i_extra["mask_info"], page.ex["image"],
        page.tabs, i2i_extra["modes"],
    ]  # fmt: skip
    for tab in (t2i, i2i):
        for button, target in (
            (tab.to_img2img, "img2img"),
            (tab.to_inpaint, "inpaint"),
            (tab.to_extras, "extras"),
        ):
            button.click(
                lambda imgs, i, t=target: _send(get, imgs, i, t),
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


def _wire_png_to_img2img(page: Page, max_image_pixels: int) -> None:
    """PNG Info's Send to img2img: the dropped image itself."""

    def png_to_img2img(path: str | None) -> tuple[Any, ...]:
        if not path:
            return gr.skip(), gr.skip()
        try:
            image = uploaded_image(path, max_image_pixels)
        except UploadError:  # not an image: PNG Info's own event said so already
            return gr.skip(), gr.skip()
        return image, gr.Tabs(selected="img2img")

    page.png["to_img2img"].click(
        png_to_img2img, page.png["file"], [page.i2i_extra["init"], page.tabs], queue=False
    )
