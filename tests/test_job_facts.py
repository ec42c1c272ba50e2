"""Results are data: the worker stores a generation's facts (model, VAE, seeds, extra parameters, inpainting
conditioning) on the job, the A1111 response is built from them, the store migrates older databases, and the
CLI names the model and VAE in its infotext exactly as the server does."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import torch
from PIL import Image
from typer.testing import CliRunner

from latentstudio import infotext
from latentstudio.cli import app
from latentstudio.config import Settings
from latentstudio.jobs import GenerationFacts, JobKind, JobRecord, JobSpec, JobStatus
from latentstudio.jobs.store import SCHEMA_VERSION, JobStore, Outcome
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.synthetic import write_checkpoint
from latentstudio.pipeline.images import read_infotext
from latentstudio.pipeline.infotexts import extra_generation_params
from latentstudio.pipeline.params import GenerationParams, Inpaint
from latentstudio.pipeline.run import ModelIdentity, run
from latentstudio.samplers.wrappers import StepControl
from tests.conftest import MakeTiny
from tests.serving import serve

IDENTITY = ModelIdentity("tiny", "0123456789")

# The schema every version before GenerationFacts created (user_version 1).
_SCHEMA_V1 = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, kind TEXT NOT NULL,
    source TEXT NOT NULL, checkpoint TEXT, vae TEXT NOT NULL, params TEXT NOT NULL, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, step INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]', error TEXT, interrupted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE TABLE inputs (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, field TEXT NOT NULL, png BLOB NOT NULL,
    PRIMARY KEY (job_id, field)
);
CREATE TABLE images (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    path TEXT NOT NULL, seed INTEGER NOT NULL, subseed INTEGER NOT NULL, infotext TEXT NOT NULL,
    UNIQUE (job_id, idx)
);
PRAGMA user_version = 1;
"""


def _record(job_id: str) -> JobRecord:
    params = GenerationParams(prompt="x", width=64, height=64, seed=3, subseed=4).resolved()
    return JobRecord(job_id, JobStatus.QUEUED, JobSpec(JobKind.TXT2IMG, params), created_at=1.0)


def test_extra_generation_params_are_the_non_fixed_keys_with_their_values() -> None:
    ordered = {
        "Steps": 20, "Sampler": "DDIM", "Schedule type": "Automatic", "CFG scale": 7.0, "Seed": 1,
        "Size": "64x64", "Model hash": "0123456789", "Model": "tiny", "Denoising strength": 0.5,
        "Conditional mask weight": 1.0, "Eta DDIM": 0.5, "TI hashes": "bad: 0123abcd0123", "Pad conds": True,
        "Hires resize": "128x96", "Version": "v1",
    }  # fmt: skip
    assert extra_generation_params(ordered) == {
        "Schedule type": "Automatic", "Eta DDIM": 0.5, "TI hashes": "bad: 0123abcd0123", "Pad conds": True,
        "Hires resize": "128x96",
    }  # fmt: skip


def test_an_old_schema_database_opens_and_gains_the_facts_column(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_V1)
        db.execute(
            "INSERT INTO jobs (id, status, kind, source, checkpoint, vae, params, created_at, finished_at) "
            "VALUES ('old', 'failed', 'txt2img', 'api', NULL, 'Automatic', ?, 1.0, 2.0)",
            ('{"prompt": "x", "width": 64, "height": 64, "seed": 3, "subseed": 4}',),
        )
    db.close()
    store = JobStore(path)
    try:
        old = store.get("old")
        assert old is not None
        assert (old.status, old.facts, old.spec.params.prompt) == (JobStatus.FAILED, None, "x")  # type: ignore[union-attr]
        facts = GenerationFacts(
            "tiny", "0123456789", "tiny.vae.safetensors", "abcdef0123", (3, 4), (4, 5),
            {"Schedule type": "Karras", "Pad conds": True, "Hires upscale": 2.0}, True,
        )  # fmt: skip
        assert store.insert(_record("new"), {})
        assert store.claim_next(3.0) is not None
        store.finish("new", Outcome(JobStatus.DONE, 4.0, 1, 1, facts=facts))
        assert store.get("new").facts == facts  # type: ignore[union-attr]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    reopened = JobStore(path)  # the migrated database opens again as it is
    try:
        assert reopened.get("new").facts == facts  # type: ignore[union-attr]
    finally:
        reopened.close()


