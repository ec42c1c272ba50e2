"""A1111's "SD upscale" (img2img): upscale the init image, cut it into overlapping tiles of the request's
size, redraw every tile with img2img and blend the tiles back together.

Arguments (``script_args``): ``[info, overlap, upscaler, scale_factor]`` — ``info`` is the UI's help text
(ignored), ``overlap`` pixels between tiles, ``upscaler`` an index into the upscaler list or a name (any
case), ``scale_factor`` the upscale factor. Tiles follow A1111's ``images.split_grid`` (columns
``ceil((W − overlap) / (tile_w − overlap))``, evenly spread, the last flush with the edge) and are blended
by ``images.combine_grid`` (a linear ramp over the overlap, left to right then top to bottom). Upscale
iteration ``n`` (``n_iter``) starts at ``seed + n``; each batch of ``batch_size`` tiles starts one seed
after the previous batch's first seed, as A1111's loop does. Every result carries the first tile's
infotext plus ``SD upscale overlap`` and ``SD upscale upscaler``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.pipeline.params import Policy, ResolvedParams
from latentstudio.pipeline.run import GenerationResult
from latentstudio.pipeline.scripts.base import (
    JOB_MODEL,
    Json,
    Script,
    ScriptArg,
    ScriptContext,
    ScriptEnv,
    check_number,
    check_plan,
    combined_result,
    single,
    with_script_keys,
)

__all__ = ["SdUpscale", "TileGrid", "combine_tiles", "split_tiles", "upscaled_size"]

HELP = "Will upscale the image by the selected scale factor; use width and height sliders to set tile size"


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles lie: ``rows[r] = (y, [x, …])`` (tiles are ``tile_w × tile_h``), on an image of
    ``width × height``, overlapping by ``overlap`` pixels."""

    rows: tuple[tuple[int, tuple[int, ...]], ...]
    tile_w: int
    tile_h: int
    width: int
    height: int
    overlap: int

    @property
    def count(self) -> int:
        return sum(len(xs) for _, xs in self.rows)


