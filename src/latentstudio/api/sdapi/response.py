"""A finished job → A1111's ``{images, parameters, info}`` (``info``: the ``Processed.js()`` keys, §1.7), from
what the worker stored on the job (:class:`GenerationFacts`): the infotexts are never parsed back."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any

from PIL import Image

from latentstudio.api.sdapi.convert import Prepared
from latentstudio.api.sdapi.models import GenerationRequest, GenerationResponse
from latentstudio.jobs import GenerationFacts, JobRecord
from latentstudio.pipeline.images import png_bytes


def timestamp(seconds: float | None) -> str:
    """A1111's ``job_timestamp``: local time as ``YYYYmmddHHMMSS`` ("0" when unknown)."""
    return "0" if seconds is None else time.strftime("%Y%m%d%H%M%S", time.localtime(seconds))


def version() -> str:
    """Our package version (A1111 reports its git tag here)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("latentstudio")
    except PackageNotFoundError:
        return "0+unknown"


def grid(images: Sequence[Image.Image], n_rows: int, batch_size: int) -> Image.Image:
    """A1111 ``image_grid`` with its default settings: ``n_rows`` rows when > 0, one row per batch when 0,
    else round(√count) rows; never more rows than images; pasted left to right, top to bottom."""
    count = len(images)
    rows = n_rows if n_rows > 0 else batch_size if n_rows == 0 else round(math.sqrt(count))
    rows = max(1, min(rows, count))
    cols = math.ceil(count / rows)
    width, height = images[0].size
    canvas = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        canvas.paste(image, box=(i % cols * width, i // cols * height))
    return canvas


def info(prepared: Prepared, record: JobRecord, infotexts: Sequence[str], first_image: int) -> dict[str, Any]:
    """``Processed.js()``: prompts and seeds for every image of the request, the model, the infotexts."""
    params = prepared.spec.params
    count = params.batch_size * params.n_iter
    facts = record.facts if record.facts is not None else GenerationFacts()
    request = prepared.parameters
    denoise = request.get("denoising_strength")
    return {
        "prompt": params.prompt, "all_prompts": [params.prompt] * count,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * count,
        "seed": params.seed, "all_seeds": list(facts.all_seeds), "subseed": params.subseed,
        "all_subseeds": list(facts.all_subseeds),
        "subseed_strength": params.subseed_strength, "width": params.width, "height": params.height,
        "sampler_name": params.sampler, "cfg_scale": params.cfg_scale, "steps": params.steps,
        "batch_size": params.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": facts.model_name, "sd_model_hash": facts.model_hash,
        "sd_vae_name": facts.vae_name, "sd_vae_hash": facts.vae_hash,
        "seed_resize_from_w": request.get("seed_resize_from_w", -1),
        "seed_resize_from_h": request.get("seed_resize_from_h", -1),
        "denoising_strength": denoise,
        "extra_generation_params": dict(facts.extra_generation_params),
        "index_of_first_image": first_image, "infotexts": list(infotexts), "styles": list(prepared.styles),
        "job_timestamp": timestamp(record.started_at), "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": facts.inpainting_conditioning, "version": version(),
    }  # fmt: skip


def build(
    prepared: Prepared,
    record: JobRecord,
    pngs: Sequence[bytes],
    request: GenerationRequest,
    maps: Sequence[bytes] = (),
) -> GenerationResponse:
    """The response: base64 PNGs as stored (with infotext); with ``save_images`` and several images a grid
    first (A1111's ``return_grid``), carrying the first image's infotext; then the ControlNet units'
    detected ``maps`` (the extension appends them to ``images``, not to the infotexts)."""
    texts = list(record.infotexts)
    encoded = list(pngs)
    first = 0
    options: Mapping[str, object] = prepared.options
    scripted = prepared.spec.params.script is not None  # a script composes its own images (and grids)
    if request.save_images and len(pngs) > 1 and options["return_grid"] and not scripted:
        opened = [Image.open(BytesIO(data)).convert("RGB") for data in pngs]
        rows = int(options["n_rows"])  # type: ignore[call-overload]
        encoded.insert(0, png_bytes(grid(opened, rows, prepared.spec.params.batch_size), texts[0]))
        texts.insert(0, texts[0])
        first = 1
    encoded += maps
    images = [base64.b64encode(data).decode("ascii") for data in encoded] if request.send_images else []
    body = info(prepared, record, texts, first)
    return GenerationResponse(images=images, parameters=prepared.parameters, info=json.dumps(body))
