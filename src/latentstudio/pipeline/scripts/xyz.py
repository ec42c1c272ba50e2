"""A1111's "X/Y/Z plot": one generation per combination of up to three axes' values, drawn as labelled grids.

Arguments (A1111 v1.10, 18): ``[x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode]``; axis types as in
:mod:`~latentstudio.pipeline.scripts.xyz_axes`. Every value is checked when the job is made (a sampler,
checkpoint, VAE or size that would fail is a 422 naming the argument). Seeds: the request's seed is fixed
first, and -1 values on a Seed or Var. seed axis become random ones, unless "Keep -1 for seeds"; "vary
seeds" adds the cell's x (y·nx, z·nx·ny) index to its seed. Cells run with the costliest axis (Checkpoint,
then VAE) outermost, each with the request's batch; a cell's first image goes in the grid. Results: the
grid of the Z sub-grids (in one row, Z labels above), then the sub-grids with "Include Sub Grids", then
every cell's first image with "Include Sub Images"; the grids' infotexts are their first cell's plus
``Script``, ``X Type``, ``X Values`` (``Fixed X Values`` for seeds) and likewise Y (and Z on the main grid).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from PIL import Image

from latentstudio import infotext
from latentstudio.core import FieldError
from latentstudio.pipeline.params import Policy, ResolvedParams
from latentstudio.pipeline.run import GenerationResult
from latentstudio.pipeline.scripts import xyz_axes as xa
from latentstudio.pipeline.scripts.base import (
    Json,
    Script,
    ScriptArg,
    ScriptContext,
    ScriptEnv,
    combined_result,
    single,
)
from latentstudio.pipeline.scripts.grid import annotate, image_grid
from latentstudio.samplers.noise import resolve_seed

__all__ = ["XyzPlot"]

_AXIS_NAMES = ("X", "Y", "Z")
MAX_CELLS = 1000


def _axis(values: list[Json], index: int, img2img: bool) -> xa.Axis:
    axes = xa.tab_axes(img2img)
    chosen = values[index]
    if isinstance(chosen, str):
        for axis in axes:
            if axis.label.lower() == chosen.lower():
                return axis
    elif isinstance(chosen, int) and not isinstance(chosen, bool) and 0 <= chosen < len(axes):
        return axes[chosen]
    raise FieldError(f"script_args.{index}", f"unknown axis type {chosen!r}; an index below {len(axes)} or "
                     f"one of {', '.join(a.label for a in axes)}")  # fmt: skip


def _label(axis: xa.Axis, value: Any) -> str:
    """A1111's axis label of one value (floats rounded to 8 digits)."""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.fmt == "nothing":
        return ""
    if axis.fmt == "list":
        return ", ".join(value)
    if axis.fmt == "path":
        return str(value).replace("\\", "/").rsplit("/", 1)[-1]
    return str(value) if axis.fmt == "value" else f"{axis.label}: {value}"


def _confirm(axis: xa.Axis, values: list[Any], env: ScriptEnv, field: str) -> list[Any]:
    """A1111's ``confirm`` of an axis (names resolved to ours), and our refusals."""
    try:
        if axis.label in ("Sampler", "Hires sampler"):
            return [xa.confirm_sampler(v) for v in values]
        if axis.label == "Schedule type":
            return [xa.confirm_scheduler(v) for v in values]
    except ValueError as e:
        raise FieldError(field, str(e)) from None
    if axis.label == "Checkpoint name":
        return [env.checkpoint(v) for v in values]
    if axis.label == "VAE":
        known = {"auto": "Automatic", "automatic": "Automatic", "none": "None"}
        known.update({v.lower(): v for v in env.vaes})
        return [known.get(v.strip().lower(), "Automatic") for v in values]  # A1111: unknown → Automatic
    if axis.label == "RNG source" and not set(values) <= {"GPU", "CPU", "NV"}:
        raise FieldError(field, "RNG source values: GPU, CPU or NV")
    return values


