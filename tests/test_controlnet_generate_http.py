"""Guided generation over real HTTP as sd-webui-controlnet's API clients call it:
``alwayson_scripts.controlnet`` units on ``/sdapi/v1/txt2img`` and ``img2img`` (effect, weight 0, disabled
units, two units, the infotext), the native ``/api/v1/jobs`` ``control`` list, and bad units refused with
a 422 naming the unit and field while the server stays up."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio.control import annotators, hed, preprocessors, synthetic
from latentstudio.models.families import Family
from tests.conftest import MakeTiny
from tests.sdapi_support import build_root, decode, generate, png_b64, refused_field
from tests.serving import Served, serve, wait_job
from tests.test_control_hed import random_hed_state

ARGS = "alwayson_scripts.controlnet.args"


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("controlnet-generate")
    settings = build_root(make_tiny, root)
    folder = settings.models_dir / "ControlNet"
    folder.mkdir()
    synthetic.tiny_controlnet_file(folder / "control_tiny_canny.safetensors", Family.SD1, seed=2)
    synthetic.tiny_adapter_file(folder / "t2iadapter_tiny_sd15.pth.safetensors", seed=3)
    synthetic.tiny_controlnet_file(folder / "control_tiny_sd21.safetensors", Family.SD2, seed=4)
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    shutil.copyfile(folder / "control_tiny_canny.safetensors", folder / "copy_canny.pth.bak")  # not listed
    with serve(settings) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as c:
        yield c


def _picture() -> Image.Image:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[12:52, 12:52] = (240, 240, 240)
    pixels[24:40, 20:44] = (30, 90, 200)
    return Image.fromarray(pixels)


def _payload(*units: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": "a box", "negative_prompt": "blurry", "steps": 3, "seed": 7, "width": 64, "height": 64,
        "sampler_name": "Euler", "cfg_scale": 7,
    }  # fmt: skip
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": list(units)}}
    return {**body, **changes}


def _unit(**changes: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "canny", "model": "control_tiny_canny", "weight": 2.0,
            "image": png_b64(_picture()), **changes}  # fmt: skip


def _pixels(body: dict[str, Any], index: int = 0) -> np.ndarray:
    return np.asarray(decode(body["images"][index]).convert("RGB")).astype(np.int16)


def test_model_list_names_the_files(client: httpx.Client) -> None:
    names = client.get("/controlnet/model_list").json()["model_list"]
    stems = [name.rsplit(" [", 1)[0] for name in names]
    assert {"control_tiny_canny", "t2iadapter_tiny_sd15.pth", "control_tiny_sd21", "broken"} == set(stems)
    assert all(name.endswith("]") and len(name.rsplit("[", 1)[1]) == 9 for name in names)


def test_units_guide_txt2img(client: httpx.Client) -> None:
    plain = generate(client, "txt2img", _payload())
    guided = generate(client, "txt2img", _payload(_unit()))
    assert np.abs(_pixels(guided) - _pixels(plain)).mean() > 0.5
    text = guided["info"]["infotexts"][0]
    expected = (
        'ControlNet 0: "Module: canny, Model: control_tiny_canny, Weight: 2.0, Resize Mode: Crop and Resize, '
        "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
        'Pixel Perfect: False, Control Mode: Balanced"'
    )
    assert expected in text
    assert guided["info"]["extra_generation_params"]["ControlNet 0"].startswith("Module: canny, ")
    # weight 0 and a disabled unit leave the picture bit-identical; the latter writes no ControlNet entry
    zero = generate(client, "txt2img", _payload(_unit(weight=0)))
    off = generate(client, "txt2img", _payload(_unit(enabled=False)))
    assert (_pixels(zero) == _pixels(plain)).all()
    assert (_pixels(off) == _pixels(plain)).all()
    assert "ControlNet 0" not in off["info"]["infotexts"][0]


def test_two_units_and_the_hash_title(client: httpx.Client) -> None:
    names = client.get("/controlnet/model_list").json()["model_list"]
    adapter = next(n for n in names if n.startswith("t2iadapter_tiny"))
    one = generate(client, "txt2img", _payload(_unit()))
    two = generate(client, "txt2img", _payload(_unit(), _unit(model=adapter, module="none", weight=1.5)))
    assert np.abs(_pixels(two) - _pixels(one)).mean() > 0.2
    text = two["info"]["infotexts"][0]
    assert f'ControlNet 1: "Module: none, Model: {adapter}, Weight: 1.5' in text


def test_img2img_unit_takes_the_init_image(client: httpx.Client) -> None:
    init = png_b64(_picture())
    base = {"init_images": [init], "denoising_strength": 0.8}
    plain = generate(client, "img2img", _payload(**base))
    guided = generate(client, "img2img", _payload(_unit(image=None), **base))
    assert np.abs(_pixels(guided) - _pixels(plain)).mean() > 0.5


def test_inpainting_only_masked_takes_units(client: httpx.Client) -> None:
    """The A1111 API inpaints "only masked" by default: the unit's image is cropped as the picture is."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (30, 8, 50, 30))
    base = {"init_images": [png_b64(_picture())], "mask": png_b64(mask), "denoising_strength": 0.7}
    body = generate(client, "img2img", _payload(_unit(module="invert", image=None), **base))
    assert [decode(image).size for image in body["images"]] == [(64, 64), (64, 64)]
    assert "Inpaint area: Only masked" in body["info"]["infotexts"][0]
    # the map is the cropped region of the init image, inverted and scaled up: not the whole picture's
    whole = 255 - np.asarray(_picture())
    assert not np.array_equal(np.asarray(decode(body["images"][1]).convert("RGB")), whole)


