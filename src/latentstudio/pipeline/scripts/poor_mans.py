"""A1111's "Poor man's outpainting" (img2img): extend the picture by ``pixels`` on the chosen sides and
inpaint the new border tile by tile.

Arguments: ``[pixels, mask_blur, inpainting_fill, direction]`` — ``inpainting_fill`` an index (or name) of
fill / original / latent noise / latent nothing, ``direction`` a subset of left, right, up, down. The
canvas grows to the next multiple of 64 on each axis (the growth split between opposite sides in
proportion), the picture sits at (left, up) on black; the mask is white but for the old picture shrunk by
``2·mask_blur`` on the grown sides, the latent mask likewise by ``mask_blur // 2``. The canvas is cut into
the request's tile size overlapping by ``pixels`` (A1111's ``split_grid``); every tile that reaches the
new border is inpainted (mask blur ``2·mask_blur``, whole picture, one image) at seed, seed + 1, …, and the
tiles are blended back (``combine_grid``). The result carries the first tile's infotext.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from latentstudio.core import FieldError
from latentstudio.pipeline.params import Inpaint, Policy, ResolvedParams
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
)
from latentstudio.pipeline.scripts.sd_upscale import combine_tiles, split_tiles

__all__ = ["SIDES", "PoorMansOutpainting", "growth", "outpaint_canvas"]

FILLS = ("fill", "original", "latent noise", "latent nothing")
SIDES = ("left", "right", "up", "down")


def growth(size: tuple[int, int], pixels: int, direction: list[str]) -> tuple[int, int, int, int]:
    """``(left, right, up, down)`` growth of a picture of ``size`` by ``pixels`` on the ``direction`` sides,
    as both A1111 outpainting scripts compute it: each axis rounded up to a multiple of 64, the growth split
    between the two sides of an axis in proportion."""
    left, right, up, down = (pixels if side in direction else 0 for side in SIDES)
    width = math.ceil((size[0] + left + right) / 64) * 64
    height = math.ceil((size[1] + up + down) / 64) * 64
    if left > 0:
        left = left * (width - size[0]) // (left + right)
    if right > 0:
        right = width - size[0] - left
    if up > 0:
        up = up * (height - size[1]) // (up + down)
    if down > 0:
        down = height - size[1] - up
    return left, right, up, down


def outpaint_canvas(
    image: Image.Image, pixels: int, blur: int, direction: list[str]
) -> tuple[Image.Image, Image.Image, Image.Image, tuple[int, int, int, int]]:
    """``(canvas, mask, latent_mask, (left, right, up, down))`` of A1111's script for ``image``."""
    left, right, up, down = growth(image.size, pixels, direction)
    width = math.ceil((image.width + left + right) / 64) * 64  # a side not grown is still rounded up
    height = math.ceil((image.height + up + down) / 64) * 64
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (left, up))

    def keep(inset: int) -> Image.Image:
        mask = Image.new("L", (width, height), "white")
        ImageDraw.Draw(mask).rectangle((
            left + (inset if left > 0 else 0), up + (inset if up > 0 else 0),
            width - right - (inset if right > 0 else 0), height - down - (inset if down > 0 else 0),
        ), fill="black")  # fmt: skip
        return mask

    return canvas, keep(blur * 2), keep(blur // 2), (left, right, up, down)


class PoorMansOutpainting(Script):
    title = "Poor man's outpainting"
    txt2img = False
    args = (
        ScriptArg("Pixels to expand", 128, 8, 256, 8),
        ScriptArg("Mask blur", 4, 0, 64, 1),
        ScriptArg("Masked content", 0, choices=FILLS),
        ScriptArg("Outpainting direction", list(SIDES), choices=SIDES),
    )

    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        pixels = check_number(values, 0, 1, 1024, integer=True)
        blur = check_number(values, 1, 0, 64, integer=True)
        fill = values[2]
        if isinstance(fill, str) and fill in FILLS:
            fill = FILLS.index(fill)
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill < len(FILLS):
            raise FieldError("script_args.2", f"an index 0-3 or one of {', '.join(FILLS)}, got {values[2]!r}")
        direction = values[3]
        if not isinstance(direction, list) or not set(direction) <= set(SIDES):
            raise FieldError("script_args.3", f"a list of {', '.join(SIDES)}, got {direction!r}")
        if pixels >= min(params.width, params.height):
            raise FieldError("script_args.0", f"{pixels} pixels must be below the tile size "
                             f"{params.width}x{params.height} (width, height)")  # fmt: skip
        assert params.init_image is not None
        canvas = outpaint_canvas(params.init_image, int(pixels), int(blur), direction)[0]
        tiles = split_tiles(canvas.width, canvas.height, params.width, params.height, int(pixels)).count
        check_plan(tiles, "script_args.0")
        if max(canvas.size) > policy.max_side * 4:
            raise FieldError(
                "script_args.0", f"the outpainted picture would be {canvas.width}x{canvas.height}"
            )
        return [pixels, blur, fill, list(direction)]

    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        pixels, blur, fill, direction = int(values[0]), int(values[1]), int(values[2]), list(values[3])
        assert params.init_image is not None
        canvas, mask, latent, (left, right, up, down) = outpaint_canvas(
            params.init_image, pixels, blur, direction
        )
        grid = split_tiles(canvas.width, canvas.height, params.width, params.height, pixels)
        boxes = [(x, y, x + grid.tile_w, y + grid.tile_h) for y, xs in grid.rows for x in xs]
        inside = [x >= left and x + grid.tile_w <= canvas.width - right and y >= up
                  and y + grid.tile_h <= canvas.height - down for x, y, _, _ in boxes]  # fmt: skip
        work = [i for i, kept in enumerate(inside) if not kept]
        tiles = [canvas.crop(box) for box in boxes]
        results: list[GenerationResult] = []
        for k, i in enumerate(work):
            if ctx.stopped():
                break
            inpaint = Inpaint(mask.crop(boxes[i]), blur=blur * 2, fill=fill, only_masked=False,
                              latent_mask=latent.crop(boxes[i]))  # fmt: skip
            one = single(params, init_image=tiles[i], inpaint=inpaint, seed=params.seed + k, batch_size=1,
                         n_iter=1)  # fmt: skip
            result = ctx.generate(one, k, len(work), JOB_MODEL)
            results.append(result)
            tiles[i] = result.images[0] if result.images else Image.new("RGB", (grid.tile_w, grid.tile_h))
        for i in work[len(results) :]:  # interrupted: A1111 fills the missing tiles black
            tiles[i] = Image.new("RGB", (grid.tile_w, grid.tile_h))
        text = results[0].infotexts[0] if results and results[0].infotexts else ""
        image = combine_tiles(grid, tiles)
        return combined_result(params, results, images=[image], infotexts=[text], seeds=[params.seed],
                               subseeds=[params.subseed])  # fmt: skip
