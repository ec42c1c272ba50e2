"""The Gradio Blocks app: txt2img, img2img (with inpainting), Extras, PNG Info, History and Settings tabs,
and the checkpoint / VAE bar on top, laid out as A1111's so its users find everything where they expect.

Every generation goes through :class:`~latentstudio.ui.backend.Backend` to the job service (the same jobs
the API makes); the controls are named after A1111's request fields so a refused value is reported next to
the control it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gradio as gr

from latentstudio.ui.backend import OptionField, ScriptField
from latentstudio.ui.catalog import wire_catalog, wire_models, wire_settings
from latentstudio.ui.common import CSS, GetBackend
from latentstudio.ui.gen_events import wire_generate, wire_networks
from latentstudio.ui.inputs import GuardedBlocks
from latentstudio.ui.page import Page, models_bar, page_tabs
from latentstudio.ui.tabs import EXTRAS_FIELDS, wire_extras, wire_history
from latentstudio.ui.transfer import wire_transfers

__all__ = ["CSS", "GetBackend", "build_ui"]


def build_ui(
    get: GetBackend,
    options: Sequence[OptionField],
    *,
    max_image_pixels: int,
    scripts: Mapping[str, Sequence[ScriptField]] | None = None,
) -> gr.Blocks:
    """The whole UI. ``get`` returns the backend (built when the server starts); ``options`` lays out the
    Settings tab (their current values load with the page); ``max_image_pixels``: the largest image an
    image input takes; ``scripts``: what each tab's Script dropdown offers."""
    demo = GuardedBlocks(title="latentstudio", analytics_enabled=False, max_image_pixels=max_image_pixels)
    with demo:
        page = page_tabs(get, options, models_bar(), scripts or {})
        _name_controls(demo, page)
        _wire_tabs(get, page)
        wire_catalog(demo, get, page)
        wire_models(get, page)
        wire_settings(get, options, page)
        wire_transfers(get, page, max_image_pixels)
    return demo


def _name_controls(demo: GuardedBlocks, page: Page) -> None:
    """Refusals name the controls by their A1111 request fields and settings."""
    for tab in (page.t2i, page.i2i):
        demo.name_controls({"prompt": tab.prompt, "negative_prompt": tab.negative, **tab.fields})
        demo.name_controls({"clip_skip": tab.clip_skip})
        for unit in tab.control:
            demo.name_controls(unit.names())
    for key in ("init", "editor", "upload_init"):
        demo.name_controls({"init_images": page.i2i_extra[key]})
    demo.name_controls({"mask": page.i2i_extra["upload_mask"]})
    ex, hist = page.ex, page.hist
    demo.name_controls({name: ex[key] for key, (name, _) in EXTRAS_FIELDS.items() if key in ex})
    demo.name_controls({"image": ex["image"], "page": hist["page"], **page.settings})


def _wire_tabs(get: GetBackend, page: Page) -> None:
    """Each tab's own events: generation, extra networks, Extras, History (loaded when it is shown)."""
    wire_generate(get, page.t2i, {})
    wire_generate(get, page.i2i, page.i2i_extra)
    wire_networks(page.t2i)
    wire_networks(page.i2i)
    wire_extras(get, page.ex)
    hist = page.hist
    wire_history(get, hist)
    page.history_page.select(
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
