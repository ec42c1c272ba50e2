"""The hires fix with its own checkpoint (A1111 ``hr_checkpoint_name``) in the pipeline and over real HTTP
(``/sdapi/v1`` and ``/api/v1``), and img2img colour correction through the A1111 options."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio import infotext
from latentstudio.core import FieldError
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.loader import Components
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import GenerationResult, HiresModel, ModelIdentity, StepInfo, run
from tests.conftest import MakeTiny
from tests.lora_files import LoraBuilder, weights_digest
from tests.params_support import flat_params, flat_replace
from tests.sdapi_support import (
    IMG2IMG_BASE,
    TXT2IMG_BASE,
    build_root,
    decode,
    generate,
    png_b64,
    refused_field,
)
from tests.serving import Served, serve, wait_job

IDENTITY = ModelIdentity("first", "0123456789")


def _load(make_tiny: MakeTiny, family: Family, seed: int) -> Components:
    return loader.load_checkpoint(
        make_tiny(family, seed=seed).path, device=torch.device("cpu"), dtype=torch.float32
    )


@pytest.fixture(scope="module")
def first(make_tiny: MakeTiny) -> Components:
    return _load(make_tiny, Family.SD1, 5)


@pytest.fixture(scope="module")
def second(make_tiny: MakeTiny) -> HiresModel:
    return HiresModel(_load(make_tiny, Family.SD1, 6), ModelIdentity("second", "abcdef0123"))


def _params(**kwargs: object) -> GenerationParams:
    base: dict[str, object] = {"prompt": "a red circle", "negative_prompt": "blurry", "steps": 3, "seed": 11,
                               "width": 64, "height": 64, "sampler": "Euler", "enable_hr": True,
                               "hr_scale": 1.5, "denoising_strength": 0.6}  # fmt: skip
    return flat_params(**{**base, **kwargs}).resolved()


def _pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_second_pass_runs_on_the_hires_checkpoint(
    first: Components, second: HiresModel, upscaler: str
) -> None:
    steps: dict[str, list[torch.Tensor]] = {"same": [], "other": []}

    def record(key: str) -> Any:
        return lambda step: steps[key].append(step.latent.clone())

    params = _params(hr_upscaler=upscaler)
    same = run(params, first, identity=IDENTITY, on_step=record("same"))
    named = flat_replace(params, hr_checkpoint="second")
    other = run(named, first, identity=IDENTITY, hires_model=second, on_step=record("other"))
    assert other.images[0].size == same.images[0].size == (96, 96)
    assert not np.array_equal(_pixels(other), _pixels(same))
    # the first pass is the first checkpoint's in both; the second pass differs from its first step on
    for a, b in zip(steps["same"][:3], steps["other"][:3], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(steps["same"][3], steps["other"][3])
    parsed = infotext.parse(other.infotexts[0])
    assert parsed["Hires checkpoint"] == "second [abcdef0123]"
    line = other.infotexts[0].splitlines()[-1]
    assert line.index("Hires checkpoint") < line.index("Hires upscale")  # A1111's order
    assert infotext.parse(same.infotexts[0])["Hires checkpoint"] == "Use same checkpoint"  # parse default


def test_the_same_weights_as_hires_checkpoint_give_the_same_image(
    first: Components, make_tiny: MakeTiny
) -> None:
    """A separate load of the first checkpoint's file: every part of the second pass comes from it, and
    since the weights are the same so are the pixels."""
    copy = HiresModel(_load(make_tiny, Family.SD1, 5), ModelIdentity("first", "0123456789"))
    assert copy.components is not first
    params = _params(hr_upscaler="Lanczos", batch_size=2)
    plain = run(params, first, identity=IDENTITY)
    again = run(flat_replace(params, hr_checkpoint="first"), first, identity=IDENTITY, hires_model=copy)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain.images, again.images, strict=True)
    )
    assert "Hires checkpoint: first [0123456789]" in again.infotexts[0]


def test_hires_checkpoint_of_another_family_or_missing_is_refused(
    first: Components, second: HiresModel, make_tiny: MakeTiny
) -> None:
    sd2 = HiresModel(_load(make_tiny, Family.SD2, 0), ModelIdentity("sd2"))
    with pytest.raises(FieldError, match=r"SD2\.x but the first pass runs SD1\.x") as info:
        run(_params(hr_checkpoint="sd2"), first, identity=IDENTITY, hires_model=sd2)
    assert info.value.field == "hires.checkpoint"
    with pytest.raises(FieldError, match="was not loaded") as info:
        run(_params(hr_checkpoint="second"), first, identity=IDENTITY)
    assert info.value.field == "hires.checkpoint"
    with pytest.raises(ValueError, match="only for a hires-fix job"):
        run(_params(), first, identity=IDENTITY, hires_model=second)
    with pytest.raises(FieldError) as info:
        _params(hr_checkpoint=" ")
    assert info.value.field == "hires.checkpoint"


def test_loras_follow_the_pass_onto_the_hires_checkpoint(
    first: Components, second: HiresModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from latentstudio.models.hashes import HashCache
    from latentstudio.models.lora import LoraLibrary, LoraNetworks

    folder = tmp_path_factory.mktemp("loras") / "Lora"
    builder = LoraBuilder(first, seed=3)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    builder.lora("lora_unet_" + path.replace(".", "_"), "unet", path, alpha=8.0)
    builder.save(folder / "detail.safetensors", {})
    networks = LoraNetworks(LoraLibrary([folder], HashCache(folder.parent / "hashes.json")))
    digests = weights_digest(first), weights_digest(second.components)
    bases = [c.unet.get_submodule(path).weight.detach().clone() for c in (first, second.components)]
    patched: list[tuple[bool, bool]] = []

    def on_step(_step: StepInfo) -> None:
        weights = [c.unet.get_submodule(path).weight for c in (first, second.components)]
        patched.append(tuple(not torch.equal(w, b) for w, b in zip(weights, bases, strict=True)))  # type: ignore[arg-type]

    params = _params(prompt="a red circle <lora:detail:1>", hr_checkpoint="second", n_iter=2)
    result = run(params, first, identity=IDENTITY, hires_model=second, loras=networks, on_step=on_step)
    # per batch: 3 first-pass steps with the first model patched, then 3 hires steps with the second (A1111's
    # hires pass runs its steps exactly, whatever the denoising strength)
    assert patched == ([(True, False)] * 3 + [(False, True)] * 3) * 2
    assert (weights_digest(first), weights_digest(second.components)) == digests  # bit for bit back
    assert "Lora hashes: " in result.infotexts[0]
    assert result.warnings == []


# -- over HTTP -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Checkpoints ``other`` (the default), ``tiny`` (SD1, other weights) and ``zsd2`` (SD2)."""
    settings = build_root(make_tiny, tmp_path_factory.mktemp("hires-checkpoint"))
    shutil.copyfile(make_tiny(Family.SD2).path, settings.models_dir / "Stable-diffusion" / "zsd2.safetensors")
    with serve(settings) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c


