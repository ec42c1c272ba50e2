"""Every UI event's inputs checked at the edge, before Gradio or a handler sees them: one mechanism for all.

:class:`GuardedBlocks` is the page's ``gr.Blocks``; its ``preprocess_data`` (where the inputs of every
route's events go: ``/gradio_api/run/<name>``, ``/gradio_api/queue/join``) refuses, as a ``gr.Error``
naming the control (its A1111 field name where it has one, see :meth:`GuardedBlocks.name_controls`):

* a wrong number of inputs (Gradio's own message prints the components' Python reprs);
* a file reference that is not an upload of this page (:func:`~latentstudio.ui.uploads.check_payload`);
* a number that is not finite or outside its control's range (``NaN`` reached ``int()`` in the handlers,
  ``1e999`` Gradio's rounding), or that is not a number at all; a choice that is not one of its control's
  (Gradio's refusal prints the value's Python type), a checkbox that is not true or false, a text that
  is not text;
* an image file given to an image input that is not PNG / JPEG / WebP / BMP / GIF or has more pixels than
  the server decodes, from its header (Gradio would decode it first, and Pillow's bomb errors came back
  with their class names).

Whatever Gradio's own preprocessing still refuses (a file that fails to decode past its header, a value
of the wrong type for another control) comes back as a one-line refusal naming the control, never
Gradio's message with the original exception's class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gradio as gr
from gradio.block_function import BlockFunction
from gradio.exceptions import ComponentProcessingError
from PIL import Image, UnidentifiedImageError

from latentstudio.ui.uploads import (
    CORRUPT,
    NOT_AN_IMAGE,
    TOO_LARGE,
    InputError,
    UploadError,
    check_image,
    check_payload,
    file_references,
    uploaded_file,
)

NUMERIC = (gr.Number, gr.Slider)
CHOICES = (gr.Dropdown, gr.Radio)
IMAGES = (gr.Image, gr.ImageEditor)
SHOWN_CHOICES = 12  # a refusal lists at most this many of a control's choices


def _bounds(block: gr.Number | gr.Slider) -> str:
    low, high = block.minimum, block.maximum
    if low is not None and high is not None:
        return f"a number from {low:g} to {high:g}"
    if low is not None:
        return f"a number of at least {low:g}"
    if high is not None:
        return f"a number of at most {high:g}"
    return "a finite number"


def number_problem(block: gr.Number | gr.Slider, value: object) -> str | None:
    """Why ``value`` is refused for ``block`` (a Number may be empty, a Slider not), or None."""
    if value is None and isinstance(block, gr.Number):
        return None
    low, high = block.minimum, block.maximum
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        return f"must be {_bounds(block)}"
    return None


def choice_problem(block: gr.Dropdown | gr.Radio, value: object) -> str | None:
    """Why ``value`` is not one of ``block``'s choices (None: no choice made), or None. Gradio's own
    refusal prints the value's Python type and logs a traceback."""
    if value is None or (isinstance(block, gr.Dropdown) and block.allow_custom_value):
        return None
    allowed = [choice for _, choice in block.choices]
    multiple = isinstance(block, gr.Dropdown) and block.multiselect
    picked = value if multiple and isinstance(value, list) else [value]
    if all(isinstance(v, str | int | float) and v in allowed for v in picked):
        return None
    if not allowed:
        return "no choice is available yet (reload the page)"
    shown = ", ".join(str(choice) for choice in allowed[:SHOWN_CHOICES])
    return f"must be one of {shown}{', …' if len(allowed) > SHOWN_CHOICES else ''}"


def value_problem(block: object, value: object) -> str | None:
    """Why ``value`` is refused for the control ``block`` (one this page's controls would never send),
    or None; images are checked apart (their files)."""
    if isinstance(block, NUMERIC):
        return number_problem(block, value)
    if isinstance(block, CHOICES):
        return choice_problem(block, value)
    if isinstance(block, gr.Checkbox) and not isinstance(value, bool):
        return "must be true or false"
    if isinstance(block, gr.Textbox) and not (value is None or isinstance(value, str)):
        return "must be text"
    return None


class GuardedBlocks(gr.Blocks):
    """``gr.Blocks`` whose events check their inputs (see the module's docstring) before Gradio moves,
    hashes, downloads or decodes anything. ``max_image_pixels``: the largest image an input takes."""

    def __init__(self, *, max_image_pixels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_image_pixels = max_image_pixels
        self.control_names: dict[int, str] = {}

    def name_controls(self, controls: Mapping[str, gr.components.Component]) -> None:
        """Name these controls by their A1111 request field (or setting) in refusals."""
        self.control_names.update({component._id: name for name, component in controls.items()})

    def control_name(self, block: Any) -> str:
        """``steps (Sampling steps)``: the field name and the label, or whichever of them there is."""
        label = getattr(block, "label", None)
        label = label if isinstance(label, str) and label else None
        name = self.control_names.get(block._id)
        if name and label and label != name:
            return f"{name} ({label})"
        return name or label or "input"

    async def preprocess_data(
        self, block_fn: BlockFunction, inputs: list[Any], state: Any, explicit_call: bool = False
    ) -> Any:
        if not explicit_call:  # an explicit call is Python code calling the Blocks, not a client
            self.check_inputs(block_fn, inputs, state)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except ComponentProcessingError as e:  # the message is _format_processing_error's, below
            raise InputError(str(e)) from None

    def check_inputs(self, block_fn: BlockFunction, inputs: list[Any], state: Any) -> None:
        """Raise :class:`InputError` for the first input this page's controls would never send."""
        if not isinstance(inputs, list) or len(inputs) != len(block_fn.inputs):
            got = len(inputs) if isinstance(inputs, list) else "no list"
            raise InputError(f"wrong number of inputs: this event takes {len(block_fn.inputs)}, got {got}")
        check_payload(inputs)
        for component, value in zip(block_fn.inputs, inputs, strict=True):
            block = component
            if state is not None and not component.stateful and component._id in state:
                block = state[component._id]  # this session's copy of the control (props may be updated)
            problem = value_problem(block, value)
            if problem:
                raise InputError(f"{self.control_name(block)}: {problem}")
            if isinstance(block, IMAGES):
                for reference in file_references(value):
                    try:
                        check_image(uploaded_file(reference["path"]), self.max_image_pixels)
                    except UploadError as e:
                        raise UploadError(f"{self.control_name(block)}: {e.message}") from None

    def _format_processing_error(  # type: ignore[override]  # noqa: PLR0917 - Gradio's signature
        self,
        block_fn: BlockFunction,
        index: int,
        block: Any,
        value: Any,
        is_input: bool,
        original_error: Exception,
    ) -> str:
        """An input Gradio failed to preprocess, in one line naming the control (Gradio's own message
        names the original exception's class and prints the value)."""
        if not is_input:  # an output is the server's doing: Gradio's message, logged with its traceback
            return super()._format_processing_error(block_fn, index, block, value, is_input, original_error)
        if isinstance(block, IMAGES):
            if isinstance(original_error, UnidentifiedImageError):
                reason = NOT_AN_IMAGE
            elif isinstance(original_error, Image.DecompressionBombError):
                reason = TOO_LARGE
            else:
                reason = CORRUPT
            return f"{self.control_name(block)}: {reason}"
        return f"{self.control_name(block)}: not a value this control takes"
