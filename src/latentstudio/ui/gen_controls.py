"""The controls txt2img and img2img share (token counters, sampling, seed, extra networks) and the
txt2img-only Hires. fix accordion, each named by its A1111 request field."""

from __future__ import annotations

from typing import Any

import gradio as gr

from latentstudio.ui.common import GetBackend
from latentstudio.ui.icons import tool_button


def token_counter(elem: str) -> gr.HTML:
    """The ``0/75`` counter under a prompt box."""
    return gr.HTML("0/75", elem_id=elem, elem_classes="ls-tokens", padding=False)


def wire_counter(get: GetBackend, prompt: gr.Textbox, steps: Any, counter: gr.HTML) -> None:
    """A1111's ``23/75`` counter, updated as the prompt or the step count changes."""

    def count(text: str, n: float) -> str:
        tokens, bound = get().token_count(text or "", int(n or 20))
        return f"{tokens}/{bound}"

    for trigger in (prompt.change, steps.change):
        trigger(
            count, [prompt, steps], counter, show_progress="hidden", queue=False, trigger_mode="always_last"
        )


def sampling_controls(p: str) -> dict[str, gr.components.Component]:
    """Sampler, schedule, steps, size, batch and CFG controls of the tab with elem_id prefix ``p``."""
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


def seed_controls(p: str, fields: dict[str, gr.components.Component]) -> tuple[gr.Button, gr.Number]:
    """The seed box (added to ``fields``) with its random and reuse buttons; returns reuse and the box."""
    with gr.Row():
        seed = gr.Number(-1, label="Seed", precision=0, elem_id=f"{p}_seed", scale=4)
        random_seed = tool_button("Random seed", "dice", f"{p}_random_seed")
        reuse_seed = tool_button("Reuse seed", "reuse", f"{p}_reuse_seed")
    random_seed.click(lambda: -1, None, seed, queue=False, show_progress="hidden")
    fields["seed"] = seed
    return reuse_seed, seed


def networks_panel(p: str) -> tuple[gr.Dataset, gr.Dataset]:
    """The Extra networks accordion: the LoRA and textual inversion lists."""
    with gr.Accordion("Extra networks", open=False, elem_id=f"{p}_networks"):
        loras = gr.Dataset(
            components=["text"], samples=[], label="LoRA (click to add to the prompt)", elem_id=f"{p}_loras"
        )
        embeddings = gr.Dataset(
            components=["text"], samples=[], label="Textual inversion", elem_id=f"{p}_embeddings"
        )
    return loras, embeddings


def hires_controls() -> dict[str, gr.components.Component]:
    """txt2img's Hires. fix accordion."""
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
