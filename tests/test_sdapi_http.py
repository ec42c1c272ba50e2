"""``/sdapi/v1`` over real HTTP with tiny checkpoints: A1111's own test payloads, every endpoint, progress,
interrupt, concurrency, options and overrides."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from latentstudio import infotext
from tests.conftest import MakeTiny
from tests.sdapi_support import (
    EXTRAS_BASE,
    IMG2IMG_BASE,
    TXT2IMG_BASE,
    build_root,
    decode,
    generate,
    init_image_b64,
    mask_b64,
    png_b64,
    refused_field,
)
from tests.serving import Served, serve, wait_until

SLOW = {**TXT2IMG_BASE, "steps": 150, "sampler_index": "Euler"}


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(build_root(make_tiny, tmp_path_factory.mktemp("sdapi"))) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c
    server.jobs.interrupt()


def _check_images(body: dict[str, Any], count: int, size: tuple[int, int]) -> None:
    info = body["info"]
    assert len(body["images"]) == count == len(info["infotexts"])
    for b64, text, seed in zip(body["images"], info["infotexts"], info["all_seeds"], strict=False):
        image = decode(b64)
        assert image.size == size
        assert image.info["parameters"] == text
        assert infotext.parse(text)["Seed"] == str(seed)


# -- A1111's test suite (reference §9) -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "count", "size"),
    [
        ({}, 1, (64, 64)),
        ({"negative_prompt": "example negative prompt"}, 1, (64, 64)),
        (
            {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
            1,
            (64, 64),
        ),
        ({"height": 128}, 1, (64, 128)),
        ({"sampler_index": "PLMS"}, 1, (64, 64)),
        ({"sampler_index": "DDIM"}, 1, (64, 64)),
        ({"sampler_index": "UniPC"}, 1, (64, 64)),
        ({"n_iter": 2}, 2, (64, 64)),
        ({"batch_size": 2}, 2, (64, 64)),
    ],
)
def test_a1111_txt2img_payloads(
    client: httpx.Client, change: dict[str, Any], count: int, size: tuple[int, int]
) -> None:
    body = generate(client, "txt2img", {**TXT2IMG_BASE, **change})
    _check_images(body, count, size)
    info = body["info"]
    assert info["all_seeds"] == [info["seed"] + i for i in range(count)]
    assert body["parameters"]["seed"] == -1  # A1111 echoes the request
    assert info["sampler_name"] == change.get("sampler_index", "Euler a")
    assert info["sd_model_name"] == "other"  # the first checkpoint in natural order
    assert len(info["sd_model_hash"]) == 10


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"enable_hr": True, "hr_checkpoint_name": "nope"}, "hr_checkpoint_name"),
        ({"enable_hr": True, "hr_sampler_name": "Euler b"}, "hr_sampler_name"),
        ({"restore_faces": True}, "restore_faces"),
    ],
)
def test_a1111_txt2img_payloads_we_refuse(client: httpx.Client, change: dict[str, Any], field: str) -> None:
    assert refused_field(client.post("/sdapi/v1/txt2img", json={**TXT2IMG_BASE, **change})) == field


def test_a1111_txt2img_with_hires_fix(client: httpx.Client) -> None:
    body = generate(
        client, "txt2img", {**TXT2IMG_BASE, "enable_hr": True}
    )  # test_txt2img_with_hrfix_performed
    _check_images(body, 1, (128, 128))
    parsed = infotext.parse(body["info"]["infotexts"][0])
    assert (parsed["Hires upscale"], parsed["Hires upscaler"], parsed["Denoising strength"]) == (
        "2.0",
        "Latent",
        "0.0",
    )
    changed = {
        "enable_hr": True,
        "hr_resize_x": 96,
        "hr_upscaler": "Lanczos",
        "hr_sampler_name": "Euler",
        "denoising_strength": 0.5,
    }
    body = generate(client, "txt2img", {**TXT2IMG_BASE, **changed})
    _check_images(body, 1, (96, 96))
    parsed = infotext.parse(body["info"]["infotexts"][0])
    assert (parsed["Hires sampler"], parsed["Hires upscaler"], parsed["Hires resize-1"]) == (
        "Euler",
        "Lanczos",
        "96",
    )


def test_a1111_img2img_payloads(client: httpx.Client) -> None:
    payload = {**IMG2IMG_BASE, "init_images": [init_image_b64()]}
    body = generate(client, "img2img", payload)
    _check_images(body, 1, (64, 64))
    assert body["info"]["denoising_strength"] == 0.75
    assert "Denoising strength: 0.75" in body["info"]["infotexts"][0]
    assert body["parameters"]["init_images"] is None
    masked = {**payload, "mask": mask_b64()}  # test_inpainting_masked_performed
    for change in ({}, {"inpainting_mask_invert": True}):  # ... and with an inverted mask
        body = generate(client, "img2img", {**masked, **change})
        _check_images(body, 1, (64, 64))
        parsed = infotext.parse(body["info"]["infotexts"][0])
        assert (parsed["Mask blur"], parsed["Masked content"]) == ("4", "fill")
        assert parsed["Mask mode"] == ("Inpaint not masked" if change else "Inpaint masked")
    uneven = {**masked, "mask_blur": None, "mask_blur_x": 2}  # A1111 then writes no "Mask blur"
    assert "Mask blur" not in infotext.parse(generate(client, "img2img", uneven)["info"]["infotexts"][0])
    # test_img2img_sd_upscale_performed: tests/test_scripts.py
    missing = client.post("/sdapi/v1/img2img", json={**IMG2IMG_BASE, "init_images": []})
    assert missing.status_code == 404


def test_a1111_extras_payloads(client: httpx.Client) -> None:
    image = init_image_b64()
    response = client.post("/sdapi/v1/extra-single-image", json={**EXTRAS_BASE, "image": image})
    assert response.status_code == 200
    body = response.json()
    assert decode(body["image"]).size == (128, 128)
    assert "Postprocess upscaler: Lanczos" in body["html_info"]
    assert client.post("/sdapi/v1/extra-single-image", json={"image": image}).status_code == 200
    # A1111's test_interrogate_performed posts {image, model} to extras: accepted, `model` ignored
    interrogate = client.post("/sdapi/v1/extra-single-image", json={"image": image, "model": "clip"})
    assert interrogate.status_code == 200
    assert decode(interrogate.json()["image"]).size == decode(image.split(",", 1)[-1]).size
    other = client.post("/sdapi/v1/extra-single-image", json={"image": image, "modell": "clip"})
    assert refused_field(other) == "modell"
    batch = {**EXTRAS_BASE, "imageList": [{"data": image, "name": "a"}, {"data": image, "name": "b"}]}
    images = client.post("/sdapi/v1/extra-batch-images", json=batch).json()["images"]
    assert [decode(i).size for i in images] == [(128, 128), (128, 128)]


def test_a1111_options_write(client: httpx.Client) -> None:
    before = client.get("/sdapi/v1/options").json()["send_seed"]
    assert client.post("/sdapi/v1/options", json={"send_seed": not before}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["send_seed"] is (not before)
    assert client.post("/sdapi/v1/options", json={"send_seed": before}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers",
        "realesrgan-models", "prompt-styles", "embeddings", "schedulers", "latent-upscale-modes", "sd-vae",
        "loras", "memory", "scripts", "script-info", "extensions", "options", "progress",
    ],
)  # fmt: skip
def test_get_endpoints_answer(client: httpx.Client, path: str) -> None:
    assert client.get(f"/sdapi/v1/{path}").status_code == 200


# -- shapes of the listings ------------------------------------------------------------------------------
def test_listing_shapes(client: httpx.Client) -> None:
    get = lambda path: client.get(f"/sdapi/v1/{path}").json()  # noqa: E731
    samplers = get("samplers")
    assert samplers[0] == {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}}
    assert {"name", "aliases", "options"} == set(samplers[6])
    assert samplers[6]["options"]["uses_ensd"] == "True"
    schedulers = get("schedulers")
    assert schedulers[2] == {
        "name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False
    }  # fmt: skip
    assert [u["name"] for u in get("upscalers")] == ["None", "Lanczos", "Nearest"]
    assert len(get("latent-upscale-modes")) == 6
    models = get("sd-models")
    assert [m["model_name"] for m in models] == ["other", "tiny"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    (lora,) = get("loras")
    assert (lora["name"], lora["alias"], lora["metadata"]["ss_tag_frequency"]) == (
        "detail", "detail_tweaker", {"a": {"b": 1}}
    )  # fmt: skip
    assert get("prompt-styles")[0] == {
        "name": "framed",
        "prompt": "masterpiece, {prompt}",
        "negative_prompt": "lowres",
    }
    assert get("embeddings") == {"loaded": {}, "skipped": {}}
    assert "x/y/z plot" in get("scripts")["txt2img"]  # the scripts themselves: tests/test_scripts.py
    assert set(get("memory")) == {"ram", "cuda"}
    assert get("cmd-flags")["api"] is True
    options = get("options")
    assert options["sd_model_checkpoint"].startswith("other.safetensors")
    assert options["CLIP_stop_at_last_layers"] == 1
    assert options["samples_format"] == "png"
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-embeddings", "refresh-loras"):
        assert client.post(f"/sdapi/v1/{path}").status_code == 200


# -- generation details ----------------------------------------------------------------------------------
def test_info_keys_styles_overrides_and_png_info(client: httpx.Client) -> None:
    payload = {
        **TXT2IMG_BASE, "prompt": "a cat", "seed": 7, "styles": ["framed"], "sampler_name": "DPM++ 2M Karras",
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "tiny"},
    }  # fmt: skip
    body = generate(client, "txt2img", payload)
    info = body["info"]
    assert set(info) >= {
        "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
        "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
        "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
        "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
        "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
        "clip_skip", "is_using_inpainting_conditioning", "version",
    }  # fmt: skip
    assert (info["prompt"], info["negative_prompt"], info["styles"]) == (
        "masterpiece, a cat",
        "lowres",
        ["framed"],
    )
    assert (info["seed"], info["clip_skip"], info["sd_model_name"], info["sampler_name"]) == (
        7,
        2,
        "tiny",
        "DPM++ 2M",
    )
    assert info["extra_generation_params"]["Schedule type"] == "Karras"
    text = info["infotexts"][0]
    assert "Clip skip: 2" in text
    assert "Model: tiny" in text
    read = client.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()
    assert read["info"] == text
    assert (read["parameters"]["Seed"], read["parameters"]["Clip skip"]) == ("7", "2")
    # overrides are restored afterwards: the next job uses the default model and clip skip again
    again = generate(client, "txt2img", {**TXT2IMG_BASE, "seed": 7})["info"]
    assert (again["sd_model_name"], again["clip_skip"]) == ("other", 1)


def test_pasted_infotext_reproduces_the_image(client: httpx.Client) -> None:
    first = generate(client, "txt2img", {**TXT2IMG_BASE, "sampler_index": "Euler", "seed": 99})
    text = first["info"]["infotexts"][0]
    second = generate(client, "txt2img", {"infotext": text})
    assert second["info"]["infotexts"][0] == text
    assert decode(second["images"][0]).tobytes() == decode(first["images"][0]).tobytes()


def test_send_images_false_and_save_images_grid(client: httpx.Client) -> None:
    body = generate(client, "txt2img", {**TXT2IMG_BASE, "send_images": False})
    assert body["images"] == []
    assert len(body["info"]["infotexts"]) == 1
    body = generate(client, "txt2img", {**TXT2IMG_BASE, "batch_size": 2, "save_images": True, "seed": 5})
    assert [decode(i).size for i in body["images"]] == [(128, 64), (64, 64), (64, 64)]
    assert body["info"]["index_of_first_image"] == 1
    assert len(body["info"]["infotexts"]) == 3


def test_options_switch_the_model_and_refuse_unknown_ones(client: httpx.Client) -> None:
    bad = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert refused_field(bad) == "sd_model_checkpoint"
    assert refused_field(client.post("/sdapi/v1/options", json={"tiling_axes": "z"})) == "tiling_axes"
    options = client.get("/sdapi/v1/options").json()
    assert client.post("/sdapi/v1/options", json=options).status_code == 200  # a read-back round-trips
    try:
        assert (
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny.safetensors"}).status_code
            == 200
        )
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny.safetensors")
        assert generate(client, "txt2img", TXT2IMG_BASE)["info"]["sd_model_name"] == "tiny"
        kept = {
            "override_settings": {"CLIP_stop_at_last_layers": 3},
            "override_settings_restore_afterwards": False,
        }
        generate(client, "txt2img", {**TXT2IMG_BASE, **kept})
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 3
    finally:
        reset = {"sd_model_checkpoint": "other", "CLIP_stop_at_last_layers": 1}
        assert client.post("/sdapi/v1/options", json=reset).status_code == 200


def test_unload_and_reload_then_generate(client: httpx.Client) -> None:
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    generate(client, "txt2img", TXT2IMG_BASE)


# -- progress, interrupt, skip, concurrency --------------------------------------------------------------
def _in_background(client: httpx.Client, payload: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def call() -> None:
        result["response"] = client.post("/sdapi/v1/txt2img", json=payload)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


def test_progress_rises_and_interrupt_keeps_the_image(client: httpx.Client) -> None:
    thread, result = _in_background(client, {**SLOW, "seed": 3})
    seen: list[float] = []

    def risen() -> bool:
        body = client.get("/sdapi/v1/progress").json()
        if body["state"]["job_count"]:
            seen.append(body["progress"])
        return len(seen) >= 2 and seen[-1] > seen[0] > 0 and body["current_image"] is not None

    wait_until(risen, 120, 0.05)
    body = client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
    assert body["current_image"] is None
    assert 0 < body["state"]["sampling_step"] < 150
    assert body["state"]["sampling_steps"] == 150
    assert body["eta_relative"] >= 0
    assert client.post("/sdapi/v1/interrupt").json() == {}
    thread.join(120)
    response = result["response"]
    assert response.status_code == 200
    assert len(response.json()["images"]) == 1  # interrupted: the last latent is decoded, as A1111
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0, 30)


def test_skip_ends_only_the_current_batch(client: httpx.Client) -> None:
    thread, result = _in_background(client, {**SLOW, "n_iter": 2, "steps": 40})
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] > 0, 120)
    assert client.post("/sdapi/v1/skip").status_code == 200
    thread.join(300)
    assert len(result["response"].json()["images"]) == 2


def test_two_concurrent_calls_both_succeed_with_their_seeds(client: httpx.Client) -> None:
    calls = [_in_background(client, {**TXT2IMG_BASE, "seed": seed, "batch_size": 2}) for seed in (11, 22)]
    for thread, _ in calls:
        thread.join(300)
    for (_, result), seed in zip(calls, (11, 22), strict=True):
        response = result["response"]
        assert response.status_code == 200
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [seed, seed + 1]
        assert [infotext.parse(t)["Seed"] for t in info["infotexts"]] == [str(seed), str(seed + 1)]


def test_png_info_of_an_image_without_infotext(client: httpx.Client) -> None:
    body = client.post("/sdapi/v1/png-info", json={"image": png_b64(Image.new("RGB", (8, 8)))}).json()
    assert body["info"] == ""
    assert body["parameters"]["Prompt"] == ""
    assert client.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""
