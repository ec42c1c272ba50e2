"""A1111's "Prompts from file or textbox": one generation per non-empty line of a text.

Arguments: ``[iterate_seed, same_random_seed, prompt_position, prompt_text]`` (an optional fifth,
``make_combined``, as later A1111 versions take it). A line is a prompt, or — when it contains ``--`` —
options in A1111's ``cmdargs`` syntax (``--prompt "a cat" --steps 10 --cfg_scale 5``; ``--prompt`` and
``--negative_prompt`` run to the next ``--`` token). A line that does not parse as options (shell quoting,
a token without ``--``, an unknown option, a value that is not a number) is taken whole as the prompt, as
A1111 does. A line's prompt is put before (``start``) or after (``end``) the request's prompt with a space
when both are non-empty, likewise its negative prompt. Seeds: with ``iterate_seed`` line *k* starts at
``seed + k·batch_size·n_iter`` (the request's batch), with ``same_random_seed`` every line uses the one
seed, and with neither a random request seed gives every line a fresh random one (drawn when the job is
made, so the job is reproducible from its record).

Deliberate differences: ``--sd_model``, ``--styles``, ``--outpath_samples`` / ``--outpath_grids`` and
``--restore_faces true`` are refused (422 naming the line): the worker keeps the job's checkpoint, styles are
applied when a request is converted, and no path is ever taken from a client. An option value that would
be invalid for a generation (``--steps 0``, an unknown ``--sampler_name``) is a 422 naming the line, where
A1111 fails inside the job.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Any

from latentstudio.core import FieldError
from latentstudio.pipeline.params import Policy, ResolvedParams, TilingMode
from latentstudio.pipeline.run import GenerationResult
from latentstudio.pipeline.scripts.base import (
    JOB_MODEL,
    Json,
    Script,
    ScriptArg,
    ScriptContext,
    ScriptEnv,
    check_choice,
    combined_result,
    single,
)
from latentstudio.pipeline.scripts.grid import image_grid
from latentstudio.samplers import resolve_sampler
from latentstudio.samplers.noise import resolve_seed

__all__ = ["PromptsFromFile", "line_options", "prompt_lines"]

_INT = ("seed", "subseed", "seed_resize_from_h", "seed_resize_from_w", "sampler_index", "batch_size",
        "n_iter", "steps", "width", "height")  # fmt: skip
_FLOAT = ("subseed_strength", "cfg_scale")
_BOOL = ("restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid")
_TEXT = ("sd_model", "outpath_samples", "outpath_grids", "prompt_for_display", "styles", "sampler_name")
_REFUSED = {
    "sd_model": "a line cannot switch the checkpoint here (the job keeps the request's)",
    "styles": "styles are applied to the request, not per line",
    "outpath_samples": "output paths are never taken from a client",
    "outpath_grids": "output paths are never taken from a client",
}
_IGNORED = ("sampler_index", "do_not_save_samples", "do_not_save_grid", "prompt_for_display")
MAX_LINES = 1000


class _NotOptions(Exception):  # noqa: N818 - control flow: the line is a plain prompt
    pass


def prompt_lines(text: str) -> list[str]:
    """The non-empty lines of ``text``, stripped."""
    return [line for line in (raw.strip() for raw in text.splitlines()) if line]


def line_options(line: str) -> dict[str, Any]:
    """A1111 ``cmdargs`` of one line, or ``{"prompt": line}`` when it has no ``--`` or does not parse."""
    if "--" not in line:
        return {"prompt": line}
    try:
        return _cmdargs(line)
    except (_NotOptions, ValueError):
        return {"prompt": line}


def _cmdargs(line: str) -> dict[str, Any]:
    args = shlex.split(line)
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--") or pos + 1 >= len(args):
            raise _NotOptions(arg)
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            out[tag] = " ".join(words)
            continue
        value = args[pos + 1]
        if tag in _INT:
            out[tag] = int(value)
        elif tag in _FLOAT:
            out[tag] = float(value)
        elif tag in _BOOL:
            out[tag] = value == "true"
        elif tag in _TEXT:
            out[tag] = value
        else:
            raise _NotOptions(tag)
        pos += 2
    return out


def _joined(line_text: str | None, base: str, position: str) -> str:
    if not line_text:
        return base
    if not base:
        return line_text
    return f"{line_text} {base}" if position == "start" else f"{base} {line_text}"


def line_params(
    params: ResolvedParams, options: dict[str, Any], position: str, seed: int, line: int
) -> ResolvedParams:
    """The generation of line ``line`` (from 1): ``params`` with the line's options, its prompts joined at
    ``position`` and ``seed`` unless the line names one. Raises :class:`FieldError` naming
    ``script_args.3`` (the prompt text) and the line."""
    field = "script_args.3"
    for name, why in _REFUSED.items():
        if name in options:
            raise FieldError(field, f"line {line}: --{name}: {why}")
    if options.get("restore_faces"):
        raise FieldError(field, f"line {line}: --restore_faces true: face restoration is not supported")
    changes: dict[str, Any] = {
        k: v for k, v in options.items() if k not in (*_IGNORED, "prompt", "negative_prompt", "restore_faces")
    }
    if "sampler_name" in changes:
        try:
            changes["sampler"], named = resolve_sampler(changes.pop("sampler_name"))
        except ValueError as e:
            raise FieldError(field, f"line {line}: --sampler_name: {e}") from None
        if named is not None:
            changes["scheduler"] = named
    if "tiling" in changes:  # A1111's tiling: both axes (the job's own axes when it already tiles)
        wrap = params.tiling if params.tiling is not TilingMode.NONE else TilingMode.BOTH
        changes["tiling"] = wrap if changes["tiling"] else TilingMode.NONE
    changes.setdefault("seed", seed)
    changes["prompt"] = _joined(options.get("prompt"), params.prompt, position)
    changes["negative_prompt"] = _joined(options.get("negative_prompt"), params.negative_prompt, position)
    try:
        return single(params, **changes)
    except FieldError as e:
        raise FieldError(field, f"line {line}: {e.field}: {e.message}") from None


class PromptsFromFile(Script):
    title = "Prompts from file or textbox"
    args = (
        ScriptArg("Iterate seed every line", False),
        ScriptArg("Use same random seed for all lines", False),
        ScriptArg("Insert prompts at the", "start", choices=("start", "end")),
        ScriptArg("List of prompt inputs", ""),
    )
    optional = (ScriptArg("Make a combined image containing all outputs (if more than one)", False),)

    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        for i in (0, 1, *((4,) if len(values) > 4 else ())):
            if not isinstance(values[i], bool):
                raise FieldError(f"script_args.{i}", f"must be true or false, got {values[i]!r}")
        check_choice(values, 2, ("start", "end"))
        if not isinstance(values[3], str):
            raise FieldError("script_args.3", f"must be the text of the prompt lines, got {values[3]!r}")
        lines = prompt_lines(values[3])
        if len(lines) > MAX_LINES:
            raise FieldError("script_args.3", f"at most {MAX_LINES} lines, got {len(lines)}")
        for k, line in enumerate(lines):
            # the request's seed stands in for a line's own: a line's other fields are checked here
            line_params(params, line_options(line), values[2], params.seed, k + 1)
        return values

    def seeds(self, values: list[Json], params: ResolvedParams, random_seed: bool) -> tuple[int, ...]:
        if values[0] or values[1] or not random_seed:
            return ()
        return tuple(resolve_seed(-1) for _ in prompt_lines(values[3]))

    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        iterate, position = bool(values[0]), str(values[2])
        lines = prompt_lines(values[3])
        results: list[GenerationResult] = []
        seed = params.seed
        for k, line in enumerate(lines):
            if ctx.stopped():
                break
            line_seed = seeds[k] if k < len(seeds) else seed
            one = line_params(params, line_options(line), position, line_seed, k + 1)
            results.append(ctx.generate(one, k, len(lines), JOB_MODEL))
            if iterate:
                seed += params.batch_size * params.n_iter
        combined = combined_result(params, results)
        if len(values) > 4 and values[4] and len(combined.images) > 1:
            combined = _with_combined(combined, values[3])
        return combined


def _with_combined(result: GenerationResult, text: str) -> GenerationResult:
    """A1111's ``make_combined``: a grid of every image first (``image_grid`` with batch size 1), its
    infotext every image's joined by newlines."""
    grid = image_grid(result.images, rows=round(math.sqrt(len(result.images))))
    return dataclasses.replace(
        result, images=[grid, *result.images], infotexts=["\n".join(result.infotexts), *result.infotexts],
        seeds=[-1, *result.seeds], subseeds=[-1, *result.subseeds],
    )  # fmt: skip
