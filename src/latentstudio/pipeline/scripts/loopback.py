"""A1111's "Loopback" (img2img): feed each result back as the next init image.

Arguments: ``[loops, final_denoising_strength, denoising_curve, append_interrogation]``. For each of
``n_iter`` batches the init image is the request's again; loop *i* (from 0) runs one image at seed
``seed + (number of loops run before)`` and strength ``s₀ + (final − s₀)·c((i)/(loops − 1))`` where *c* is
``sin(x·π/2)`` (Aggressive), ``x`` (Linear) or ``1 − cos(x·π/2)`` (Lazy); from the second loop on,
inpainting uses masked content "original". With one batch every loop's image is a result, after a grid
of them in one row (A1111's ``return_grid``); with several batches each batch's last image is. The
infotext is the first loop's plus ``Final denoising strength`` and ``Denoising curve``.
``append_interrogation`` other than "None" needs an interrogator (CLIP / DeepBooru), which this server
does not have: a 422.
"""

from __future__ import annotations

import dataclasses
import math

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
    check_choice,
    check_number,
    check_plan,
    combined_result,
    single,
    with_script_keys,
)
from latentstudio.pipeline.scripts.grid import image_grid

__all__ = ["Loopback", "loop_strength"]

CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = ("None", "CLIP", "DeepBooru")


def loop_strength(initial: float, final: float, loops: int, loop: int, curve: str) -> float:
    """The denoising strength of loop ``loop`` (0-based) of ``loops``: A1111's
    ``calculate_denoising_strength``."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return initial + (final - initial) * shape


class Loopback(Script):
    title = "Loopback"
    txt2img = False
    args = (
        ScriptArg("Loops", 4, 1, 32, 1),
        ScriptArg("Final denoising strength", 0.5, 0, 1, 0.01),
        ScriptArg("Denoising strength curve", "Linear", choices=CURVES),
        ScriptArg("Append interrogated prompt at each iteration", "None", choices=INTERROGATORS),
    )

    def check(self, values: list[Json], params: ResolvedParams, policy: Policy, env: ScriptEnv) -> list[Json]:
        loops = check_number(values, 0, 1, 1000, integer=True)
        check_plan(int(loops) * params.n_iter, "script_args.0")
        final = check_number(values, 1, 0, 1)
        curve = check_choice(values, 2, CURVES)
        interrogate = check_choice(values, 3, INTERROGATORS)
        if interrogate != "None":
            raise FieldError("script_args.3", "interrogation (CLIP / DeepBooru) is not available here")
        return [loops, final, curve, interrogate]

    def run(
        self, params: ResolvedParams, values: list[Json], seeds: tuple[int, ...], ctx: ScriptContext
    ) -> GenerationResult:
        loops, final, curve = int(values[0]), float(values[1]), str(values[2])
        batches = params.n_iter
        initial = params.denoising_strength
        results: list[GenerationResult] = []
        history: list[Image.Image] = []
        seed = params.seed
        for n in range(batches):
            init, strength, inpaint = params.init_image, initial, params.inpaint
            last: Image.Image | None = None
            for i in range(loops):
                if ctx.stopped():
                    break
                one = single(params, init_image=init, denoising_strength=strength, inpaint=inpaint,
                             seed=seed, batch_size=1, n_iter=1)  # fmt: skip
                result = ctx.generate(one, n * loops + i, batches * loops, JOB_MODEL)
                results.append(result)
                if result.interrupted or not result.images:
                    break
                seed += 1
                strength = loop_strength(initial, final, loops, i + 1, curve)
                last = init = result.images[0]
                if inpaint is not None:
                    inpaint = dataclasses.replace(inpaint, fill=1)  # "original" after the first loop
                if batches == 1:
                    history.append(last)
            if batches > 1 and last is not None and not ctx.stopped():
                history.append(last)
            if ctx.stopped():
                break
        keys = {"Final denoising strength": final, "Denoising curve": curve}
        text = with_script_keys(results[0].infotexts[0], keys) if results and results[0].infotexts else ""
        images, texts = list(history), [text] * len(history)
        if len(history) > 1:
            images, texts = [image_grid(history, rows=1), *images], [text, *texts]
        count = len(images)
        firsts, subseeds = [params.seed] * count, [params.subseed] * count
        combined = combined_result(params, results, images=images, infotexts=texts, seeds=firsts,
                                   subseeds=subseeds)  # fmt: skip
        combined.extra_generation_params.update(keys)
        return combined
