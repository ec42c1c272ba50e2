"""The txt2img and img2img tabs' layout: prompts with token counters, Generate / Interrupt / Skip, the
sampling, seed, hires or img2img controls, extra networks, ControlNet units, progress, previews and
results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import gradio as gr

from latentstudio.ui.backend import Kind, ScriptField
from latentstudio.ui.common import GetBackend, error_box, progress_html_idle
from latentstudio.ui.control import UnitControls, control_panel, wire_units
from latentstudio.ui.gen_controls import (
    hires_controls,
    networks_panel,
    sampling_controls,
    seed_controls,
    token_counter,
    wire_counter,
)
from latentstudio.ui.img2img import img2img_inputs
from latentstudio.ui.runner import ResultImage
from latentstudio.ui.scripts import ScriptControls, script_panel


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
    control: list[UnitControls]  # the ControlNet units
    script: ScriptControls  # the Script dropdown and its scripts' arguments

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


def gen_tab(
    get: GetBackend, kind: Kind, scripts: Sequence[ScriptField] = ()
) -> tuple[GenTab, dict[str, Any]]:
    """The shared layout of txt2img and img2img (``scripts``: what its Script dropdown offers); returns the
    tab and the kind-specific inputs."""
    p = kind
    with gr.Row():
        prompt, counter, negative, negative_counter = _prompt_column(p)
        generate, interrupt, skip, error = _action_column(p)
    with gr.Row():
        with gr.Column(scale=1):
            extra: dict[str, Any] = img2img_inputs() if kind == "img2img" else {}
            fields = sampling_controls(p)
            reuse_seed, seed = seed_controls(p, fields)
            clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id=f"{p}_clip_skip")
            fields.update(hires_controls() if kind == "txt2img" else extra.pop("fields"))
            loras, embeddings = networks_panel(p)
            control = control_panel(p, kind)
            script = script_panel(p, scripts)
        with gr.Column(scale=1):
            progress, preview, gallery, (to_img2img, to_inpaint, to_extras), info = _output_column(p)
    wire_counter(get, prompt, fields["steps"], counter)
    wire_counter(get, negative, fields["steps"], negative_counter)
    tab = GenTab(
        kind=kind,
        prompt=prompt,
        negative=negative,
        fields=fields,
        clip_skip=clip_skip,
        generate=generate,
        interrupt=interrupt,
        skip=skip,
        progress=progress,
        preview=preview,
        gallery=gallery,
        info=info,
        error=error,
        job=gr.State(None),
        images=gr.State([]),
        selected=gr.State(0),
        to_img2img=to_img2img,
        to_inpaint=to_inpaint,
        to_extras=to_extras,
        loras=loras,
        embeddings=embeddings,
        size_set=gr.State(False),
        control=control,
        script=script,
    )
    _wire_size_and_seed(tab, reuse_seed, seed)
    wire_units(get, control, tab.size, extra.get("init"))
    return tab, extra


def _prompt_column(p: str) -> tuple[gr.Textbox, gr.HTML, gr.Textbox, gr.HTML]:
    """The prompt and negative prompt boxes, each with its token counter."""
    with gr.Column(scale=4):
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{p}_prompt", placeholder="Prompt")
        counter = token_counter(f"{p}_token_counter")
        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{p}_neg_prompt")
        negative_counter = token_counter(f"{p}_negative_token_counter")
    return prompt, counter, negative, negative_counter


def _action_column(p: str) -> tuple[gr.Button, gr.Button, gr.Button, gr.Markdown]:
    """Generate, Interrupt and Skip, and the tab's error box."""
    with gr.Column(scale=1, min_width=180):
        generate = gr.Button("Generate", variant="primary", elem_id=f"{p}_generate")
        with gr.Row():
            interrupt = gr.Button("Interrupt", elem_id=f"{p}_interrupt", size="sm")
            skip = gr.Button("Skip", elem_id=f"{p}_skip", size="sm")
        error = error_box(f"{p}_error")
    return generate, interrupt, skip, error


def _output_column(
    p: str,
) -> tuple[gr.HTML, gr.Image, gr.Gallery, tuple[gr.Button, gr.Button, gr.Button], gr.Textbox]:
    """Progress, preview, the gallery, the three "Send to" buttons and the generation info."""
    progress = gr.HTML(progress_html_idle(), elem_id=f"{p}_progress", padding=False)
    preview = gr.Image(label="Preview", elem_id=f"{p}_preview", visible=False, format="jpeg", height=256)
    gallery = gr.Gallery(label="Output", elem_id=f"{p}_gallery", columns=2, height=420, format="png")
    with gr.Row():
        to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{p}_send_to_img2img")
        to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{p}_send_to_inpaint")
        to_extras = gr.Button("Send to extras", size="sm", elem_id=f"{p}_send_to_extras")
    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{p}_info")
    return progress, preview, gallery, (to_img2img, to_inpaint, to_extras), info


def _wire_size_and_seed(tab: GenTab, reuse_seed: gr.Button, seed: gr.Number) -> None:
    """Width / Height set by the user stop following the checkpoint; Reuse seed takes the selected one."""
    for slider in tab.size:  # .input fires for the user's changes only, never for the catalog's updates
        slider.input(lambda: True, None, tab.size_set, queue=False, show_progress="hidden")

    def reuse(images: list[ResultImage], index: int) -> Any:
        return images[index].seed if images and 0 <= index < len(images) else gr.skip()

    reuse_seed.click(reuse, [tab.images, tab.selected], seed, queue=False, show_progress="hidden")
