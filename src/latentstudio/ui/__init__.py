"""The web UI: a Gradio Blocks app mounted at ``/`` on the server's FastAPI app, a client of the job layer.

``mount_ui(app, get_backend, options, images_root, max_image_pixels=...)`` is all the server calls; the
HTTP Basic middleware of the server covers the UI's pages, files and event streams like every other route.
Every event's inputs are checked before Gradio or a handler sees them (:mod:`latentstudio.ui.inputs`; file
inputs take only files uploaded through the page, :mod:`latentstudio.ui.uploads`), and a request naming no
event is a 4xx (:mod:`latentstudio.ui.routes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from latentstudio.ui.backend import Backend, Catalog, OptionField, ScriptField

if TYPE_CHECKING:
    from fastapi import FastAPI

    from latentstudio.ui.app import GetBackend


def mount_ui(
    app: FastAPI,
    get: GetBackend,
    options: Sequence[OptionField],
    images_root: Path,
    *,
    max_image_pixels: int,
    scripts: Mapping[str, Sequence[ScriptField]] | None = None,
) -> None:
    """Mount the UI at ``/`` (after the API routes, which keep precedence). Nothing is fetched at run
    time: analytics off, system fonts instead of Google Fonts, no share link, no server-side rendering.
    ``max_image_pixels``: the largest image an image input takes (checked from the file's header);
    ``scripts``: each tab's Script dropdown (``txt2img`` / ``img2img``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    from fastapi.exceptions import RequestValidationError

    from latentstudio.ui.app import CSS, build_ui
    from latentstudio.ui.routes import EventRouteGuard, validation_error
    from latentstudio.ui.uploads import mark_mounted

    images_root.mkdir(parents=True, exist_ok=True)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    demo = build_ui(get, options, max_image_pixels=max_image_pixels, scripts=scripts or {})
    mark_mounted(demo)  # Gradio checks uploads only for a launched Blocks: this one is, by our server
    gr.mount_gradio_app(
        app, demo, path="/", allowed_paths=[str(images_root)], ssr_mode=False, theme=theme, css=CSS,
        footer_links=[], pwa=False, mcp_server=False, show_error=True,
        app_kwargs={"exception_handlers": {RequestValidationError: validation_error}},
    )  # fmt: skip
    # inside the server's auth and body-limit middleware, which the server adds after this
    app.add_middleware(EventRouteGuard, blocks=demo)


__all__ = ["Backend", "Catalog", "OptionField", "ScriptField", "mount_ui"]
