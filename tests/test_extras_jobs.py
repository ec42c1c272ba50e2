"""Extras as jobs: a queued extras job survives a restart and runs in the worker without any checkpoint,
giving what ``run_extras`` gives (tiny random-weight ESRGAN files built here)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from safetensors.torch import save_file

from latentstudio.config import Settings
from latentstudio.jobs import ExtrasSpec, JobService, JobStatus
from latentstudio.models.manager import ModelManager
from latentstudio.postprocess.extras import ExtrasOptions, run_extras
from latentstudio.postprocess.faces import FaceRestorers
from latentstudio.postprocess.synthetic import random_esrgan_state
from latentstudio.postprocess.upscalers import UpscalerRegistry

PARAMETERS = "a cat «ü»\nSteps: 20, Sampler: Euler, Seed: 1, Size: 24x16"


def _upscaler_files(models: Path) -> Path:
    """``models/ESRGAN/{4x,2x}-Tiny.safetensors`` and, as ``models/GFPGAN``'s weights, an ESRGAN file (a
    face restorer that is present but of the wrong architecture)."""
    for folder in ("ESRGAN", "GFPGAN"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    save_file(random_esrgan_state(seed=3), models / "ESRGAN" / "4x-Tiny.safetensors")
    save_file(random_esrgan_state(scale=2, seed=4), models / "ESRGAN" / "2x-Tiny.safetensors")
    save_file(random_esrgan_state(seed=5), models / "GFPGAN" / "GFPGANv1.4.safetensors")
    return models


def _source(
    width: int = 24, height: int = 16, seed: int = 0, parameters: str | None = PARAMETERS
) -> Image.Image:
    pixels = bytes((seed * 31 + i * 7) % 251 for i in range(width * height * 3))
    image = Image.frombytes("RGB", (width, height), pixels)
    if parameters:
        image.info["parameters"] = parameters
    return image


def test_a_queued_extras_job_survives_a_restart_and_needs_no_checkpoint(tmp_path: Path) -> None:
    models = _upscaler_files(tmp_path / "models")  # no checkpoint at all
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu", builtin_model=False)
    source = _source(parameters=PARAMETERS)
    options = ExtrasOptions(upscaler_1="4x-Tiny", upscaling_resize=2.5)
    before = JobService(settings, ModelManager(settings))  # never started: the job stays queued
    job_id = before.submit(ExtrasSpec(options, (source,))).id
    before.stop()
    after = JobService(settings, ModelManager(settings))
    after.start()
    try:
        record = after.wait(job_id, 120)
        assert record.status is JobStatus.DONE, record.error
        with Image.open(after.image_path(record.images[0].id)) as written:
            written.load()
            expected = run_extras(
                source, options, upscalers=UpscalerRegistry(models), faces=FaceRestorers(models)
            )
            assert written.tobytes() == expected.image.tobytes()
            assert written.size == (56, 40)
            assert written.info["parameters"] == PARAMETERS
            assert written.info["postprocessing"] == expected.postprocessing == record.images[0].infotext
    finally:
        after.stop()
