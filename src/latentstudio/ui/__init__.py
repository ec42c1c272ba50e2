"""The web UI: a Gradio Blocks app mounted at ``/`` on the server's FastAPI app, a client of the job layer.

``mount_ui(app, get_backend, options, images_root)`` is all the server calls; the HTTP Basic middleware of
the server covers the UI's pages, files and event streams like every other route. An event's file inputs
take only files uploaded through the page (:mod:`latentstudio.ui.uploads`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from latentstudio.ui.backend import Backend, Catalog, FieldError, OptionField

if TYPE_CHECKING:
    from fastapi import FastAPI

    from latentstudio.ui.app import GetBackend


def mount_ui(app: FastAPI, get: GetBackend, options: Sequence[OptionField], images_root: Path) -> None:
    """Mount the UI at ``/`` (after the API routes, which keep precedence). Nothing is fetched at run
    time: analytics off, system fonts instead of Google Fonts, no share link, no server-side rendering."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from latentstudio.ui.app import CSS, build_ui
    from latentstudio.ui.uploads import mark_mounted

    images_root.mkdir(parents=True, exist_ok=True)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    demo = build_ui(get, options)
    mark_mounted(demo)  # Gradio checks uploads only for a launched Blocks: this one is, by our server
    gr.mount_gradio_app(
        app, demo, path="/", allowed_paths=[str(images_root)], ssr_mode=False, theme=theme, css=CSS,
        footer_links=[], pwa=False, mcp_server=False, show_error=True,
    )  # fmt: skip


__all__ = ["Backend", "Catalog", "FieldError", "OptionField", "mount_ui"]