def test_hed_runs_from_the_file_the_user_placed(client: httpx.Client, server: Served) -> None:
    """softedge_hed needs ControlNetHED.pth: without it a 422 naming the file and the folders; with it in
    <models>/ControlNetPreprocessor/hed/ it is listed, detects, and guides (its map returned)."""
    unit = _unit(module="softedge_hed", processor_res=64)
    refused = client.post("/sdapi/v1/txt2img", json=_payload(unit))
    assert refused_field(refused) == f"{ARGS}.0.module"
    assert "ControlNetHED.pth" in refused.text
    assert "hed" not in client.get("/controlnet/module_list").json()["module_list"]
    models = server.app.state.services.settings.models_dir
    path = models / annotators.OWN_FOLDER / hed.FILE
    path.parent.mkdir(parents=True)
    torch.save(random_hed_state(), path)
    try:
        listing = client.get("/controlnet/module_list", params={"alias_names": True}).json()
        assert "softedge_hed" in listing["module_list"]
        assert "softedge_hed" not in listing["unavailable"]
        picture = np.asarray(_picture())
        expected = preprocessors.detect("softedge_hed", picture, 64, roots=annotators.roots(models))
        sent = {"controlnet_module": "softedge_hed", "controlnet_input_images": [png_b64(_picture())],
                "controlnet_processor_res": 64}  # fmt: skip
        detected = client.post("/controlnet/detect", json=sent)
        assert detected.status_code == 200, detected.text
        assert np.array_equal(np.asarray(decode(detected.json()["images"][0]).convert("RGB")), expected)
        body = generate(client, "txt2img", _payload(unit))
        assert np.array_equal(np.asarray(decode(body["images"][1]).convert("RGB")), expected)
        assert 'ControlNet 0: "Module: softedge_hed, ' in body["info"]["infotexts"][0]
    finally:
        path.unlink()


def test_native_jobs_take_units(client: httpx.Client) -> None:
    unit = {"module": "canny", "model": "control_tiny_canny", "image": png_b64(_picture())}
    body = {"kind": "txt2img", "prompt": "a box", "steps": 2, "width": 64, "height": 64, "control": [unit]}
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"])
    assert job["status"] == "done", job
    bad = client.post("/api/v1/jobs", json={**body, "control": [unit, {**unit, "model": "nope"}]})
    assert refused_field(bad) == "control.1.model"