class XyzPlot(Script):
    title = "X/Y/Z plot"
    args = (
        ScriptArg("X type", 1), ScriptArg("X values", ""), ScriptArg("X values", []),
        ScriptArg("Y type", 0), ScriptArg("Y values", ""), ScriptArg("Y values", []),
        ScriptArg("Z type", 0), ScriptArg("Z values", ""), ScriptArg("Z values", []),
        ScriptArg("Draw legend", True), ScriptArg("Include Sub Images", False),
        ScriptArg("Include Sub Grids", False), ScriptArg("Keep -1 for seeds", False),
        ScriptArg("Vary seeds for X", False), ScriptArg("Vary seeds for Y", False),
        ScriptArg("Vary seeds for Z", False), ScriptArg("Grid margins (px)", 0, 0, 500, 2),
        ScriptArg("Use text inputs instead of dropdowns", False),
    )  # fmt: skip

    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        for i in (*range(9, 16), 17):
            if not isinstance(values[i], bool):
                raise FieldError(f"script_args.{i}", f"must be true or false, got {values[i]!r}")
        margin = values[16]
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin <= 500:
            raise FieldError("script_args.16", f"must be a number of pixels in [0, 500], got {margin!r}")
        axes: list[list[Any]] = []
        for a in range(3):
            axis = _axis(values, 3 * a, params.is_img2img)
            field = f"script_args.{3 * a + 1}"
            if axis.apply is None:
                raise FieldError(
                    f"script_args.{3 * a}", f"the axis type {axis.label!r} is not supported here"
                )
            text, dropdown = values[3 * a + 1], values[3 * a + 2]
            texts = isinstance(dropdown, list) and all(isinstance(d, str) for d in dropdown)
            if not isinstance(text, str) or not texts:
                raise FieldError(field, "values: a text and a list of texts")
            try:
                parsed = xa.axis_values(axis, text, dropdown, values[17])
            except ValueError as e:
                raise FieldError(field, f"{axis.label}: {e}") from None
            if not parsed:
                raise FieldError(field, f"{axis.label}: no values")
            parsed = _confirm(axis, parsed, env, field)
            if axis.label in ("Seed", "Var. seed") and not values[12]:
                parsed = [resolve_seed(-1) if v == -1 else v for v in parsed]  # A1111 fix_axis_seeds
            axes.append([list(v) if isinstance(v, tuple) else v for v in parsed])
        count = len(axes[0]) * len(axes[1]) * len(axes[2])
        if count > MAX_CELLS:
            raise FieldError("script_args.1", f"{count} cells; at most {MAX_CELLS}")
        checked = [*values[:16], int(margin), values[17], {"axes": axes}]
        for cell in _cells(axes):  # every cell's parameters are valid before anything runs
            _cell_params(params, checked, cell, policy, 0)
        return checked

    def seeds(self, values: list[Json], params: ResolvedParams, random_seed: bool) -> tuple[int, ...]:
        """With "Keep -1 for seeds" and a random request seed, every cell draws its own (A1111's
        ``process_images`` of a -1 seed)."""
        if not (values[12] and random_seed):
            return ()
        axes = values[18]["axes"]
        return tuple(resolve_seed(-1) for _ in range(len(axes[0]) * len(axes[1]) * len(axes[2])))

    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        axes: list[list[Any]] = values[18]["axes"]
        kinds = [_axis(values, 3 * a, params.is_img2img) for a in range(3)]
        nx, ny, nz = (len(v) for v in axes)
        cells: dict[tuple[int, int, int], GenerationResult] = {}
        for k, cell in enumerate(_ordered(axes, kinds)):
            if ctx.stopped():
                break
            seed = seeds[_index(cell, nx, ny)] if seeds else None
            one, model = _cell_params(params, values, cell, None, seed)
            cells[cell] = ctx.generate(one, k, nx * ny * nz, model)
        return _assemble(params, values, axes, kinds, cells)


def _cells(axes: list[list[Any]]) -> list[tuple[int, int, int]]:
    """Every cell in grid order (x fastest, then y, then z)."""
    ranges = (range(len(axes[2])), range(len(axes[1])), range(len(axes[0])))
    return [(ix, iy, iz) for iz, iy, ix in itertools.product(*ranges)]


def _index(cell: tuple[int, int, int], nx: int, ny: int) -> int:
    return cell[0] + cell[1] * nx + cell[2] * nx * ny


def _ordered(axes: list[list[Any]], kinds: Sequence[xa.Axis]) -> list[tuple[int, int, int]]:
    """A1111's loop order: the costliest axis outermost (ties: z, then y, outermost)."""
    cost = [k.cost for k in kinds]
    first, second = 2, 1
    if cost[0] > cost[1] and cost[0] > cost[2]:
        first, second = 0, (1 if cost[1] > cost[2] else 2)
    elif cost[1] > cost[0] and cost[1] > cost[2]:
        first, second = 1, (0 if cost[0] > cost[2] else 2)
    elif cost[2] > cost[0] and cost[2] > cost[1]:
        first, second = 2, (0 if cost[0] > cost[1] else 1)
    third = 3 - first - second
    order = []
    for a in range(len(axes[first])):
        for b in range(len(axes[second])):
            for c in range(len(axes[third])):
                cell = [0, 0, 0]
                cell[first], cell[second], cell[third] = a, b, c
                order.append((cell[0], cell[1], cell[2]))
    return order


