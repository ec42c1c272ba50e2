"""The X/Y/Z plot's axis types (A1111 v1.10 ``scripts/xyz_grid.py`` ``axis_options``, in its order) and how
an axis's values are read and applied to one cell.

An axis type is chosen by its index in the tab's list (A1111's ``current_axis_options``: every option
but the other tab's own), as A1111's API takes it; its label works too. Values are a CSV line, each item
stripped; for whole-number axes ``a-b`` (step 1), ``a-b (+s)`` and ``a-b [n]`` (n evenly spaced, truncated),
for decimal axes the same with ``np.arange`` / ``np.linspace``; an axis with choices reads its dropdown
list unless ``csv_mode`` (or when that list is empty: the text then, where A1111 has no values). Axis
types that change what this server does not have (Image CFG Scale, Styles, UniPC Order, Face restore,
token merging, Skip Early CFG, Beta schedule, Always discard next-to-last sigma, Refiner, FP8 mode) are
refused with the axis named.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

import numpy as np

from latentstudio.core import FieldError
from latentstudio.pipeline.hires import LATENT_UPSCALE_MODES
from latentstudio.samplers import SAMPLER_INFO, SCHEDULER_INFO, resolve_sampler, resolve_scheduler
from latentstudio.samplers.noise import RngSource

__all__ = ["AXES", "Axis", "Cell", "axis_values", "csv_line", "tab_axes"]


@dataclass
class Cell:
    """What the axes set for one cell: ``changes`` to :class:`GenerationParams` fields, ``hires`` changes,
    the cell's checkpoint and VAE (None: the job's)."""

    prompt: str
    negative_prompt: str
    changes: dict[str, Any] = field(default_factory=dict)
    hires: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    vae: str | None = None


Apply = Callable[[Cell, Any, Sequence[Any]], None]


@dataclass(frozen=True)
class Axis:
    """One axis type: ``kind`` int, float, str or perm (permutations of the items); ``fmt`` how a value is
    labelled (``label``: "Label: value", ``value``, ``list``, ``nothing``); ``cost`` orders the loops (the
    costliest outermost); ``choices`` names the dropdown list (None: a text box)."""

    label: str
    kind: str
    apply: Apply | None  # None: refused here
    tab: str | None = None  # "txt2img" / "img2img": shown on that tab only
    fmt: str = "label"
    cost: float = 0.0
    choices: str | None = None


def _field(name: str) -> Apply:
    def apply(cell: Cell, value: Any, _: Sequence[Any]) -> None:
        cell.changes[name] = value

    return apply


def _hires(name: str) -> Apply:
    def apply(cell: Cell, value: Any, _: Sequence[Any]) -> None:
        cell.hires[name] = value

    return apply


def _prompt_sr(cell: Cell, value: str, values: Sequence[str]) -> None:
    """A1111 ``apply_prompt``: the first value, found in the prompt or negative prompt, replaced."""
    if values[0] not in cell.prompt and values[0] not in cell.negative_prompt:
        raise FieldError("script_args.1", f"Prompt S/R did not find {values[0]} in prompt or negative prompt")
    cell.prompt = cell.prompt.replace(values[0], value)
    cell.negative_prompt = cell.negative_prompt.replace(values[0], value)


def _prompt_order(cell: Cell, order: Sequence[str], _: Sequence[Any]) -> None:
    """A1111 ``apply_order``: the tokens, where the prompt has them, put back in ``order``."""
    prompt = cell.prompt
    found = sorted(((prompt.find(token), token) for token in order), key=lambda t: t[0])
    parts = []
    for _at, token in found:
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token) :]
    cell.prompt = "".join(part + order[i] for i, part in enumerate(parts)) + prompt


def _checkpoint(cell: Cell, value: str, _: Sequence[Any]) -> None:
    cell.checkpoint = value


def _vae(cell: Cell, value: str, _: Sequence[Any]) -> None:
    cell.vae = value


def _denoising(cell: Cell, value: float, _: Sequence[Any]) -> None:
    cell.changes["denoising_strength"] = value
    cell.hires["denoising_strength"] = value  # txt2img: the hires pass's strength (A1111's one field)


def _size(cell: Cell, value: str, _: Sequence[Any]) -> None:
    """A1111 ``apply_size``: ``W x H``; anything else leaves the size as it is."""
    width, _, height = value.partition("x")
    with contextlib.suppress(ValueError):
        cell.changes.update(width=int(width.strip()), height=int(height.strip()))


def _sgm(cell: Cell, value: str, _: Sequence[Any]) -> None:
    cell.changes["sgm_noise_multiplier"] = value.lower() == "true"


def _rng(cell: Cell, value: str, _: Sequence[Any]) -> None:
    cell.changes["rng"] = RngSource(value)


def _scheduler(cell: Cell, value: str, _: Sequence[Any]) -> None:
    cell.changes["scheduler"] = value


AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", lambda cell, value, values: None, fmt="nothing"),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _hires("steps"), tab="txt2img"),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    Axis("Image CFG Scale", "float", None, tab="img2img"),
    Axis("Prompt S/R", "str", _prompt_sr, fmt="value"),
    Axis("Prompt order", "perm", _prompt_order, fmt="list"),
    Axis("Sampler", "str", _field("sampler"), tab="txt2img", fmt="value", choices="samplers"),
    Axis("Hires sampler", "str", _hires("sampler"), tab="txt2img", choices="samplers"),
    Axis("Sampler", "str", _field("sampler"), tab="img2img", fmt="value", choices="samplers"),
    Axis("Checkpoint name", "str", _checkpoint, fmt="path", cost=1.0, choices="checkpoints"),
    Axis("Negative Guidance minimum sigma", "float", _field("s_min_uncond")),
    Axis("Sigma Churn", "float", _field("s_churn")),
    Axis("Sigma min", "float", _field("s_tmin")),
    Axis("Sigma max", "float", _field("s_tmax")),
    Axis("Sigma noise", "float", _field("s_noise")),
    Axis("Schedule type", "str", _scheduler, choices="schedulers"),
    Axis("Schedule min sigma", "float", _field("sigma_min")),
    Axis("Schedule max sigma", "float", _field("sigma_max")),
    Axis("Schedule rho", "float", _field("rho")),
    Axis("Skip Early CFG", "float", None),
    Axis("Beta schedule alpha", "float", None),
    Axis("Beta schedule beta", "float", None),
    Axis("Eta", "float", _field("eta")),
    Axis("Clip skip", "int", _field("clip_skip")),
    Axis("Denoising", "float", _denoising),
    Axis("Initial noise multiplier", "float", _field("initial_noise_multiplier")),
    Axis("Extra noise", "float", _field("extra_noise")),
    Axis("Hires upscaler", "str", _hires("upscaler"), tab="txt2img", choices="upscalers"),
    Axis("Cond. Image Mask Weight", "float", _field("inpainting_mask_weight"), tab="img2img"),
    Axis("VAE", "str", _vae, cost=0.7, choices="vaes"),
    Axis("Styles", "str", None, choices="styles"),
    Axis("UniPC Order", "int", None, cost=0.5),
    Axis("Face restore", "str", None, fmt="value"),
    Axis("Token merging ratio", "float", None),
    Axis("Token merging ratio high-res", "float", None),
    Axis("Always discard next-to-last sigma", "str", None, choices="bool"),
    Axis("SGM noise multiplier", "str", _sgm, choices="bool"),
    Axis("Refiner checkpoint", "str", None, fmt="path", cost=1.0, choices="checkpoints"),
    Axis("Refiner switch at", "float", None),
    Axis("RNG source", "str", _rng, choices="rng"),
    Axis("FP8 mode", "str", None, cost=0.9, choices="fp8"),
    Axis("Size", "str", _size),
)


def tab_axes(img2img: bool) -> list[Axis]:
    """A1111's ``current_axis_options`` of a tab (what an axis type index counts in)."""
    tab = "img2img" if img2img else "txt2img"
    return [a for a in AXES if a.tab is None or a.tab == tab]


