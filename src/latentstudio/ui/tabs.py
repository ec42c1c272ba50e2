"""The Extras, PNG Info, History and Settings tabs."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
from anyio import to_thread
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.jobs import JobStatus
from latentstudio.ui.backend import OptionField
from latentstudio.ui.common import (
    HISTORY_PAGE,
    GetBackend,
    error_box,
    error_md,
    error_update,
)
from latentstudio.ui.icons import icon_classes
from latentstudio.ui.runner import ResultImage, results


def _same(value: Any) -> Any:
    return value


# The Extras controls (after the image) → their /sdapi/v1/extra-single-image field and its type
EXTRAS_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "mode": ("resize_mode", int),
    "factor": ("upscaling_resize", float),
    "width": ("upscaling_resize_w", int),
    "height": ("upscaling_resize_h", int),
    "crop": ("upscaling_crop", bool),
    "upscaler_1": ("upscaler_1", _same),
    "upscaler_2": ("upscaler_2", _same),
    "visibility": ("extras_upscaler_2_visibility", float),
    "gfpgan": ("gfpgan_visibility", float),
    "codeformer": ("codeformer_visibility", float),
    "codeformer_weight": ("codeformer_weight", float),
}


def extras_tab() -> dict[str, Any]:
    """The Extras tab: source image, scaling, upscalers and face restorers, then the result."""
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Source", elem_id="extras_image", format="png")
            scale = _extras_scale()
            upscalers = _extras_upscalers()
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            error = error_box("extras_error")
            output = gr.Image(
                type="pil", label="Result", elem_id="extras_result", format="png", interactive=False
            )
            info = gr.HTML("", elem_id="extras_info")
    return {
        "image": image,
        **scale,
        **upscalers,
        "run": run,
        "error": error,
        "output": output,
        "info": info,
    }


def _extras_scale() -> dict[str, Any]:
    """The Scale by / Scale to sub-tabs, and the resize mode their selection sets."""
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
    return {"mode": mode, "factor": factor, "width": width, "height": height, "crop": crop}


def _extras_upscalers() -> dict[str, Any]:
    """Upscaler 1 and 2 with the second's visibility, and the face restorers' sliders."""
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
    # shown by the catalog when the restorer's weights are in the models folder
    gfpgan = gr.Slider(
        0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility", visible=False,
        elem_id="extras_gfpgan_visibility",
    )  # fmt: skip
    codeformer = gr.Slider(
        0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility", visible=False,
        elem_id="extras_codeformer_visibility",
    )  # fmt: skip
    codeformer_weight = gr.Slider(
        0.0, 1.0, value=0.0, step=0.001, label="CodeFormer weight (0 = maximum effect)",
        visible=False, elem_id="extras_codeformer_weight",
    )  # fmt: skip
    return {
        "upscaler_1": upscaler_1,
        "upscaler_2": upscaler_2,
        "visibility": visibility,
        "gfpgan": gfpgan,
        "codeformer": codeformer,
        "codeformer_weight": codeformer_weight,
    }


def wire_extras(get: GetBackend, ex: dict[str, Any]) -> None:
    async def run(image: Image.Image | None, *values: Any) -> tuple[Any, Any, Any]:
        """Queue the extras job and read its result in pool threads; wait for it without one."""
        if image is None:
            return gr.skip(), "", error_update(error_md(FieldError("image", "drop an image to upscale")))
        fields = {name: cast(v) for (name, cast), v in zip(EXTRAS_FIELDS.values(), values, strict=True)}
        backend = get()
        try:
            record = await to_thread.run_sync(backend.submit_extras, image, fields)
            record = await backend.jobs.wait_async(record.id)
            result, text = await to_thread.run_sync(backend.extras_result, record)
        except FieldError as e:
            return gr.skip(), "", error_update(error_md(e))
        return result, f"<p>{html.escape(text)}</p>", error_update("")

    inputs = [ex["image"], *(ex[key] for key in EXTRAS_FIELDS)]
    ex["run"].click(run, inputs, [ex["output"], ex["info"], ex["error"]])


def pnginfo_tab() -> dict[str, Any]:
    with gr.Row():
        with gr.Column():
            file = gr.File(label="Drop a PNG", file_types=["image"], type="filepath", elem_id="pnginfo_file")
            image = gr.Image(label="Image", interactive=False, elem_id="pnginfo_image", height=300)
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_parameters")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
            error = error_box("pnginfo_error")
    return {
        "file": file,
        "image": image,
        "text": text,
        "to_txt2img": to_txt2img,
        "to_img2img": to_img2img,
        "error": error,
    }


def history_tab() -> dict[str, Any]:
    with gr.Row():
        previous = gr.Button("◀ Newer", size="sm", elem_id="history_newer")
        page = gr.Number(
            1, precision=0, minimum=1, label="Page", elem_id="history_page", scale=0, min_width=100
        )
        following = gr.Button("Older ▶", size="sm", elem_id="history_older")
        refresh = gr.Button(
            "Refresh", size="sm", elem_id="history_refresh", elem_classes=icon_classes("refresh")
        )
    summary = gr.Markdown("", elem_id="history_summary")
    gallery = gr.Gallery(label="History", columns=6, height=420, elem_id="history_gallery", format="png")
    with gr.Row():
        info = gr.Textbox(
            label="Generation info", lines=3, interactive=False, elem_id="history_info", scale=4
        )
        delete = gr.Button(
            "Delete job",
            variant="stop",
            elem_id="history_delete",
            elem_classes=icon_classes("delete"),
            scale=1,
        )
    error = error_box("history_error")
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


def wire_history(get: GetBackend, h: dict[str, Any]) -> None:
    def load(page: float | None) -> tuple[Any, ...]:
        jobs = get().jobs
        total = jobs.count()
        pages = max(1, -(-total // HISTORY_PAGE))
        page_n = min(max(1, int(page or 1)), pages)
        entries: list[tuple[str, ResultImage]] = []
        for record in jobs.list(offset=(page_n - 1) * HISTORY_PAGE, limit=HISTORY_PAGE):
            if record.status is JobStatus.DONE:
                entries += [(record.id, r) for r in results(jobs, record)]
        captions = [f"seed {r.seed}" if r.seed >= 0 else "extras" for _, r in entries]  # extras: no seed
        gallery = [(r.path, f"{job_id[:8]} · {c}") for (job_id, r), c in zip(entries, captions, strict=True)]
        summary = f"Page {page_n} of {pages} · {total} jobs"
        return page_n, summary, gallery, entries, None, "", error_update("")

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
            return (
                *load(page)[:-1],
                error_update(error_md(FieldError("job", "select an image of the job to delete"))),
            )
        try:
            get().delete_job(job_id)
        except FieldError as e:
            return (*load(page)[:-1], error_update(error_md(e)))
        return load(page)

    h["delete"].click(delete, [h["page"], h["selected"]], outputs, queue=False)
    h["load"] = load


def settings_tab(
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
