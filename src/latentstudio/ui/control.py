"""The ControlNet accordion of txt2img and img2img, laid out as sd-webui-controlnet's: one tab per unit with
its control image (in img2img the img2img image unless an independent one is uploaded) and the inpaint
preprocessors' mask beside it, the detected map's preview, enable / low VRAM / pixel perfect, the
preprocessor with its sliders, the model (the current checkpoint's family only), weight, guidance start
and end, control mode, resize mode and (txt2img) the hires-fix option. A unit's controls are named by the
extension's API fields, and what Generate sends is what ``alwayson_scripts.controlnet.args`` carries over
HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import gradio as gr
from anyio import to_thread
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.jobs import MAX_UNITS, ControlMode, ControlResize, HiresOption
from latentstudio.ui.backend import ControlInput, ControlModule, Kind, SliderSpec
from latentstudio.ui.common import GetBackend, error_box, error_md, error_update
from latentstudio.ui.icons import tool_button

SLIDERS = ("processor_res", "threshold_a", "threshold_b")
ARGS = "alwayson_scripts.controlnet.args"  # refusals name a unit's control as the API request would
_FIRST = ControlModule("none", SliderSpec("Resolution", 64, 2048, 512, 8))  # until the catalog comes


@dataclass
class UnitControls:
    """One unit's controls; ``fields``: the extension's API field → control, in the order sent."""

    index: int
    enabled: gr.Checkbox
    upload: gr.Checkbox | None  # img2img: "Upload independent control image"
    image: gr.Image
    preview: gr.Image
    run: gr.Button
    refresh: gr.Button
    error: gr.Markdown
    fields: dict[str, gr.components.Component]

    def inputs(self) -> list[Any]:
        """What Generate reads of this unit, in :func:`unit_input`'s order."""
        return [self.enabled, *([self.upload] if self.upload else []), self.image, *self.fields.values()]

    def names(self) -> dict[str, gr.components.Component]:
        """Each control by the request field it fills (``alwayson_scripts.controlnet.args.0.weight``)."""
        prefix = f"{ARGS}.{self.index}."
        return {prefix + name: control for name, control in {**self.fields, "image": self.image}.items()}

    @property
    def sliders(self) -> list[gr.Slider]:
        return [self.fields[name] for name in SLIDERS]  # type: ignore[misc]


def control_panel(p: str, kind: Kind) -> list[UnitControls]:
    """The ControlNet accordion of the tab with elem_id prefix ``p``: :data:`MAX_UNITS` unit tabs."""
    with gr.Accordion("ControlNet", open=False, elem_id=f"{p}_controlnet"), gr.Tabs():
        units = []
        for i in range(MAX_UNITS):
            with gr.Tab(f"ControlNet Unit {i}", elem_id=f"{p}_controlnet_unit{i}_tab"):
                units.append(_unit(f"{p}_controlnet_unit{i}", i, kind))
    return units


def _unit(e: str, index: int, kind: Kind) -> UnitControls:
    """One unit's tab; ``e``: its elem_id prefix."""
    upload = None
    if kind == "img2img":
        upload = gr.Checkbox(False, label="Upload independent control image", elem_id=f"{e}_upload")
    with gr.Row():
        image = gr.Image(
            type="pil", label="Control image", elem_id=f"{e}_image", format="png", height=240,
            visible=kind == "txt2img", image_mode="RGBA",
        )  # fmt: skip
        mask = gr.Image(
            type="pil", label="Inpaint mask (white: redraw)", elem_id=f"{e}_mask", format="png", height=240,
            visible=kind == "txt2img", image_mode="L",
        )  # fmt: skip
        preview = gr.Image(
            label="Preprocessor preview", elem_id=f"{e}_preview", interactive=False, format="png", height=240
        )
    if upload is not None:
        shown = [image, mask]
        upload.change(
            lambda on: [gr.update(visible=on)] * 2, upload, shown, queue=False, show_progress="hidden"
        )
    with gr.Row():
        enabled = gr.Checkbox(False, label="Enable", elem_id=f"{e}_enable")
        low_vram = gr.Checkbox(False, label="Low VRAM", elem_id=f"{e}_low_vram")
        pixel_perfect = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{e}_pixel_perfect")
    with gr.Row(equal_height=True):
        module = gr.Dropdown(["none"], value="none", label="Preprocessor", elem_id=f"{e}_module", scale=3)
        run = tool_button("Run preprocessor", "run", f"{e}_run")
        model = gr.Dropdown(["None"], value="None", label="Model", elem_id=f"{e}_model", scale=3)
        refresh = tool_button("Refresh models", "refresh", f"{e}_refresh")
    error = error_box(f"{e}_error")
    sliders = [_slider(getattr(_FIRST, name), f"{e}_{name}") for name in SLIDERS]
    with gr.Row():
        weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{e}_weight")
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{e}_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{e}_end")
    mode = gr.Radio([m.value for m in ControlMode], value=ControlMode.BALANCED.value, label="Control Mode",
                    elem_id=f"{e}_control_mode")  # fmt: skip
    resize = gr.Radio([r.value for r in ControlResize], value=ControlResize.CROP_AND_RESIZE.value,
                      label="Resize Mode", elem_id=f"{e}_resize_mode")  # fmt: skip
    fields: dict[str, gr.components.Component] = {
        "module": module, "model": model, "weight": weight, "guidance_start": start, "guidance_end": end,
        **dict(zip(SLIDERS, sliders, strict=True)), "control_mode": mode, "resize_mode": resize,
        "pixel_perfect": pixel_perfect, "low_vram": low_vram, "mask": mask,
    }  # fmt: skip
    if kind == "txt2img":
        fields["hr_option"] = gr.Dropdown([h.value for h in HiresOption], value=HiresOption.BOTH.value,
                                          label="Hires-Fix Option", elem_id=f"{e}_hr_option")  # fmt: skip
    return UnitControls(index, enabled, upload, image, preview, run, refresh, error, fields)


