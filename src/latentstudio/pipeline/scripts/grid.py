"""A1111's grid pictures (``modules/images.py``): ``image_grid`` and ``draw_grid_annotations``.

The layout follows A1111: a font of ``(cell_w + cell_h) // 25`` points, lines spaced by half that, labels
wrapped word by word to the cell width (the row labels to ``¾`` of a cell width, left of the grid), a label
shrunk a point at a time until it fits, column labels centred above each column, row labels centred left
of each row, black text on white, cells ``margin`` pixels apart. The font is Pillow's bundled scalable
font (A1111 ships Roboto, which we do not), so label heights — and with them the top padding — can
differ from A1111's by a few pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw, ImageFont

__all__ = ["annotate", "image_grid"]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def image_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """``images`` pasted left to right, top to bottom on a black canvas of ``rows`` rows (at most as many
    rows as images); every cell the size of the first image."""
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        grid.paste(image, (i % cols * width, i // cols * height))
    return grid


@cache
def _font(size: int) -> Font:
    return ImageFont.load_default(max(size, 1))


@dataclass
class _Line:
    text: str
    width: int = 0
    height: int = 0


def _wrap(text: str, font: Font, limit: int, measure: ImageDraw.ImageDraw) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if measure.textlength(candidate, font=font) <= limit:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _lay_out(
    labels: Sequence[str], limit: int, font: Font, measure: ImageDraw.ImageDraw
) -> list[list[_Line]]:
    out = []
    for label in labels:
        lines = []
        for text in _wrap(label, font, limit, measure):
            box = measure.multiline_textbbox((0, 0), text, font=font)
            lines.append(_Line(text, int(box[2] - box[0]), int(box[3] - box[1])))
        out.append(lines)
    return out


def _draw(
    draw: ImageDraw.ImageDraw,
    at: tuple[float, float],
    lines: list[_Line],
    size: int,
    *,
    limit: int,
    spacing: int,
) -> None:
    x, y = at
    for line in lines:
        font, points = _font(size), size
        while draw.textlength(line.text, font=font) > limit and points > 1:  # shrink until it fits
            points -= 1
            font = _font(points)
        draw.multiline_text((x, y + line.height / 2), line.text, font=font, fill=(0, 0, 0), anchor="mm",
                            align="center")  # fmt: skip
        y += line.height + spacing


def annotate(
    grid: Image.Image,
    cell: tuple[int, int],
    columns: Sequence[str],
    rows: Sequence[str],
    margin: int = 0,
) -> Image.Image:
    """A1111 ``draw_grid_annotations``: ``grid`` (cells of ``cell`` = (width, height)) with ``columns``
    labels above it and ``rows`` labels left of it, cells ``margin`` pixels apart."""
    width, height = cell
    cols, nrows = grid.width // width, grid.height // height
    if (cols, nrows) != (len(columns), len(rows)):
        raise ValueError(f"{len(columns)} column and {len(rows)} row labels for a {cols}x{nrows} grid")
    size = (width + height) // 25
    spacing = size // 2
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), "white"))
    pad_left = 0 if sum(len(r) for r in rows) == 0 else width * 3 // 4
    top = _lay_out(columns, width, font, measure)
    left = _lay_out(rows, pad_left, font, measure)
    top_heights = [sum(line.height + spacing for line in lines) - spacing for lines in top]
    left_heights = [sum(line.height + spacing for line in lines) - spacing * len(lines) for lines in left]
    pad_top = 0 if sum(top_heights) == 0 else max(top_heights) + spacing * 2
    out = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1),
                            grid.height + pad_top + margin * (nrows - 1)), "white")  # fmt: skip
    for r in range(nrows):
        for c in range(cols):
            piece = grid.crop((width * c, height * r, width * (c + 1), height * (r + 1)))
            out.paste(piece, (pad_left + (width + margin) * c, pad_top + (height + margin) * r))
    draw = ImageDraw.Draw(out)
    for c, lines in enumerate(top):
        x = pad_left + (width + margin) * c + width / 2
        _draw(draw, (x, pad_top / 2 - top_heights[c] / 2), lines, size, limit=width, spacing=spacing)
    for r, lines in enumerate(left):
        y = pad_top + (height + margin) * r + height / 2 - left_heights[r] / 2
        _draw(draw, (pad_left / 2, y), lines, size, limit=pad_left, spacing=spacing)
    return out
