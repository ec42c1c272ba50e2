"""The Script dropdown under each generation tab's controls (A1111's place for it) and each script's
arguments, laid out from the server's ``/sdapi/v1/script-info`` description of them.

An argument becomes: a dropdown when it has choices (several values when its default is a list), a
checkbox for a true/false default, a slider when it has bounds, a number or text box otherwise (the prompt
list of "Prompts from file or textbox" a large one). An argument without a label (SD upscale's help text)
is shown as text and sent as it is; a list without choices (X/Y/Z's dropdown values) is sent empty, the
values being typed in the text box beside it. Generate sends ``script_name`` and the chosen script's
``script_args`` in order, as an A1111 client does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from latentstudio.ui.backend import ScriptField

__all__ = ["NO_SCRIPT", "ScriptControls", "script_fields", "script_panel"]

NO_SCRIPT = "None"


@dataclass
class ScriptControls:
    """The Script dropdown and, per script title, its argument inputs (in ``script_args`` order)."""

    choice: gr.Dropdown
    scripts: list[ScriptField]
    inputs: dict[str, list[Any]] = field(default_factory=dict)
    whole: dict[str, list[bool]] = field(default_factory=dict)  # per input: a slider of whole steps

    def all_inputs(self) -> list[Any]:
        """The dropdown, then every script's inputs (what Generate reads, in this order)."""
        return [self.choice, *(i for title in self.inputs for i in self.inputs[title])]


def _input(arg: dict[str, Any], elem_id: str) -> Any:  # noqa: PLR0911 - one return per kind of control
    """The control (or hidden state) of one argument."""
    label, value, choices = arg.get("label") or "", arg.get("value"), arg.get("choices")
    low, high, step = arg.get("minimum"), arg.get("maximum"), arg.get("step")
    if not label:
        if isinstance(value, str) and value:
            gr.Markdown(value)
        return gr.State(value)
    if choices:
        multi = isinstance(value, list)
        chosen = choices[value] if isinstance(value, int) and not isinstance(value, bool) else value
        return gr.Dropdown(list(choices), value=chosen, label=label, multiselect=multi, elem_id=elem_id,
                           allow_custom_value=not multi)  # fmt: skip
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if isinstance(value, list):
        return gr.State([])
    if isinstance(value, int | float) and low is not None and high is not None:
        return gr.Slider(low, high, value=value, step=step or 1, label=label, elem_id=elem_id)
    if isinstance(value, int | float):
        return gr.Number(value=value, label=label, elem_id=elem_id)
    lines = 5 if "prompt" in label.lower() else 1
    return gr.Textbox(value=str(value or ""), label=label, lines=lines, elem_id=elem_id)


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")


def script_panel(p: str, scripts: Sequence[ScriptField]) -> ScriptControls:
    """The Script dropdown of the tab with elem_id prefix ``p`` and a hidden group per script, shown when
    it is chosen."""
    choice = gr.Dropdown([NO_SCRIPT, *(s.title for s in scripts)], value=NO_SCRIPT, label="Script",
                         elem_id=f"{p}_script_list")  # fmt: skip
    controls = ScriptControls(choice, list(scripts))
    groups = []
    for script in scripts:
        with gr.Group(visible=False) as group:
            slug = _slug(script.title)
            controls.inputs[script.title] = [
                _input(arg, f"{p}_script_{slug}_{i}") for i, arg in enumerate(script.args)
            ]
            controls.whole[script.title] = [float(arg.get("step") or 0.5).is_integer() for arg in script.args]
        groups.append(group)

    def show(title: str) -> list[Any]:
        return [gr.update(visible=s.title == title) for s in scripts]

    choice.change(show, choice, groups, queue=False, show_progress="hidden")
    return controls


def script_fields(controls: ScriptControls, values: Sequence[Any]) -> dict[str, Any]:
    """``script_name`` and ``script_args`` from the values of :meth:`ScriptControls.all_inputs` (nothing
    when no script is chosen)."""
    title, rest = values[0], list(values[1:])
    if not title or title == NO_SCRIPT:
        return {}
    start = 0
    for name, inputs in controls.inputs.items():
        if name == title:
            args = zip(rest[start : start + len(inputs)], controls.whole[name], strict=True)
            return {"script_name": title, "script_args": [_plain(v, whole) for v, whole in args]}
        start += len(inputs)
    return {"script_name": title}  # not one of ours: the server names the unknown script


def _plain(value: Any, whole: bool) -> Any:
    """A whole-step slider's float as an int (8.0 → 8), as A1111's sliders of whole steps send it."""
    if whole and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