def test_detected_maps_follow_the_images_as_the_extension_appends_them(client: httpx.Client) -> None:
    """Each unit's map fitted to the picture, after the images and not among the infotexts: here canny on a
    picture of the output's size at its own resolution, so the map is OpenCV's Canny itself."""
    import cv2

    picture = _picture()
    edges = cv2.Canny(np.asarray(picture), 80, 160)
    unit = _unit(processor_res=64, threshold_a=80, threshold_b=160)
    body = generate(client, "txt2img", _payload(unit, _unit(module="invert", weight=0.5), batch_size=2))
    assert len(body["images"]) == 4  # two pictures, then unit 0's map, then unit 1's
    assert len(body["info"]["infotexts"]) == 2
    canny = np.asarray(decode(body["images"][2]).convert("RGB"))
    assert np.array_equal(canny, np.repeat(edges[:, :, None], 3, axis=2))
    inverted = np.asarray(decode(body["images"][3]).convert("RGB"))
    assert np.array_equal(inverted, 255 - np.asarray(picture))
    assert "parameters" not in decode(body["images"][2]).info  # a map carries no infotext
    # save_detected_map false: the pictures alone
    quiet = generate(client, "txt2img", _payload({**unit, "save_detected_map": False}, batch_size=2))
    assert len(quiet["images"]) == 2


def test_hires_fix_returns_the_map_of_each_pass(client: httpx.Client) -> None:
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.5,
             "hr_second_pass_steps": 2}  # fmt: skip
    body = generate(client, "txt2img", _payload(_unit(module="invert"), **hires))
    sizes = [decode(image).size for image in body["images"]]
    assert sizes == [(96, 96), (96, 96), (64, 64)]  # the picture, the hires pass's map, the first pass's
    assert len(body["info"]["infotexts"]) == 1


def test_native_jobs_mark_the_detected_maps(client: httpx.Client) -> None:
    unit = {"module": "invert", "model": "control_tiny_canny", "image": png_b64(_picture())}
    body = {"kind": "txt2img", "prompt": "a box", "steps": 2, "width": 64, "height": 64, "control": [unit]}
    job = wait_job(client, client.post("/api/v1/jobs", json=body).json()["id"])
    assert [image["detected_map"] for image in job["images"]] == [False, True]
    assert len(job["infotexts"]) == 1
    assert job["images"][1]["seed"] == -1
    assert client.get(job["images"][1]["url"]).status_code == 200


@pytest.mark.parametrize(
    ("units", "field", "words"),
    [
        ([_unit(model="nope")], f"{ARGS}.0.model", "nope"),
        ([_unit(), _unit(model="control_tiny_sd21")], f"{ARGS}.1.model", "sd2"),
        ([_unit(model="broken")], f"{ARGS}.0.model", "broken.safetensors"),
        ([_unit(module="depth_midas")], f"{ARGS}.0.module", "annotator/downloads/midas/"),
        ([_unit(module="tile_colorfix", threshold_a=2)], f"{ARGS}.0.threshold_a", "Variation"),
        ([_unit(weight=3)], f"{ARGS}.0.weight", "2"),
        ([_unit(threshold_a=0)], f"{ARGS}.0.threshold_a", "Low Threshold"),
        ([_unit(guidance_start=0.8, guidance_end=0.2)], f"{ARGS}.0.guidance_start", "guidance_end"),
        ([_unit(image="not base64!")], f"{ARGS}.0.image", "base64"),
        ([_unit(image=None)], f"{ARGS}.0.image", "no input image"),
        ([_unit(), _unit(), _unit(), _unit()], f"{ARGS}", "at most 3"),
        ([{"enabled": True, "module": "canny", "wat": 1}], f"{ARGS}.0.wat", ""),
    ],
)
def test_bad_units_are_422_naming_unit_and_field(
    client: httpx.Client, units: list[dict[str, Any]], field: str, words: str
) -> None:
    response = client.post("/sdapi/v1/txt2img", json=_payload(*units))
    assert refused_field(response) == field, response.text[:500]
    assert words in response.text
    assert client.get("/controlnet/version").status_code == 200