def _cell_params(
    params: ResolvedParams,
    values: list[Json],
    cell: tuple[int, int, int],
    policy: Policy | None,
    seed: int | None,
) -> tuple[ResolvedParams, tuple[str | None, str | None]]:
    """One cell's parameters and model: the axes' values applied in X, Y, Z order, then "vary seeds"."""
    axes: list[list[Any]] = values[18]["axes"]
    state = xa.Cell(params.prompt, params.negative_prompt)
    for a in range(3):
        axis = _axis(values, 3 * a, params.is_img2img)
        assert axis.apply is not None
        value = axes[a][cell[a]]
        axis.apply(state, tuple(value) if axis.kind == "perm" else value, axes[a])
    base_seed = state.changes.pop("seed", seed if seed is not None else params.seed)
    nx, ny = len(axes[0]), len(axes[1])
    xdim, ydim = (nx if values[13] else 1), (ny if values[14] else 1)
    base_seed += cell[0] * values[13] + cell[1] * xdim * values[14] + cell[2] * xdim * ydim * values[15]
    changes = {**state.changes, "seed": base_seed}
    changes.update(prompt=state.prompt, negative_prompt=state.negative_prompt)
    if params.hires is not None and state.hires:
        changes["hires"] = dataclasses.replace(params.hires, **state.hires)
    try:
        one = single(params, **changes) if policy is None else _checked(params, changes, policy)
    except FieldError as e:
        raise FieldError("script_args", f"cell {cell}: {e.field}: {e.message}") from None
    return one, (state.checkpoint, state.vae)


def _checked(params: ResolvedParams, changes: dict[str, Any], policy: Policy) -> ResolvedParams:
    return dataclasses.replace(params, script=None, **changes).resolved(policy)


def _assemble(
    params: ResolvedParams,
    values: list[Json],
    axes: list[list[Any]],
    kinds: Sequence[xa.Axis],
    cells: dict[tuple[int, int, int], GenerationResult],
) -> GenerationResult:
    """The grids and images A1111's ``draw_xyz_grid`` and ``run`` return (see the module docstring)."""
    nx, ny, nz = (len(v) for v in axes)
    results = list(cells.values())
    first = next((r.images[0] for r in results if r.images), None)
    size = first.size if first is not None else (params.width, params.height)
    images, texts, seeds = [], [], []
    for cell in _cells(axes):
        result = cells.get(cell)
        if result is not None and result.images:
            images.append(result.images[0])
            texts.append(result.infotexts[0])
            seeds.append(result.seeds[0])
        else:
            images.append(Image.new("RGB", size))
            texts.append("")
            seeds.append(-1)
    labels = [[_label(kinds[a], v) for v in axes[a]] for a in range(3)]
    subgrids = []
    for iz in range(nz):
        part = images[iz * nx * ny : (iz + 1) * nx * ny]
        grid = image_grid(part, rows=ny)
        if values[9]:
            grid = annotate(grid, part[0].size, labels[0], labels[1], int(values[16]))
        subgrids.append(grid)
    main = image_grid(subgrids, rows=1)
    if values[9]:
        main = annotate(main, subgrids[0].size, labels[2], [""])
    keys = [_axis_keys(values, kinds, a) for a in range(3)]
    script = {"Script": "X/Y/Z plot"}
    sub_texts = [_with_end_keys(texts[iz * nx * ny], {**script, **keys[0], **keys[1]}) for iz in range(nz)]
    main_text = _with_end_keys(texts[0], {**script, **keys[0], **keys[1], **keys[2]})
    out_images, out_texts, out_seeds = [main], [main_text], [seeds[0]]
    if values[11]:
        out_images += subgrids
        out_texts += sub_texts
        out_seeds += [seeds[iz * nx * ny] for iz in range(nz)]
    if values[10]:
        out_images += images
        out_texts += texts
        out_seeds += seeds
    return combined_result(params, results, images=out_images, infotexts=out_texts, seeds=out_seeds,
                           subseeds=[params.subseed] * len(out_images))  # fmt: skip


def _axis_keys(values: list[Json], kinds: Sequence[xa.Axis], a: int) -> dict[str, object]:
    axis = kinds[a]
    if axis.label == "Nothing":
        return {}
    name = _AXIS_NAMES[a]
    text = values[3 * a + 1]
    if axis.choices is not None and not values[17] and values[3 * a + 2]:
        text = xa.csv_line(values[3 * a + 2])  # A1111 list_to_csv_string of the dropdown
    keys: dict[str, object] = {f"{name} Type": axis.label, f"{name} Values": text}
    if axis.label in ("Seed", "Var. seed") and not values[12]:
        keys[f"Fixed {name} Values"] = ", ".join(str(v) for v in values[18]["axes"][a])
    return keys


def _with_end_keys(text: str, keys: dict[str, object]) -> str:
    """``text`` with ``keys`` added at the end of its parameter line (A1111 adds them to the cell's
    ``extra_generation_params`` after it ran), quoted as ``create_infotext`` does."""
    if not text:
        return text
    line = ", ".join(k if k == v else f"{k}: {infotext.quote(v)}" for k, v in keys.items())
    return f"{text}, {line}"