def _starts(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    step = (size - tile) / (count - 1) if count > 1 else 0
    return tuple(size - tile if int(i * step) + tile >= size else int(i * step) for i in range(count))


def split_tiles(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """A1111 ``split_grid``'s tile positions for an image of ``width × height``."""
    xs = _starts(width, tile_w, overlap)
    return TileGrid(tuple((y, xs) for y in _starts(height, tile_h, overlap)), tile_w, tile_h, width, height,
                    overlap)  # fmt: skip


def combine_tiles(grid: TileGrid, tiles: Sequence[Image.Image]) -> Image.Image:
    """A1111 ``combine_grid``: each tile after the first of its row enters over ``overlap`` columns with
    weight ``floor(255·i/overlap)/255`` at column ``i``, each row after the first likewise over ``overlap``
    rows; ``tiles`` in row-major order, RGB ``tile_w × tile_h``."""
    ramp = (np.arange(grid.overlap, dtype=np.float32) * 255 / max(grid.overlap, 1)).astype(np.uint8)
    mask_w = Image.fromarray(np.repeat(ramp[None, :], grid.tile_h, axis=0), "L")
    mask_h = Image.fromarray(np.repeat(ramp[:, None], grid.width, axis=1), "L")
    out = Image.new("RGB", (grid.width, grid.height))
    k = 0
    for y, xs in grid.rows:
        row = Image.new("RGB", (grid.width, grid.tile_h))
        for x in xs:
            tile = tiles[k]
            k += 1
            if x == 0:
                row.paste(tile, (0, 0))
                continue
            row.paste(tile.crop((0, 0, grid.overlap, grid.tile_h)), (x, 0), mask=mask_w)
            row.paste(tile.crop((grid.overlap, 0, grid.tile_w, grid.tile_h)), (x + grid.overlap, 0))
        if y == 0:
            out.paste(row, (0, 0))
            continue
        out.paste(row.crop((0, 0, grid.width, grid.overlap)), (0, y), mask=mask_h)
        out.paste(row.crop((0, grid.overlap, grid.width, grid.tile_h)), (0, y + grid.overlap))
    return out


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111 ``Upscaler.upscale``'s result size: each side ``int(side·scale // 8 · 8)``."""
    return int(width * scale // 8 * 8), int(height * scale // 8 * 8)


class SdUpscale(Script):
    title = "SD upscale"
    txt2img = False
    args = (
        ScriptArg("", HELP),
        ScriptArg("Tile overlap", 64, 0, 256, 16),
        ScriptArg("Upscaler", 0),  # choices: the server's upscalers (script-info fills them in)
        ScriptArg("Scale Factor", 2, 0, 4, 1),
    )

    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        overlap = check_number(values, 1, 0, 4096, integer=True)
        upscaler = _upscaler(values[2], env.upscalers)
        scale = check_number(values, 3, 0, 16)
        assert params.init_image is not None  # the script is img2img only
        tile_w, tile_h = params.width, params.height
        if overlap >= min(tile_w, tile_h):
            raise FieldError("script_args.1", f"the overlap {overlap} must be below the tile size "
                             f"{tile_w}x{tile_h} (width, height)")  # fmt: skip
        width, height = _result_size(params.init_image, upscaler, scale)
        if not (1 <= width <= policy.max_side * 4 and 1 <= height <= policy.max_side * 4):
            raise FieldError("script_args.3", f"the upscaled image would be {width}x{height}; each side "
                             f"must be within [1, {policy.max_side * 4}]")  # fmt: skip
        check_plan(
            split_tiles(width, height, tile_w, tile_h, int(overlap)).count * params.n_iter, "script_args.1"
        )
        return [values[0], overlap, upscaler, scale]  # the name: the list may change before the job runs

    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        overlap, upscaler, scale = int(values[1]), str(values[2]), float(values[3])
        assert params.init_image is not None
        image = params.init_image
        if upscaler != "None":
            image = ctx.upscale(image, upscaler, scale)
        grid = split_tiles(image.width, image.height, params.width, params.height, overlap)
        tiles = [image.crop((x, y, x + grid.tile_w, y + grid.tile_h)) for y, xs in grid.rows for x in xs]
        batch = params.batch_size
        batches = math.ceil(len(tiles) / batch)
        extra = {"SD upscale overlap": overlap, "SD upscale upscaler": upscaler}
        results: list[GenerationResult] = []
        outputs: list[Image.Image] = []
        for n in range(params.n_iter):
            redrawn: list[Image.Image] = []
            for b in range(batches):
                for j, tile in enumerate(tiles[b * batch : (b + 1) * batch]):
                    if ctx.stopped():
                        break
                    seed = params.seed + n + b  # A1111: each batch starts one after the last batch's seed
                    own = seed if params.subseed_strength > 0 else seed + j  # A1111's all_seeds rule
                    tile_params = single(params, init_image=tile, batch_size=1, n_iter=1, seed=own,
                                         subseed=params.subseed + j)  # fmt: skip
                    result = ctx.generate(tile_params, n * len(tiles) + b * batch + j,
                                          params.n_iter * len(tiles), JOB_MODEL)  # fmt: skip
                    results.append(result)
                    redrawn += result.images
            if len(redrawn) < len(tiles):  # interrupted: A1111 fills the missing tiles black
                redrawn += [Image.new("RGB", (grid.tile_w, grid.tile_h))] * (len(tiles) - len(redrawn))
            outputs.append(combine_tiles(grid, redrawn))
            if ctx.stopped():
                break
        first = results[0] if results else None
        text = with_script_keys(first.infotexts[0], extra) if first and first.infotexts else ""
        seeds_out = [params.seed + n for n in range(len(outputs))]
        combined = combined_result(params, results, images=outputs, infotexts=[text] * len(outputs),
                                   seeds=seeds_out, subseeds=[params.subseed] * len(outputs))  # fmt: skip
        combined.extra_generation_params.update(extra)
        return combined


def _upscaler(value: Json, upscalers: Sequence[str]) -> str:
    """A1111: an index into ``sd_upscalers``, or a name compared case-insensitively."""
    if isinstance(value, str):
        for name in upscalers:
            if name.lower() == value.lower():
                return name
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(upscalers):
        return upscalers[value]
    raise FieldError("script_args.2", f"unknown upscaler {value!r}; allowed: an index below "
                     f"{len(upscalers)} or one of {', '.join(upscalers)}")  # fmt: skip


def _result_size(image: Image.Image, upscaler: str, scale: float) -> tuple[int, int]:
    return image.size if upscaler == "None" else upscaled_size(image.width, image.height, scale)
