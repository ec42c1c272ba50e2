"""The page's layout: the checkpoint / VAE bar on top and the txt2img, img2img, Extras, PNG Info, History
and Settings tabs, held in one :class:`Page` for the event wiring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from latentstudio.ui.backend import OptionField, ScriptField
from latentstudio.ui.common import GetBackend, error_box
from latentstudio.ui.generate import GenTab, gen_tab
from latentstudio.ui.icons import tool_button
from latentstudio.ui.tabs import extras_tab, history_tab, pnginfo_tab, settings_tab


@dataclass
class ModelsBar:
    """The checkpoint and VAE dropdowns, the refresh button and their error box."""

    checkpoint: gr.Dropdown
    vae: gr.Dropdown
    refresh: gr.Button
    error: gr.Markdown


@dataclass
class Page:
    """Every part of the page the events read or write."""

    bar: ModelsBar
    tabs: gr.Tabs
    t2i: GenTab
    i2i: GenTab
    i2i_extra: dict[str, Any]  # img2img's own inputs (see latentstudio.ui.img2img)
    ex: dict[str, Any]  # Extras
    png: dict[str, Any]  # PNG Info
    hist: dict[str, Any]  # History
    history_page: gr.Tab
    settings: dict[str, gr.components.Component]  # setting key → control
    apply: gr.Button
    apply_status: gr.Markdown


def models_bar() -> ModelsBar:
    """The row above the tabs: checkpoint, VAE, refresh."""
    with gr.Row(equal_height=True):
        checkpoint = gr.Dropdown(
            [], label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=4
        )
        vae = gr.Dropdown(
            ["Automatic", "None"], value="Automatic", label="SD VAE", elem_id="setting_sd_vae", scale=2
        )
        refresh = tool_button("Refresh", "refresh", "refresh_models")
        models_error = error_box("models_error")
    return ModelsBar(checkpoint, vae, refresh, models_error)


def page_tabs(
    get: GetBackend,
    options: Sequence[OptionField],
    bar: ModelsBar,
    scripts: Mapping[str, Sequence[ScriptField]],
) -> Page:
    """The tabs under ``bar``, in A1111's order; ``options`` lays out the Settings tab, ``scripts`` each
    generation tab's Script dropdown."""
    with gr.Tabs(elem_id="tabs") as tabs:
        with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
            t2i, _ = gen_tab(get, "txt2img", scripts.get("txt2img", ()))
        with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
            i2i, i2i_extra = gen_tab(get, "img2img", scripts.get("img2img", ()))
        with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
            ex = extras_tab()
        with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
            png = pnginfo_tab()
        with gr.Tab("History", id="history", elem_id="tab_history") as history_page:
            hist = history_tab()
        with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
            setting_controls, apply, apply_status = settings_tab(options)
    return Page(
        bar, tabs, t2i, i2i, i2i_extra, ex, png, hist, history_page, setting_controls, apply, apply_status
    )
