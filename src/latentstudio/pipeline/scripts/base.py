"""What every A1111 script here is: its title and tabs, its arguments (``/sdapi/v1/script-info``), a check of
``script_args`` when the job is made, and a run over several generations inside one job.

A script never loads a model or opens a file: the job runner hands it a :class:`ScriptContext` whose
``generate`` runs one generation with the job's model (progress reported over the whole script) and whose
``upscale`` is A1111's ``Upscaler.upscale`` with the server's upscalers.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from latentstudio import infotext
from latentstudio.config import MAX_SIDE
from latentstudio.core import FieldError
from latentstudio.pipeline.params import Policy, ResolvedParams
from latentstudio.pipeline.run import GenerationResult

Json = Any  # a JSON value as the request carried it
MAX_GENERATIONS = 4096  # the most generations one script job may plan (tiles × batches, loops, cells)
Model = tuple[str | None, str | None]  # (checkpoint name, VAE choice) of one generation; None: the job's
JOB_MODEL: Model = (None, None)

__all__ = [
    "JOB_MODEL",
    "MAX_GENERATIONS",
    "Json",
    "Model",
    "Script",
    "ScriptArg",
    "ScriptContext",
    "ScriptEnv",
    "check_choice",
    "check_number",
    "combined_result",
    "single",
    "with_script_keys",
]


@dataclass(frozen=True)
class ScriptArg:
    """One of a script's arguments, in ``script_args`` order: A1111's ``ScriptArg`` (label, UI default,
    slider bounds and step, choices)."""

    label: str
    value: Json
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None

    def info(self) -> dict[str, Json]:
        """The ``/sdapi/v1/script-info`` entry."""
        return {
            "label": self.label, "value": self.value, "minimum": self.minimum, "maximum": self.maximum,
            "step": self.step, "choices": list(self.choices) if self.choices is not None else None,
        }  # fmt: skip


@dataclass(frozen=True)
class ScriptEnv:
    """What a script's arguments are checked against when the job is made: the upscaler names in A1111's
    ``sd_upscalers`` order (None, Lanczos, Nearest, models), ``checkpoint(query)`` → the checkpoint's name
    (raising :class:`FieldError` for an unknown one), the VAE names."""

    upscalers: Sequence[str] = ()
    checkpoint: Callable[[str], str] = lambda query: query
    vaes: Sequence[str] = ()


@dataclass(frozen=True)
class ScriptContext:
    """What a running script may use.

    ``generate(params, index, count, model)``: one generation of ``params`` (``script`` None) with the
    job's model, or with ``model = (checkpoint name or None, VAE choice or None)`` (None: the job's);
    ``index`` of ``count`` planned generations, for progress over the whole script.
    ``upscale(image, upscaler, scale)``: A1111 ``Upscaler.upscale`` (result ``int(w·scale)//8·8`` wide).
    ``upscalers``: the upscaler names in A1111's ``sd_upscalers`` order (None, Lanczos, Nearest, models).
    ``stopped``: True once the job was interrupted or cancelled (no further generation should start).
    """

    generate: Callable[[ResolvedParams, int, int, Model], GenerationResult]
    upscale: Callable[[Image.Image, str, float], Image.Image]
    upscalers: Sequence[str]
    stopped: Callable[[], bool] = lambda: False


class Script(ABC):
    """An A1111 script: ``title`` (what ``script_name`` matches, case-insensitive), the tabs it shows on,
    and ``args`` in ``script_args`` order."""

    title: ClassVar[str]
    txt2img: ClassVar[bool] = True
    img2img: ClassVar[bool] = True
    args: ClassVar[tuple[ScriptArg, ...]]

    @abstractmethod
    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        """``values`` (defaults already filled in) checked against ``params``; returns them normalised.
        Raises :class:`FieldError` naming ``script_args.i``."""

    @abstractmethod
    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        """Run the script over ``params`` (its ``script`` field cleared) with checked ``values``."""

    def seeds(self, values: list[Json], params: ResolvedParams, random_seed: bool) -> tuple[int, ...]:
        """Seeds to draw when the job is made (``random_seed``: the request asked for a random one)."""
        return ()


def check_number(
    values: list[Json], index: int, low: float, high: float, *, integer: bool = False
) -> float | int:
    """``values[index]`` as a number in ``[low, high]`` (an integer with ``integer``; a whole float such as
    ``8.0`` counts as one, as Gradio sliders send them)."""
    value = values[index]
    field = f"script_args.{index}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FieldError(field, f"must be a number in [{low}, {high}], got {value!r}")
    if integer:
        if value != int(value):
            raise FieldError(field, f"must be a whole number in [{low:g}, {high:g}], got {value!r}")
        value = int(value)
    if not low <= value <= high:
        raise FieldError(field, f"must be in [{low:g}, {high:g}], got {value!r}")
    return int(value) if integer or isinstance(value, int) else float(value)  # as sent: 1 stays 1


def check_plan(count: int, field: str) -> None:
    """Refuse a script that would run more than :data:`MAX_GENERATIONS` generations."""
    if count > MAX_GENERATIONS:
        raise FieldError(field, f"{count} generations; a script runs at most {MAX_GENERATIONS}")


def check_choice(values: list[Json], index: int, choices: Sequence[str]) -> str:
    """``values[index]`` as one of ``choices`` (exactly, as A1111 compares them)."""
    value = values[index]
    if value not in choices:
        allowed = ", ".join(choices)
        raise FieldError(f"script_args.{index}", f"unknown {value!r}; allowed: {allowed}")
    return str(value)


def combined_result(
    params: ResolvedParams,
    results: Sequence[GenerationResult],
    *,
    images: list[Image.Image] | None = None,
    infotexts: list[str] | None = None,
    seeds: list[int] | None = None,
    subseeds: list[int] | None = None,
) -> GenerationResult:
    """One job's result from a script's generations: their images, infotexts and seeds in order unless the
    script composed its own; interrupted if any was; warnings and extra infotext keys of all of them."""
    warnings: list[str] = []
    extra: dict[str, object] = {}
    for result in results:
        warnings += [w for w in result.warnings if w not in warnings]
        extra = {**result.extra_generation_params, **extra}
    images = images if images is not None else [i for r in results for i in r.images]
    texts = infotexts if infotexts is not None else [t for r in results for t in r.infotexts]
    seeds = seeds if seeds is not None else [s for r in results for s in r.seeds]
    subseeds = subseeds if subseeds is not None else [s for r in results for s in r.subseeds]
    return GenerationResult(
        images=images, infotexts=texts, seeds=seeds, subseeds=subseeds, params=params,
        interrupted=any(r.interrupted for r in results), warnings=warnings, all_seeds=list(seeds),
        all_subseeds=list(subseeds), extra_generation_params=extra,
        inpainting_conditioning=any(r.inpainting_conditioning for r in results),
    )  # fmt: skip


def single(params: ResolvedParams, **changes: Any) -> ResolvedParams:
    """``params`` for one of the script's generations: ``changes`` applied, no script, validated again."""
    changed = dataclasses.replace(params, script=None, **changes)
    return changed.resolved(Policy(max_side=MAX_SIDE))  # the job's limits were checked when it was made


def with_script_keys(text: str, keys: Mapping[str, object]) -> str:
    """``text`` (an infotext we wrote) with a script's ``keys`` where A1111 puts them: a script sets its
    keys in ``extra_generation_params`` before the generation adds its own, so they follow the fixed keys
    and precede the generation's extra ones (values quoted as ``create_infotext`` does)."""
    head, _, line = text.rpartition("\n")
    pairs = infotext.param_pairs(line)
    fixed = [(k, v) for k, v in pairs if k in infotext.FIXED_KEYS and k not in keys]
    rest = [(k, v) for k, v in pairs if k not in infotext.FIXED_KEYS and k not in keys]
    ours = [(k, str(infotext.quote(v))) for k, v in keys.items() if v is not None]
    trailing = [(k, v) for k, v in rest if k in infotext.TRAILING_KEYS]
    rest = [(k, v) for k, v in rest if k not in infotext.TRAILING_KEYS]
    joined = ", ".join(k if k == v else f"{k}: {v}" for k, v in fixed + ours + rest + trailing)
    return f"{head}\n{joined}" if head else joined