def _slider(spec: SliderSpec | None, elem_id: str) -> gr.Slider:
    if spec is None:
        return gr.Slider(0.0, 1.0, value=0.5, label="(unused)", elem_id=elem_id, visible=False)
    return gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step, label=spec.label,
                     elem_id=elem_id)  # fmt: skip


def slider_updates(module: ControlModule | None) -> tuple[Any, Any, Any]:
    """The three sliders as ``module`` shows them (each at its default), hidden where it has none."""
    out = []
    for name in SLIDERS:
        spec = getattr(module, name) if module is not None else None
        if spec is None:
            out.append(gr.update(visible=False))
        else:
            out.append(gr.update(visible=True, label=spec.label, minimum=spec.minimum, maximum=spec.maximum,
                                 step=spec.step, value=spec.default))  # fmt: skip
    return out[0], out[1], out[2]


def pasted_values(
    unit: UnitControls, pasted: Mapping[str, Any] | None, modules: Sequence[ControlModule]
) -> list[Any]:
    """The values of ``unit.fields`` after pasting an infotext's entry for this unit (None: none, nothing
    changes): its fields set, the sliders shaped for the pasted preprocessor."""
    if pasted is None:
        return [gr.skip() for _ in unit.fields]
    module = next((m for m in modules if m.name == pasted.get("module")), None)
    values: list[Any] = []
    for name in unit.fields:
        value = pasted.get(name)
        if name in SLIDERS and name in pasted:
            spec: SliderSpec | None = getattr(module, name) if module is not None else None
            shown = (
                isinstance(value, int | float) and spec is not None and spec.minimum <= value <= spec.maximum
            )
            update = slider_updates(module)[SLIDERS.index(name)]
            values.append(gr.update(**{**update, "value": value}) if shown else update)
        else:
            values.append(gr.skip() if value is None else value)
    return values


def unit_input(
    unit: UnitControls, values: Sequence[Any], modules: Sequence[ControlModule]
) -> ControlInput | None:
    """One unit from its controls' values (in :meth:`UnitControls.inputs` order): None when it is not
    enabled; a slider its module hides is sent as -1 (the extension's hidden value); ``mask`` (a picture,
    for the inpaint preprocessors) only with the unit's own image."""
    enabled, *rest = values
    upload = bool(rest.pop(0)) if unit.upload is not None else True
    image, *field_values = rest
    if not enabled:
        return None
    fields = dict(zip(unit.fields, field_values, strict=True))
    module = next((m for m in modules if m.name == fields["module"]), None)
    for name in SLIDERS:
        if module is None or getattr(module, name) is None or fields[name] is None:
            fields[name] = -1
    fields["processor_res"] = int(fields["processor_res"])
    if not upload or image is None:  # a mask goes with the unit's own image (img2img's: A1111's mask)
        fields["mask"] = None
    return fields, image if upload else None


def wire_units(get: GetBackend, units: Sequence[UnitControls], size: Sequence[Any], init: Any) -> None:
    """Each unit's preprocessor choice (its sliders), model refresh and preview; ``size``: the tab's Width
    and Height; ``init``: img2img's image (None in txt2img)."""

    def choose(name: str) -> tuple[Any, ...]:
        return slider_updates(next((m for m in get().control_modules() if m.name == name), None))

    async def refresh() -> Any:
        backend = get()
        return gr.update(choices=await to_thread.run_sync(backend.control_models, None))

    extra = [init] if init is not None else []
    for unit in units:
        module = cast(gr.Dropdown, unit.fields["module"])
        module.input(choose, module, unit.sliders, queue=False, show_progress="hidden")
        unit.refresh.click(refresh, None, unit.fields["model"], queue=False)
        unit.run.click(
            _preview_fn(get, unit, init is not None), [*unit.inputs(), *size, *extra],
            [unit.preview, unit.error], queue=False,
        )  # fmt: skip


def _preview_fn(get: GetBackend, unit: UnitControls, img2img: bool) -> Any:
    async def preview(*values: Any) -> tuple[Any, Any]:
        count = len(unit.inputs())
        backend = get()
        unit_values = [True, *values[1:count]]  # previewed whether enabled or not
        made = unit_input(unit, unit_values, backend.control_modules())
        assert made is not None
        fields, image = made
        width, height = (int(v) for v in values[count : count + 2])
        if image is None and img2img:
            image = values[count + 2]
        if not isinstance(image, Image.Image):
            return gr.skip(), error_update(error_md(FieldError("image", "upload a control image first")))
        try:
            detected = await to_thread.run_sync(backend.detect_control, fields, image, (height, width))
        except FieldError as e:
            return gr.skip(), error_update(error_md(e))
        return detected, error_update("")

    return preview
