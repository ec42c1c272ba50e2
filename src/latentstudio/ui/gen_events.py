"""The events of a generation tab: a Generate click queues a job and follows it to its results, Interrupt
and Skip control it, a gallery click shows an image's info, an extra network's click adds it to the prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import gradio as gr
from anyio import to_thread
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.jobs import JobStatus
from latentstudio.ui.common import GetBackend, error_md, error_update, progress_html_idle
from latentstudio.ui.control import unit_input
from latentstudio.ui.generate import GenTab
from latentstudio.ui.img2img import merge_editor
from latentstudio.ui.runner import JobView, ResultImage, watch
from latentstudio.ui.scripts import script_fields

# img2img's image inputs after the request controls, in the order Generate sends them
IMAGE_INPUTS = ("mode", "init", "editor", "edited", "upload_init", "upload_mask")
_INT_FIELDS = (
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
)


def _request_fields(tab: GenTab, values: Sequence[Any]) -> dict[str, Any]:
    """The A1111 request from the controls' values (in ``_inputs`` order)."""
    names = ["prompt", "negative_prompt", *tab.fields, "clip_skip"]
    raw = dict(zip(names, values, strict=True))
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k != "clip_skip"}
    for key in _INT_FIELDS:
        if fields.get(key) is not None:
            fields[key] = int(fields[key])
    if "inpaint_full_res" in fields:
        fields["inpaint_full_res"] = bool(fields["inpaint_full_res"])
    fields["override_settings"] = {"CLIP_stop_at_last_layers": int(raw["clip_skip"])}
    fields["save_images"] = False
    return fields


def _inputs(tab: GenTab) -> list[Any]:
    return [tab.prompt, tab.negative, *tab.fields.values(), tab.clip_skip]


def _images(values: Sequence[Any]) -> tuple[Image.Image | None, Image.Image | None]:
    """img2img's init image and mask from its image inputs' values (in ``IMAGE_INPUTS`` order); a
    :class:`FieldError` for an inpainting image with nothing painted."""
    mode, plain, editor_value, tracked, upload_init, upload_mask = values
    edited = merge_editor(editor_value, tracked)  # the click's own value, else what was tracked
    if mode == "img2img" and plain is None:  # the sub-tab event may lag: take the filled one
        mode = "inpaint" if edited and edited.get("init") is not None else "inpaint_upload"
    if mode == "img2img":
        return plain, None
    if mode == "inpaint":
        init, mask = (edited["init"], edited["mask"]) if edited else (None, None)
        if init is not None and mask is None:
            raise FieldError("mask", "draw over the part to repaint (nothing is painted)")
        return init, mask
    return upload_init, upload_mask


def _failed(message: str) -> tuple[Any, ...]:
    skip = gr.skip()
    return (progress_html_idle(), skip, skip, skip, error_update(message), None, skip, skip)


def _view_outputs(view: JobView, job_id: str) -> tuple[Any, ...]:
    """What one snapshot of the job shows: progress and preview while it runs, then the results."""
    skip = gr.skip()
    if not view.status.terminal:
        preview = gr.update(value=view.preview, visible=True) if view.preview is not None else skip
        return (view.progress_html, preview, skip, skip, error_update(""), job_id, skip, skip)
    images = list(view.results)
    gallery = [(r.path, f"Seed {r.seed}" if r.seed >= 0 else "Detected map") for r in images]
    info = images[0].infotext if images else ""
    return (
        view.progress_html,
        gr.update(visible=False),
        gallery,
        info,
        error_update(view.message),
        None,
        images,
        0,
    )


def wire_generate(get: GetBackend, tab: GenTab, extra: dict[str, Any]) -> None:
    """Generate, Interrupt, Skip and the gallery's selection; ``extra``: img2img's inputs (else empty)."""
    outputs = [tab.progress, tab.preview, tab.gallery, tab.info, tab.error, tab.job, tab.images, tab.selected]
    image_inputs = [extra[key] for key in IMAGE_INPUTS] if extra else []
    count, images = len(_inputs(tab)), len(image_inputs)
    control_inputs = [unit.inputs() for unit in tab.control]
    script_inputs = tab.script.all_inputs()

    async def run(*values: Any) -> AsyncIterator[tuple[Any, ...]]:
        """Queue the job (in a pool thread), then follow its events (holding no thread)."""
        backend = get()
        try:
            init, mask = _images(values[count : count + images]) if images else (None, None)
            fields = _request_fields(tab, values[:count])
            fields |= script_fields(tab.script, values[len(values) - len(script_inputs) :])
            start, modules, controls = count + images, backend.control_modules(), []
            for unit, unit_inputs in zip(tab.control, control_inputs, strict=True):
                controls.append(unit_input(unit, values[start : start + len(unit_inputs)], modules))
                start += len(unit_inputs)
            record = await to_thread.run_sync(lambda: backend.submit(tab.kind, fields, init, mask, controls))
        except FieldError as e:
            yield _failed(error_md(e))
            return
        async for view in watch(backend.jobs, record.id):
            yield _view_outputs(view, record.id)

    every_control = [component for unit_inputs in control_inputs for component in unit_inputs]
    tab.generate.click(
        run, [*_inputs(tab), *image_inputs, *every_control, *script_inputs], outputs, concurrency_limit=None,
        show_progress="hidden",
    )  # fmt: skip
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
    """A click on a LoRA or an embedding adds its token to the prompt."""

    def add(prompt: str, sample: list[str], template: str) -> str:
        token = template.format(sample[0])
        return f"{prompt}, {token}" if prompt.strip() else token

    tab.loras.click(lambda p, s: add(p, s, "<lora:{}:1>"), [tab.prompt, tab.loras], tab.prompt, queue=False)
    tab.embeddings.click(lambda p, s: add(p, s, "{}"), [tab.prompt, tab.embeddings], tab.prompt, queue=False)