_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_FLOAT = r"([+-]?\s*\d+(?:.\d*)?)"  # A1111's pattern: its "." matches any character
_FLOAT_RANGE = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_FLOAT_COUNT = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")
MAX_VALUES = 1000


def csv_items(text: str) -> list[str]:
    """A1111 ``csv_string_to_list_strip``: every CSV item of ``text``, stripped."""
    return [item.strip() for row in csv.reader(StringIO(text)) for item in row]


def csv_line(items: Sequence[str]) -> str:
    """A1111 ``list_to_csv_string``: ``items`` as one CSV row (quoted where CSV needs it)."""
    out = StringIO()
    csv.writer(out).writerow(items)
    return out.getvalue().strip()


def _num(text: str) -> str:
    return text.replace(" ", "")


def _room(out: list[Any], count: float) -> None:
    """Refuse before building more than :data:`MAX_VALUES` values (a range like 1-1000000000)."""
    if len(out) + count > MAX_VALUES:
        raise ValueError(f"more than {MAX_VALUES} values")


def _expand(items: list[str], kind: str) -> list[Any]:
    """A1111's ranges: whole-number ``a-b``, ``a-b (+s)``, ``a-b [n]``; decimal likewise."""
    out: list[Any] = []
    ranged, counted = (_INT_RANGE, _INT_COUNT) if kind == "int" else (_FLOAT_RANGE, _FLOAT_COUNT)
    for item in items:
        m, mc = ranged.fullmatch(item), counted.fullmatch(item)
        if kind == "int" and m is not None:
            step = int(_num(m.group(3))) if m.group(3) is not None else 1
            if step == 0:
                raise ValueError(f"{item}: a step of 0")
            values = range(int(_num(m.group(1))), int(_num(m.group(2))) + 1, step)
            _room(out, len(values))
            out += list(values)
        elif mc is not None:
            num = int(float(mc.group(3))) if mc.group(3) is not None else 1
            _room(out, num)
            if kind == "int":
                out += [
                    int(x) for x in np.linspace(int(_num(mc.group(1))), int(_num(mc.group(2))), num).tolist()
                ]
            else:
                out += np.linspace(float(_num(mc.group(1))), float(_num(mc.group(2))), num).tolist()
        elif m is not None:
            start, end = float(_num(m.group(1))), float(_num(m.group(2)))
            fstep = float(_num(m.group(3))) if m.group(3) is not None else 1.0
            if fstep == 0:
                raise ValueError(f"{item}: a step of 0")
            _room(out, max(0.0, (end + fstep - start) / fstep))
            out += np.arange(start, end + fstep, fstep).tolist()
        else:
            _room(out, 1)
            out.append(item)
    return out


