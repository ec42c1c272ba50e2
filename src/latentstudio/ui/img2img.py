"""The img2img tab's own inputs: the img2img / Inpaint / Inpaint upload sub-tabs with their images, the
inpainting editor and its mask tracking, and the resize, denoising and inpainting controls."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from latentstudio.ui.common import MASKED_CONTENT, RESIZE_MODES

Edited = dict[str, Image.Image | None]  # {"init": RGB image, "mask": L image or None}


def merge_editor(value: dict[str, Any] | None, state: Edited | None) -> Edited | None:
    """The editor's whole (image, mask): what ``value`` brings over ``state``, pieces it did not resend
    kept from ``state``. The mask is white wherever a layer is painted (any alpha), scaled to the image."""
    value = value or {}
    merged: Edited = dict(state or {"init": None, "mask": None})
    if value.get("background") is not None:
        merged = {"init": value["background"], "mask": None}  # transparency: flattened by the builder
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


def img2img_inputs() -> dict[str, Any]:
    """The img2img tab's inputs above the sampling controls; ``"fields"`` holds its request controls."""
    extra = _mode_tabs()
    resize_mode = gr.Radio(
        RESIZE_MODES, value=RESIZE_MODES[0], type="index", label="Resize mode", elem_id="img2img_resize_mode"
    )
    denoise = gr.Slider(
        0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
    )
    extra["fields"] = {"resize_mode": resize_mode, "denoising_strength": denoise, **_inpaint_controls()}
    return extra


def _mode_tabs() -> dict[str, Any]:
    """The img2img / Inpaint / Inpaint upload sub-tabs, and the mode state their selection sets."""
    mode = gr.State("img2img")
    with gr.Tabs(elem_id="img2img_mode_tabs") as modes:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t_img:
            # PNG, not Gradio's default lossy WebP: an image sent here by the server comes back exact
            init = gr.Image(
                type="pil", label="Image for img2img", elem_id="img2img_image", height=360, format="png"
            )
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t_inpaint:
            editor, mask_info, edited = _inpaint_editor()
        with (
            gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t_upload,
            gr.Row(),
        ):
            upload_init = gr.Image(type="pil", label="Image", elem_id="img2img_upload_image")
            upload_mask = gr.Image(type="pil", label="Mask", elem_id="img2img_upload_mask", image_mode="L")
    for tab, name in ((t_img, "img2img"), (t_inpaint, "inpaint"), (t_upload, "inpaint_upload")):
        tab.select(lambda n=name: n, None, mode, queue=False, show_progress="hidden")
    return {
        "mode": mode,
        "modes": modes,
        "init": init,
        "editor": editor,
        "edited": edited,
        "mask_info": mask_info,
        "upload_init": upload_init,
        "upload_mask": upload_mask,
    }


def _inpaint_editor() -> tuple[gr.ImageEditor, gr.Markdown, gr.State]:
    """The inpainting editor, the line under it, and the (image, mask) tracked from its events."""
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
    editor.change(track_editor, [editor, edited], [edited, mask_info], queue=False, show_progress="hidden")
    editor.clear(lambda: (None, "No image yet."), None, [edited, mask_info], queue=False)
    return editor, mask_info, edited


def _inpaint_controls() -> dict[str, gr.components.Component]:
    """The Inpainting accordion: mask blur, mask mode, masked content, inpaint area and its padding."""
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
        "mask_blur": mask_blur,
        "inpainting_mask_invert": invert,
        "inpainting_fill": fill,
        "inpaint_full_res": full_res,
        "inpaint_full_res_padding": padding,
    }
