"""The job store and codec without HTTP or models: exact round trips (generation and extras jobs), queue
order, recovery, schema guard."""

from __future__ import annotations

import dataclasses
import enum
import json
import sqlite3
import types
import typing
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from latentstudio.core import FieldError
from latentstudio.jobs import ExtrasSpec, JobKind, JobRecord, JobSpec, JobStatus
from latentstudio.jobs.codec import (
    extras_from_json,
    extras_input_pngs,
    input_pngs,
    params_from_json,
    params_to_json,
)
from latentstudio.jobs.model import ImageRef
from latentstudio.jobs.store import JobStore, Outcome, StoredImage, StoreError
from latentstudio.pipeline.params import GenerationParams, Hires, Inpaint, ResizeMode
from latentstudio.postprocess.extras import ExtrasOptions
from latentstudio.samplers.noise import RngSource


def _odd_params(**kwargs: object) -> GenerationParams:
    """Every field away from its default (floats that do not survive a naive round trip included)."""
    return GenerationParams(
        prompt="a [cat:dog:0.3] (x:1.1)\nline «two» 🐈", negative_prompt='blurry, "quoted"',
        sampler="Euler a", scheduler="Karras", steps=7, cfg_scale=0.1 + 0.2, seed=2**32 - 1, subseed=12345,
        subseed_strength=1 / 3,
        seed_resize_from_w=320, seed_resize_from_h=256, width=72, height=56, batch_size=3, n_iter=2,
        clip_skip=2, eta=0.6700000000000002, s_noise=1.003, rng=RngSource.NV, eta_noise_seed_delta=31337,
        denoising_strength=0.123456789, resize_mode=ResizeMode.LATENT_UPSCALE, emphasis="No norm",
        old_prompt_editing=True, pad_conds=True, pad_conds_v0=True, **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def _perturbed(cls: type = GenerationParams) -> Any:
    """Every field moved off its default by its type (so a newly added field is covered too); a nested
    part (``hires``, ``inpaint``) perturbed alike, an image field a small picture."""
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else ""
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        kind = options[0]
        if isinstance(kind, type) and issubclass(kind, Image.Image):
            values[f.name] = Image.new(
                "L" if f.name == "mask" else "RGB", (5, 3), 7 if f.name == "mask" else (9, 8, 7)
            )
        elif dataclasses.is_dataclass(kind):
            values[f.name] = _perturbed(kind)  # type: ignore[arg-type]
        elif typing.get_origin(kind) is tuple:  # a tuple of parts (ControlNet units) or of numbers
            item = typing.get_args(kind)[0]
            values[f.name] = (
                (_perturbed(item), _perturbed(item)) if dataclasses.is_dataclass(item) else (1 / 3, -2.5)
            )
        elif isinstance(default, enum.Enum):
            values[f.name] = list(type(default))[-1]
        elif isinstance(default, bool):
            values[f.name] = not default
        elif isinstance(default, int | float) or kind in (int, float):
            values[f.name] = (default or 0) + (3 if kind is int else 0.1 + 0.2)
        elif isinstance(default, str) or kind is str:
            values[f.name] = f'{default or ""}«{f.name}» 🐈\n"q"'
        else:
            raise AssertionError(f"no perturbation for {cls.__name__}.{f.name}: {hint}")
    return cls(**values)


def _fields(params: GenerationParams) -> dict[str, object]:
    """The fields, images as their pixels (a decoded PNG is not the same object)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, Image.Image):
            value = (value.mode, value.size, value.tobytes())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = _fields(value)  # type: ignore[arg-type]
        elif isinstance(value, tuple):
            value = [_fields(v) if dataclasses.is_dataclass(v) else v for v in value]  # type: ignore[arg-type]
        out[f.name] = value
    return out


def _round_trip(params: GenerationParams) -> GenerationParams:
    pngs = input_pngs(params)
    return params_from_json(params_to_json(params), {k: Image.open(BytesIO(v)) for k, v in pngs.items()})


def test_codec_round_trips_every_field_exactly() -> None:
    perturbed = _perturbed()
    for params in (_odd_params(), perturbed, GenerationParams(prompt="x")):
        back = _round_trip(params)
        assert _fields(back) == _fields(params)
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            if not isinstance(value, Image.Image):  # an image comes back as the PNG it was stored as
                assert type(getattr(back, f.name)) is type(value), f.name
    defaults = GenerationParams(prompt="")
    assert not [
        f.name
        for f in dataclasses.fields(perturbed)
        if getattr(perturbed, f.name) == getattr(defaults, f.name)
    ]
    units = {f"control.{i}.{name}" for i in range(2) for name in ("image", "mask")}
    assert set(input_pngs(perturbed)) == {
        "init_image",
        "inpaint.mask",
        "inpaint.latent_mask",
        "hires.firstpass_image",
        *units,
    }
    assert "mask" not in json.loads(params_to_json(perturbed))["inpaint"]  # images live beside the row


def test_codec_reads_rows_stored_before_hires_and_inpaint_were_nested() -> None:
    """Schema v2 rows had flat ``enable_hr``/``hr_*`` and mask fields (and a "mask" input image)."""
    hires = json.dumps({"prompt": "x", "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
                        "hr_second_pass_steps": 4, "hr_checkpoint": None,
                        "denoising_strength": 0.6})  # fmt: skip
    back = params_from_json(hires)
    assert back.hires == Hires(scale=1.5, upscaler="Lanczos", steps=4, denoising_strength=0.6)
    mask = Image.new("L", (4, 4), 255)
    flat = json.dumps({"prompt": "x", "enable_hr": False, "hr_scale": 2.0, "mask_blur": 9,
                       "inpainting_fill": 2, "inpaint_full_res": True, "inpaint_full_res_padding": 5,
                       "inpainting_mask_invert": True})  # fmt: skip
    back = params_from_json(flat, {"init_image": Image.new("RGB", (4, 4)), "mask": mask})
    assert back.hires is None
    assert back.inpaint == Inpaint(mask, blur=9, fill=2, only_masked=True, padding=5, invert=True)


def test_codec_refuses_unknown_stored_fields() -> None:
    with pytest.raises(ValueError, match="from_the_future"):
        params_from_json('{"prompt": "x", "from_the_future": 1}')


def _record(store: JobStore, prompt: str, when: float, init: Image.Image | None = None) -> JobRecord:
    params = GenerationParams(prompt=prompt, init_image=init).resolved()
    kind = JobKind.IMG2IMG if init is not None else JobKind.TXT2IMG
    record = JobRecord(f"{int(when):032x}", JobStatus.QUEUED, JobSpec(kind, params, "tiny"), when)
    assert store.insert(record, input_pngs(params))
    return record


def test_store_keeps_order_specs_init_images_and_results(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    init = Image.new("RGB", (40, 24), (1, 2, 3))
    first = _record(store, "first", 1.0, init)
    second = _record(store, "second", 2.0)
    assert store.position(second.id) == 1
    got = store.get(first.id)
    assert got is not None
    assert got.spec.params.init_image is not None
    assert got.spec.params.init_image.tobytes() == init.tobytes()
    assert dataclasses.replace(got.spec.params, init_image=None) == dataclasses.replace(
        first.spec.params, init_image=None
    )
    claimed = store.claim_next(5.0)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.started_at) == (first.id, JobStatus.RUNNING, 5.0)
    ref = ImageRef("a" * 32, 0, 7, 8, "infotext")
    store.finish(first.id, Outcome(JobStatus.DONE, 6.0, 20, 20, [StoredImage(ref, f"{first.id}/000-7.png")]))
    with pytest.raises(StoreError, match="not running"):
        store.finish(first.id, Outcome(JobStatus.DONE, 6.0, 20, 20))  # never twice
    done = store.get(first.id)
    assert done is not None
    assert done.images == (ref,)
    assert done.status is JobStatus.DONE
    assert store.image(ref.id) == StoredImage(ref, f"{first.id}/000-7.png")
    assert [r.id for r in store.list()] == [second.id, first.id]  # newest first
    assert [r.id for r in store.list(JobStatus.QUEUED)] == [second.id]
    store.close()


def test_restart_fails_running_jobs_and_keeps_the_queue(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = [_record(store, f"job {i}", float(i)) for i in range(4)]
    store.claim_next(10.0)
    assert store.cancel_queued(jobs[2].id, 11.0)
    assert not store.cancel_queued(jobs[0].id, 11.0)  # running: not cancellable this way
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # as after kill -9
    assert reopened.fail_running(12.0, "interrupted") == [jobs[0].id]
    statuses = [reopened.get(j.id).status for j in jobs]  # type: ignore[union-attr]
    assert statuses == [JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.QUEUED]
    order = [reopened.claim_next(13.0), reopened.claim_next(14.0)]
    reopened.requeue(jobs[3].id)
    assert [r.id for r in order if r] == [jobs[1].id, jobs[3].id]
    assert reopened.claim_next(15.0).id == jobs[3].id  # type: ignore[union-attr]
    assert reopened.count(JobStatus.QUEUED) == 0


def test_queue_limit_is_checked_atomically_with_the_insert(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    params = GenerationParams(prompt="x").resolved()
    results = [
        store.insert(
            JobRecord(f"{i:032x}", JobStatus.QUEUED, JobSpec(JobKind.TXT2IMG, params), i), {}, max_queued=2
        )
        for i in range(3)
    ]
    assert results == [True, True, False]
    assert store.count() == 2


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    JobStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        JobStore(path)


def test_specs_must_be_resolved_and_consistent() -> None:
    with pytest.raises(TypeError, match="resolved"):  # only the one builder makes a spec's parameters
        JobSpec(JobKind.TXT2IMG, GenerationParams(prompt="x"))
    with pytest.raises(FieldError, match="init_image"):
        JobSpec(JobKind.IMG2IMG, GenerationParams(prompt="x").resolved())


def _odd_options() -> ExtrasOptions:
    """Every ExtrasOptions field away from its default (a newly added field fails the check below)."""
    options = ExtrasOptions(
        resize_mode=1, upscaling_resize=0.1 + 0.2, upscaling_resize_w=100, upscaling_resize_h=60,
        upscaling_crop=False, upscaler_1="4x «Tiny»", upscaler_2="Lanczos",
        extras_upscaler_2_visibility=1 / 3, gfpgan_visibility=0.125,
        codeformer_visibility=0.7000000000000001, codeformer_weight=1.0, upscale_first=True,
    )  # fmt: skip
    defaults = ExtrasOptions()
    assert all(getattr(options, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(options))
    return options


def test_extras_jobs_keep_options_images_and_their_infotexts(tmp_path: Path) -> None:
    options = _odd_options()
    assert extras_from_json(params_to_json(options)) == options
    assert extras_from_json('{"upscaling_resize": 2}').upscaling_resize == 2.0  # an int in JSON: a float
    with pytest.raises(ValueError, match="from_the_future"):
        extras_from_json('{"from_the_future": 1}')
    first = Image.new("RGBA", (5, 3), (9, 8, 7, 6))
    first.info["parameters"] = "a cat «ü»\nSteps: 20, Seed: 1"
    images = (first, *(Image.new("RGB", (2 + i, 2), (i, i, i)) for i in range(11)))  # index 10 after 9
    spec = ExtrasSpec(options, images, source="ui")
    store = JobStore(tmp_path / "jobs.sqlite3")
    record = JobRecord("e" * 32, JobStatus.QUEUED, spec, 1.0)
    assert store.insert(record, extras_input_pngs(spec.images))
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # a queued extras job survives a restart
    got = reopened.get(record.id)
    assert got is not None
    assert isinstance(got.spec, ExtrasSpec)
    assert (got.spec.kind, got.spec.source, got.spec.options) == (JobKind.EXTRAS, "ui", options)
    assert [(i.mode, i.size, i.tobytes()) for i in got.spec.images] == [
        (i.mode, i.size, i.tobytes()) for i in images
    ]
    assert got.spec.images[0].info["parameters"] == first.info["parameters"]
    assert "parameters" not in got.spec.images[1].info
    claimed = reopened.claim_next(2.0)
    assert claimed is not None
    assert claimed.id == record.id
    with pytest.raises(FieldError, match="ExtrasSpec"):
        JobSpec(JobKind.EXTRAS, GenerationParams(prompt="x").resolved())
