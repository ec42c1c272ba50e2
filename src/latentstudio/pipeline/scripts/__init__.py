"""A1111's built-in scripts, run as ordinary jobs: ``script_name`` + ``script_args`` on txt2img / img2img.

:func:`prepare` checks a request's script when the job is made (:class:`FieldError` naming
``script_name`` or ``script_args.i``) and returns the :class:`ScriptCall` the job's params carry;
:func:`run_script` runs it in the worker (or the CLI) with a :class:`ScriptContext`. ``/sdapi/v1/scripts``
and ``/sdapi/v1/script-info`` list :data:`SCRIPTS`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from latentstudio.core import FieldError
from latentstudio.pipeline.params import Policy, ResolvedParams, ScriptCall
from latentstudio.pipeline.run import GenerationResult
from latentstudio.pipeline.scripts.base import (
    JOB_MODEL,
    Json,
    Model,
    Script,
    ScriptArg,
    ScriptContext,
    ScriptEnv,
)
from latentstudio.pipeline.scripts.loopback import Loopback
from latentstudio.pipeline.scripts.outpainting_mk2 import OutpaintingMk2
from latentstudio.pipeline.scripts.poor_mans import PoorMansOutpainting
from latentstudio.pipeline.scripts.prompts_file import PromptsFromFile
from latentstudio.pipeline.scripts.sd_upscale import SdUpscale
from latentstudio.pipeline.scripts.xyz import XyzPlot
from latentstudio.pipeline.scripts.xyz_axes import tab_axes

__all__ = [
    "JOB_MODEL",
    "SCRIPTS",
    "Model",
    "Script",
    "ScriptArg",
    "ScriptCall",
    "ScriptContext",
    "ScriptEnv",
    "find_script",
    "prepare",
    "run_script",
    "script_info",
    "tab_scripts",
]

# A1111 loads its scripts/ folder in file-name order (loopback, poor_mans_outpainting, prompts_from_file, …)
SCRIPTS: tuple[Script, ...] = (
    Loopback(),
    OutpaintingMk2(),
    PoorMansOutpainting(),
    PromptsFromFile(),
    SdUpscale(),
    XyzPlot(),
)


def tab_scripts(img2img: bool) -> list[Script]:
    """The scripts of one tab (txt2img or img2img), in A1111's order."""
    return [s for s in SCRIPTS if (s.img2img if img2img else s.txt2img)]


def find_script(name: str, img2img: bool) -> Script:
    """The script titled ``name`` (any case, as A1111's ``script_name_to_index``) on that tab."""
    for script in tab_scripts(img2img):
        if script.title.lower() == name.lower():
            return script
    raise FieldError("script_name", f"Script '{name}' not found")


def script_info(img2img: bool, upscalers: Sequence[str] = ()) -> list[dict[str, Json]]:
    """``/sdapi/v1/script-info`` entries of one tab (``upscalers`` are SD upscale's choices)."""
    axes = [axis.label for axis in tab_axes(img2img)]
    out = []
    for script in tab_scripts(img2img):
        args = [a.info() for a in (*script.args, *getattr(script, "optional", ()))]
        for arg in args:
            if arg["label"] == "Upscaler" and upscalers:
                arg.update(choices=list(upscalers))
            elif isinstance(script, XyzPlot) and arg["label"] in ("X type", "Y type", "Z type"):
                arg.update(choices=axes)
            value, choices = arg["value"], arg["choices"]
            if choices and isinstance(value, int) and not isinstance(value, bool):
                arg["value"] = choices[value]  # an index-typed control's value is its label, as in A1111
        out.append({"name": script.title.lower(), "is_alwayson": False, "is_img2img": img2img, "args": args})
    return out


def prepare(
    name: str,
    values: Sequence[Json],
    params: ResolvedParams,
    *,
    policy: Policy,
    env: ScriptEnv,
    random_seed: bool,
) -> ResolvedParams:
    """``params`` carrying the checked script call; ``values`` are ``script_args`` (missing trailing ones
    take the UI defaults, as A1111 fills them). ``random_seed``: the request asked for seed -1."""
    script = find_script(name, params.is_img2img)
    extra = len(getattr(script, "optional", ()))
    if len(values) > len(script.args) + extra:
        raise FieldError("script_args", f"{script.title} takes at most {len(script.args) + extra} "
                         f"arguments, got {len(values)}")  # fmt: skip
    filled = list(values) + [a.value for a in script.args[len(values) :]]
    checked = script.check(filled, params, policy, env)
    call = ScriptCall(
        name=script.title,
        args=json.dumps(checked, ensure_ascii=False, allow_nan=False),
        seeds=script.seeds(checked, params, random_seed),
    )
    return dataclasses.replace(params, script=call)


def run_script(params: ResolvedParams, ctx: ScriptContext) -> GenerationResult:
    """Run the script ``params.script`` names (its args were checked by :func:`prepare`)."""
    call = params.script
    if call is None:
        raise ValueError("run_script: params carry no script")
    script = find_script(call.name, params.is_img2img)
    base = dataclasses.replace(params, script=None)
    return script.run(base, json.loads(call.args), call.seeds, ctx)
