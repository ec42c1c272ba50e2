"""The web UI's ControlNet units through its backend, without a browser: a UI unit makes the job the A1111
API makes for the same unit (same image, same infotext), refusals name the unit's field, the model list
follows the checkpoint's family, the preview equals ``/controlnet/detect``, and a pasted infotext gives
back each unit's settings."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from latentstudio.control import synthetic
from latentstudio.core import FieldError
from latentstudio.jobs import JobStatus
from latentstudio.models.families import Family
from latentstudio.server.ui_backend import SdapiBackend
from tests.conftest import MakeTiny
from tests.sdapi_support import build_root, decode, png_b64
from tests.serving import Served, serve

ARGS = "alwayson_scripts.controlnet.args"
FIELDS = {"prompt": "a box", "negative_prompt": "blurry", "steps": 3, "seed": 7, "width": 64, "height": 64,
          "sampler_name": "Euler", "cfg_scale": 7}  # fmt: skip


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ui-controlnet")
    settings = build_root(make_tiny, root)
    shutil.copyfile(
        make_tiny(Family.SD2).path, settings.models_dir / "Stable-diffusion" / "zz-sd2.safetensors"
    )
    folder = settings.models_dir / "ControlNet"
    folder.mkdir()
    synthetic.tiny_controlnet_file(folder / "control_tiny_canny.safetensors", Family.SD1, seed=2)
    synthetic.tiny_adapter_file(folder / "t2iadapter_tiny_sd15.safetensors", seed=3)
    synthetic.tiny_controlnet_file(folder / "control_tiny_sd21.safetensors", Family.SD2, seed=4)
    # a network whose output follows its control image (random small weights barely look at it)
    synthetic.tiny_controlnet_file(
        folder / "control_tiny_sharp.safetensors", Family.SD1, seed=5, hint_gain=100
    )
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with serve(settings) as served:
        yield served


@pytest.fixture
def backend(server: Served) -> SdapiBackend:
    return SdapiBackend(server.app.state.services)


def _picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.full((64, 64, 3), 20, np.uint8)
    x, y = rng.integers(4, 24, size=2)
    pixels[y : y + 36, x : x + 30] = rng.integers(120, 255, size=3)
    return Image.fromarray(pixels)


def _unit(**changes: Any) -> dict[str, Any]:
    return {"module": "canny", "model": "control_tiny_canny", "weight": 1.5, "threshold_a": 60,
            "threshold_b": 170, "processor_res": 64, "guidance_end": 0.8, **changes}  # fmt: skip


def _done(backend: SdapiBackend, job_id: str) -> Any:
    record = backend.jobs.wait(job_id, 120)
    assert record.status is JobStatus.DONE, record.error
    return record


def _ui_pixels(backend: SdapiBackend, job: Any) -> np.ndarray:
    return np.asarray(Image.open(backend.jobs.image_path(job.images[0].id)).convert("RGB")).astype(np.int16)


def test_a_ui_unit_makes_the_job_the_api_makes(backend: SdapiBackend, server: Served) -> None:
    picture = _picture(1)
    job = _done(backend, backend.submit("txt2img", FIELDS, controls=[None, (_unit(), picture)]).id)
    assert job.spec.source == "ui"
    (unit,) = job.spec.params.control
    assert (unit.module, unit.weight, unit.threshold_a, unit.guidance_end) == ("canny", 1.5, 60, 0.8)
    api_unit = {**_unit(), "enabled": True, "image": png_b64(picture)}
    body = {**FIELDS, "alwayson_scripts": {"controlnet": {"args": [None, api_unit]}}}
    with httpx.Client(base_url=server.base, timeout=120) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    api = response.json()
    api_pixels = np.asarray(decode(api["images"][0]).convert("RGB")).astype(np.int16)
    assert np.array_equal(_ui_pixels(backend, job), api_pixels)
    assert job.infotexts[0] == json.loads(api["info"])["infotexts"][0]
    # numbered among the enabled units, the model as the unit names it (the extension's infotext)
    assert 'ControlNet 0: "Module: canny, Model: control_tiny_canny, Weight: 1.5' in job.infotexts[0]
    # the same request without the unit draws another picture: the unit guided this one
    plain = _done(backend, backend.submit("txt2img", FIELDS, controls=[None, None]).id)
    assert np.abs(_ui_pixels(backend, plain) - api_pixels).max() > 8


def test_img2img_units_take_the_img2img_image_or_their_own(backend: SdapiBackend) -> None:
    fields = {**FIELDS, "denoising_strength": 0.6, "steps": 6}
    init, sharp = _picture(2), _unit(module="none", model="control_tiny_sharp", weight=2.0)
    runs = {
        name: _ui_pixels(backend, _done(backend, backend.submit("img2img", fields, init, None, controls).id))
        for name, controls in {
            "none": [],
            "init": [(sharp, None)],  # no image of its own: the img2img image
            "same": [(sharp, init)],
            "other": [(sharp, _picture(3))],
        }.items()
    }
    assert np.abs(runs["init"] - runs["none"]).mean() > 4  # the unit acts
    # bit-identical to the same image uploaded, and not to another one: the img2img image is the hint
    assert np.array_equal(runs["init"], runs["same"])
    assert np.abs(runs["other"] - runs["init"]).mean() > 0.1


@pytest.mark.parametrize(
    ("controls", "field", "words"),
    [
        ([(_unit(model="control_tiny_sd21"), "picture")], f"{ARGS}.0.model", ["sd2", "sd1"]),
        ([None, (_unit(weight=2.5), "picture")], f"{ARGS}.1.weight", ["2"]),
        ([(_unit(module="depth_midas"), "picture")], f"{ARGS}.0.module", ["annotator/downloads"]),
        ([(_unit(threshold_a=400), "picture")], f"{ARGS}.0.threshold_a", ["Low Threshold", "255"]),
        ([(_unit(model="nope"), "picture")], f"{ARGS}.0.model", ["nope"]),
        ([(_unit(model="broken"), "picture")], f"{ARGS}.0.model", ["broken.safetensors"]),
        ([(_unit(), None)], f"{ARGS}.0.image", ["image"]),  # txt2img has no img2img image to fall back on
        ([None] * 4, ARGS, ["at most 3"]),
    ],
)
def test_refusals_name_the_unit_and_field(
    backend: SdapiBackend, controls: list[Any], field: str, words: list[str]
) -> None:
    before = backend.jobs.count()
    units = [None if c is None else (c[0], _picture() if c[1] == "picture" else None) for c in controls]
    with pytest.raises(FieldError) as refused:
        backend.submit("txt2img", FIELDS, controls=units)
    assert refused.value.field == field
    assert all(word.lower() in refused.value.message.lower() for word in words), refused.value.message
    assert backend.jobs.count() == before


def test_the_model_list_follows_the_checkpoint_family(backend: SdapiBackend, server: Served) -> None:
    with httpx.Client(base_url=server.base, timeout=30) as client:
        titles = {t.split(" [")[0]: t for t in client.get("/controlnet/model_list").json()["model_list"]}
    sd1 = ["None", titles["control_tiny_canny"], titles["control_tiny_sharp"], titles["t2iadapter_tiny_sd15"]]
    assert sorted(backend.control_models(None)) == sorted(sd1)  # the current checkpoint: tiny (SD1)
    assert backend.catalog().control_models == backend.control_models(None)
    assert backend.control_models("zz-sd2.safetensors") == ["None", titles["control_tiny_sd21"]]
    # a checkpoint not found: its family is unknown, every readable file is offered (not the broken one)
    assert sorted(backend.control_models("missing")) == sorted([*sd1, titles["control_tiny_sd21"]])


def test_the_preview_is_what_detect_gives(backend: SdapiBackend, server: Served) -> None:
    picture = _picture(4)
    with httpx.Client(base_url=server.base, timeout=30) as client:

        def detect(**body: Any) -> np.ndarray:
            sent = {"controlnet_module": "canny", "controlnet_input_images": [png_b64(picture)], **body}
            response = client.post("/controlnet/detect", json=sent)
            assert response.status_code == 200, response.text
            return np.asarray(decode(response.json()["images"][0]).convert("RGB"))

        fields = {"module": "canny", "threshold_a": 40, "threshold_b": 90, "processor_res": 96}
        shown = np.asarray(backend.detect_control(fields, picture, (64, 64)))
        assert np.array_equal(shown, detect(controlnet_threshold_a=40, controlnet_threshold_b=90,
                                            controlnet_processor_res=96))  # fmt: skip
        # pixel perfect: the resolution that lands the map 1:1 on a 160×96 picture (Crop and Resize: ×2.5)
        perfect = {**fields, "processor_res": -1, "pixel_perfect": True}
        shown = np.asarray(backend.detect_control(perfect, picture, (160, 96)))
        assert shown.shape[:2] == (160, 160)
        assert np.array_equal(shown, detect(controlnet_threshold_a=40, controlnet_threshold_b=90,
                                            controlnet_processor_res=160))  # fmt: skip
    with pytest.raises(FieldError) as refused:
        backend.detect_control({**fields, "threshold_b": 900}, picture, (64, 64))
    assert refused.value.field.endswith("threshold_b")


def test_an_inpaint_unit_takes_its_mask_from_the_ui_as_from_the_api(
    backend: SdapiBackend, server: Served
) -> None:
    """The unit's "Inpaint mask" is the API unit's ``mask``: the same job, and the preview is detect's."""
    picture = _picture(6)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:48] = 255
    fields = _unit(module="inpaint_only", mask=Image.fromarray(mask), weight=1.0)
    job = _done(backend, backend.submit("txt2img", FIELDS, controls=[(fields, picture)]).id)
    api_unit = {**_unit(module="inpaint_only", weight=1.0), "enabled": True, "image": png_b64(picture),
                "mask": png_b64(Image.fromarray(mask))}  # fmt: skip
    body = {**FIELDS, "alwayson_scripts": {"controlnet": {"args": [api_unit]}}}
    preview = {"controlnet_module": "inpaint_only", "controlnet_input_images": [png_b64(picture)],
               "controlnet_masks": [png_b64(Image.fromarray(mask))]}  # fmt: skip
    with httpx.Client(base_url=server.base, timeout=120) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
        detected = client.post("/controlnet/detect", json=preview)
    assert response.status_code == 200, response.text
    api_pixels = np.asarray(decode(response.json()["images"][0]).convert("RGB")).astype(np.int16)
    ui_pixels = _ui_pixels(backend, job)
    assert np.array_equal(ui_pixels, api_pixels)
    assert np.array_equal(ui_pixels[:8], np.asarray(picture).astype(np.int16)[:8])  # kept outside the mask
    shown = np.asarray(backend.detect_control(fields, picture, (64, 64)))
    assert shown.shape == (64, 64, 4)
    assert np.array_equal(shown, np.asarray(decode(detected.json()["images"][0])))
    with pytest.raises(FieldError) as refused:  # a mask of another size than the picture
        backend.detect_control({**fields, "mask": Image.fromarray(mask[:30])}, picture, (64, 64))
    assert refused.value.field.endswith("mask")


