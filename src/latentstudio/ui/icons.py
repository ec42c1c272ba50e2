"""Button icons drawn as inline SVG in the page's CSS, so they render on any machine (no emoji font) and the
page fetches nothing for them (data URIs, not files).

An icon is a CSS mask painted in the button's text colour (``currentColor``), so it follows the theme and
the button's hover / disabled states. The button keeps a text label: beside the icon on normal buttons,
visually hidden on the compact tool buttons (its accessible name there, as the emoji were in A1111).
"""

from __future__ import annotations

from urllib.parse import quote

import gradio as gr

# 24×24 stroke drawings (2 px lines, round caps); black is only the mask's opacity, never a visible colour.
_ICONS = {
    # two arrows chasing each other round a circle
    "refresh": "<path d='M20 12a8 8 0 0 1-14.3 4.9'/><path d='M4 12a8 8 0 0 1 14.3-4.9'/>"
    "<path d='M19 3v5h-5'/><path d='M5 21v-5h5'/>",
    # a die showing five
    "dice": "<rect x='3.5' y='3.5' width='17' height='17' rx='3'/><g fill='black' stroke='none'>"
    "<circle cx='8.5' cy='8.5' r='1.6'/><circle cx='15.5' cy='8.5' r='1.6'/><circle cx='12' cy='12' r='1.6'/>"
    "<circle cx='8.5' cy='15.5' r='1.6'/><circle cx='15.5' cy='15.5' r='1.6'/></g>",
    # an arrow turning back to a dot: take the last seed again
    "reuse": "<path d='M4 12a8 8 0 1 0 2.4-5.7L4 8.6'/><path d='M4 3.5v5.1h5.1'/>"
    "<circle cx='12' cy='12' r='2.2' fill='black' stroke='none'/>",
    # a burst of eight rays: run the preprocessor (the extension's 💥)
    "run": "<path d='M12 3v4M12 17v4M3 12h4M17 12h4M5.6 5.6l2.8 2.8M15.6 15.6l2.8 2.8'/>"
    "<path d='M5.6 18.4l2.8-2.8M15.6 8.4l2.8-2.8'/>",
    # a bin with a lid
    "delete": "<path d='M4 7h16'/><path d='M9 7V4.5h6V7'/><path d='M6 7l1 13h10l1-13'/>"
    "<path d='M10 11v5.5M14 11v5.5'/>",
}


def _data_uri(body: str) -> str:
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' stroke='black' "
        f"stroke-width='2' stroke-linecap='round' stroke-linejoin='round'>{body}</svg>"
    )
    return "data:image/svg+xml," + quote(svg, safe=" '=/:;,.-")


def icon_css() -> str:
    """The icon rules: ``.ls-icon`` draws ``--ls-icon`` before the label; ``.ls-tool`` is a compact square
    button (beside its control, bottom-aligned as A1111's tool buttons) that shows only the icon."""
    rules = [
        ".ls-icon::before {content: ''; flex: none; display: inline-block; width: 1.15em; height: 1.15em;"
        " margin-right: 0.4em; background-color: currentColor;"
        " -webkit-mask: var(--ls-icon) center / contain no-repeat;"
        " mask: var(--ls-icon) center / contain no-repeat;}",
        "button.ls-tool {font-size: 0 !important; width: 40px; min-width: 40px !important; max-width: 40px;"
        " height: 40px; flex: 0 0 40px !important; padding: 0 !important; align-self: flex-end;"
        " margin-bottom: calc(var(--spacing-xl) + var(--block-border-width));}",  # level with the input
        "button.ls-tool::before {width: 20px; height: 20px; margin: 0;}",
    ]
    rules += [f'.ls-icon-{name} {{--ls-icon: url("{_data_uri(body)}");}}' for name, body in _ICONS.items()]
    return "\n".join(rules) + "\n"


def icon_classes(icon: str, *, tool: bool = False) -> list[str]:
    """The ``elem_classes`` that give a button ``icon`` (one of the names above), compact with ``tool``."""
    if icon not in _ICONS:
        raise ValueError(f"icon: unknown {icon!r}; known: {', '.join(_ICONS)}")
    return [*(["ls-tool"] if tool else []), "ls-icon", f"ls-icon-{icon}"]


def tool_button(label: str, icon: str, elem_id: str) -> gr.Button:
    """A compact icon button; ``label`` is its accessible name (read out, not shown)."""
    return gr.Button(
        label, elem_id=elem_id, elem_classes=icon_classes(icon, tool=True), scale=0, min_width=40
    )