def test_cli_and_server_write_the_same_infotext_with_an_external_vae(
    make_tiny: MakeTiny, tmp_path: Path
) -> None:
    tiny = make_tiny(Family.SD1)
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "VAE").mkdir()
    shutil.copyfile(tiny.path, models / "Stable-diffusion" / "tiny.safetensors")
    vae_state = {k: v for k, v in tiny.state.items() if k.startswith("first_stage_model.")}
    write_checkpoint(models / "VAE" / "tiny.vae.safetensors", vae_state)  # Automatic picks it
    request = {"prompt": "a cat", "seed": 11, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"}
    cli = CliRunner().invoke(app, [
        "generate", "a cat", "--seed", "11", "--steps", "2", "--width", "64", "--height", "64",
        "--sampler", "Euler", "--models-dir", str(models), "--data-dir", str(tmp_path / "cli-data"),
        "--output", str(tmp_path / "outputs"), "--device", "cpu", "--rng", "gpu",  # the server's default
    ])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    (written,) = (tmp_path / "outputs").rglob("*.png")
    with Image.open(written) as image:
        cli_text = read_infotext(image)
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu")
    with serve(settings) as served, httpx.Client(base_url=served.base, timeout=300) as client:
        body = client.post("/sdapi/v1/txt2img", json=request).json()
    info = json.loads(body["info"])
    server_text = info["infotexts"][0]
    assert cli_text is not None
    keys = [key for key, _ in infotext.param_pairs(server_text.splitlines()[-1])]
    assert keys == [key for key, _ in infotext.param_pairs(cli_text.splitlines()[-1])]
    assert {"Model", "Model hash", "VAE", "VAE hash"} <= set(keys)
    assert cli_text == server_text
    assert (info["sd_vae_name"], len(info["sd_vae_hash"])) == ("tiny.vae.safetensors", 10)
    assert (info["sd_model_name"], info["all_seeds"], info["is_using_inpainting_conditioning"]) == (
        "tiny", [11], False,
    )  # fmt: skip
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as served_image:
        assert read_infotext(served_image) == server_text


def _components(make_tiny: MakeTiny, *, inpainting: bool) -> loader.Components:
    path = make_tiny(Family.SD1, inpainting=inpainting).path
    return loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)


def test_a_generation_result_carries_every_planned_seed_and_the_extra_parameters(make_tiny: MakeTiny) -> None:
    params = GenerationParams(
        prompt="a (cat)", width=64, height=64, steps=2, seed=11, subseed=3, batch_size=2, n_iter=2,
        sampler="DDIM", eta=0.5, emphasis="No norm",
    ).resolved()  # fmt: skip
    stop_after_first = StepControl(should_stop=lambda: True)  # interrupted: one batch of two images
    model = _components(make_tiny, inpainting=False)
    result = run(params, model, identity=IDENTITY, control=stop_after_first)
    assert (result.interrupted, result.seeds, result.all_seeds) == (True, [11, 12], [11, 12, 13, 14])
    assert result.all_subseeds == [3, 4, 5, 6]
    line = result.infotexts[0].splitlines()[-1]
    not_extra = set(infotext.FIXED_KEYS) - {"Schedule type"}
    assert list(result.extra_generation_params) == [
        key for key, _ in infotext.param_pairs(line) if key not in not_extra
    ]
    assert result.extra_generation_params == {
        "Schedule type": "Automatic", "Emphasis": "No norm", "Eta DDIM": 0.5,
    }  # fmt: skip
    assert result.inpainting_conditioning is False


def test_an_inpainting_checkpoint_reports_its_image_conditioning(make_tiny: MakeTiny) -> None:
    """A1111 sets ``is_using_inpainting_conditioning`` whenever a hybrid/concat checkpoint gets its image
    conditioning: in img2img, and in txt2img too (``txt2img_image_conditioning``)."""
    model = _components(make_tiny, inpainting=True)
    params = GenerationParams(prompt="x", width=64, height=64, steps=2, seed=1, sampler="Euler").resolved()
    assert run(params, model, identity=IDENTITY).inpainting_conditioning is True
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    init = Image.new("RGB", (64, 64), (200, 10, 10))
    inpaint = dataclasses.replace(params, init_image=init, inpaint=Inpaint(mask))
    assert run(inpaint, model, identity=IDENTITY).inpainting_conditioning is True