def test_a_pasted_infotext_gives_back_the_units_settings(backend: SdapiBackend) -> None:
    second = _unit(module="invert", model="t2iadapter", control_mode=2, resize_mode="Just Resize",
                   guidance_start=0.25)  # fmt: skip
    units = [(_unit(), _picture(5)), (second, _picture(6))]
    job = _done(backend, backend.submit("txt2img", FIELDS, controls=units).id)
    text = job.infotexts[0]
    pasted = backend.paste(text)["controlnet_units"]
    titles = {t.split(" [")[0]: t for t in backend.control_models(None)}
    assert pasted[0] == {
        "module": "canny", "model": titles["control_tiny_canny"], "weight": 1.5,
        "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 60.0, "threshold_b": 170.0,
        "guidance_start": 0.0, "guidance_end": 0.8, "pixel_perfect": False, "control_mode": "Balanced",
    }  # fmt: skip
    assert pasted[1]["module"] == "invert"
    assert pasted[1]["model"] == titles["t2iadapter_tiny_sd15"]
    assert pasted[1]["control_mode"] == "ControlNet is more important"
    assert (pasted[1]["resize_mode"], pasted[1]["guidance_start"]) == ("Just Resize", 0.25)
    assert "enabled" not in pasted[0]  # as the extension: the settings, not the switch (no image to use)
    # an entry of another format, or for a unit past the last, is skipped; an unknown model kept as written
    odd = text + ', ControlNet 2: "preprocessor canny", ControlNet 7: "Module: none, Model: None"'
    assert set(backend.paste(odd)["controlnet_units"]) == {0, 1}
    moved = text.replace("Model: control_tiny_canny,", "Model: control_gone [0badf00d],")
    assert backend.paste(moved)["controlnet_units"][0]["model"] == "control_gone [0badf00d]"
