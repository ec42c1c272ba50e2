"""What every part of the UI shares: the backend getter, the page's CSS, error and idle-progress markup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from latentstudio.core import FieldError
from latentstudio.ui.backend import Backend
from latentstudio.ui.icons import icon_css

GetBackend = Callable[[], Backend]
RESIZE_MODES = ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]
MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]
HISTORY_PAGE = 12  # jobs per History page
CSS = """
.ls-progress {position: relative; height: 1.6em; border-radius: 4px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); overflow: hidden;}
.ls-progress-bar {position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft);}
.ls-progress-text {position: relative; padding: 0 0.5em; line-height: 1.6em;}
.ls-error {color: var(--error-text-color, #b91c1c);}
.ls-tokens {text-align: right; font-size: 0.85em; opacity: 0.8;}
""" + icon_css()


def error_box(elem_id: str) -> gr.Markdown:
    """The hidden message box beside a control group that names a refused field when it shows."""
    return gr.Markdown("", elem_id=elem_id, elem_classes="ls-error", visible=False)


def error_md(error: FieldError) -> str:
    """A refused field as the message box's Markdown: the one place the UI shows a :class:`FieldError`."""
    return f"**{error.field}**: {error.message}"


def error_update(text: str) -> Any:
    return gr.update(value=text, visible=bool(text))


def progress_html_idle() -> str:
    return '<div class="ls-progress" data-status="idle"><span class="ls-progress-text">Idle</span></div>'