HIRES = {**TXT2IMG_BASE, "enable_hr": True, "hr_scale": 1.5, "seed": 7, "sampler_index": "Euler",
         "denoising_strength": 0.6}  # fmt: skip


def test_sdapi_hires_checkpoint(client: httpx.Client) -> None:
    same = generate(client, "txt2img", HIRES)
    labelled = generate(client, "txt2img", {**HIRES, "hr_checkpoint_name": "Use same checkpoint"})
    other = generate(client, "txt2img", {**HIRES, "hr_checkpoint_name": "tiny"})
    pixels = [np.asarray(decode(body["images"][0])) for body in (same, labelled, other)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])
    texts = [body["info"]["infotexts"][0] for body in (same, labelled, other)]
    assert "Hires checkpoint" not in texts[0] + texts[1]
    assert re.fullmatch(r"tiny \[[0-9a-f]{10}\]", infotext.parse(texts[2])["Hires checkpoint"])
    assert other["info"]["sd_model_name"] == "other"  # the first pass's model names the image


@pytest.mark.parametrize(("name", "message"), [("nope", "unknown checkpoint 'nope'"), ("zsd2", "SD2.x")])
def test_sdapi_refuses_unknown_or_other_family_hires_checkpoints(
    client: httpx.Client, name: str, message: str
) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**HIRES, "hr_checkpoint_name": name})
    assert refused_field(response) == "hr_checkpoint_name"
    assert message in response.json()["detail"][0]["msg"]


def test_native_api_hires_checkpoint(client: httpx.Client) -> None:
    job = {"prompt": "x", "seed": 3, "steps": 2, "width": 64, "height": 64, "sampler": "Euler"}
    created = client.post("/api/v1/jobs", json={**job, "hires": {"scale": 1.5, "checkpoint": "tiny"}})
    assert created.status_code == 202, created.text
    view = wait_job(client, created.json()["id"])
    assert view["status"] == "done", view
    assert "Hires checkpoint: tiny [" in view["images"][0]["infotext"]  # type: ignore[index]
    for name in ("nope", "zsd2"):
        bad = client.post("/api/v1/jobs", json={**job, "hires": {"checkpoint": name}})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "hires", "checkpoint"]


def test_sdapi_color_correction_option(client: httpx.Client) -> None:
    init = Image.new("RGB", (64, 64), (230, 120, 30))
    init.paste((120, 60, 10), (0, 0, 32, 64))
    payload = {**IMG2IMG_BASE, "init_images": [png_b64(init)], "seed": 5, "denoising_strength": 0.9}
    plain = generate(client, "img2img", payload)
    override = {"override_settings": {"img2img_color_correction": True}}
    corrected = generate(client, "img2img", {**payload, **override})
    pixels = [np.asarray(decode(body["images"][0])).astype(float) for body in (plain, corrected)]
    target = np.asarray(init).astype(float).mean(axis=(0, 1))
    error = [np.abs(p.mean(axis=(0, 1)) - target)[2] for p in pixels]  # blue: the init image has little
    assert error[1] < error[0] / 2
    assert client.post("/sdapi/v1/options", json={"img2img_color_correction": True}).status_code == 200
    try:
        stored = generate(client, "img2img", payload)
        assert np.array_equal(np.asarray(decode(stored["images"][0])).astype(float), pixels[1])
        generate(client, "txt2img", TXT2IMG_BASE)  # an img2img option: txt2img runs as before
    finally:
        assert client.post("/sdapi/v1/options", json={"img2img_color_correction": False}).status_code == 200