def axis_values(axis: Axis, text: str, dropdown: Sequence[str], csv_mode: bool) -> list[Any]:
    """An axis's values as A1111's ``process_axis`` reads them (before they are confirmed); raises
    ValueError for an item that is not of the axis's kind."""
    if axis.label == "Nothing":
        return [0]
    # an empty dropdown list falls back to the text (A1111 would have no values: an error there)
    items = list(dropdown) if axis.choices is not None and not csv_mode and dropdown else csv_items(text)
    if axis.kind in ("int", "float"):
        typed = int if axis.kind == "int" else float
        return [typed(v) for v in _expand(items, axis.kind)]
    if axis.kind == "perm":
        if len(items) > 6:
            raise ValueError(f"{len(items)} items make too many orders (at most 6 items)")
        return list(itertools.permutations(items))
    return [str(v) for v in items]


def choices(
    name: str, upscalers: Sequence[str], checkpoints: Sequence[str], vaes: Sequence[str]
) -> list[str]:
    """The dropdown list ``name`` stands for (``/sdapi/v1/script-info`` has none; the UI fills them)."""
    lists: dict[str, list[str]] = {
        "samplers": list(SAMPLER_INFO), "schedulers": [s.label for s in SCHEDULER_INFO.values()],
        "upscalers": [*LATENT_UPSCALE_MODES, *upscalers], "checkpoints": list(checkpoints),
        "vaes": ["Automatic", "None", *vaes], "bool": ["False", "True"], "rng": ["GPU", "CPU", "NV"],
    }  # fmt: skip
    return lists.get(name, [])


def confirm_sampler(value: str) -> str:
    """A sampler name as the pipeline takes it (A1111 ``confirm_samplers``)."""
    return resolve_sampler(value)[0]


def confirm_scheduler(value: str) -> str:
    return resolve_scheduler(value)
