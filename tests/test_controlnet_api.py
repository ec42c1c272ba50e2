"""The ControlNet extension's routes over real HTTP, as its API clients call them: version, settings,
module_list (names, labels, sliders), and detect (results equal to the preprocessors' own, refusals that
name the field, the server answering afterwards)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio.control import annotators, preprocessors
from tests.conftest import MakeTiny
from tests.sdapi_support import build_root, png_b64, refused_field
from tests.serving import Served, serve
from tests.test_control_openpose import random_state


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("controlnet-api")
    settings = build_root(make_tiny, root)
    rng = np.random.default_rng(5)
    files = {  # A1111 root-relative: the models folder, a subfolder, the extension's own folder, skipped ones
        "models/ControlNet/t2iadapter_canny_sd15v2.pth": 2_000_000,
        "models/ControlNet/sub/control_a.safetensors": 1_200_000, "models/ControlNet/small.bin": 1000,
        "models/ControlNet/None.pth": 10, "models/ControlNet/notes.txt": 10,
        "extensions/sd-webui-controlnet/models/Control_A.ckpt": 1_100_000,
    }  # fmt: skip
    for name, size in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    with serve(settings) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=60) as c:
        yield c


def _picture(width: int = 96, height: int = 80) -> Image.Image:
    """Shapes with hard edges on a gradient (not an example image of the extension)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    array = np.repeat(np.repeat(x, height, axis=0), 3, axis=2).astype(np.uint8)
    array[10:50, 20:60] = (250, 30, 40)
    array[55:75, 5:90] = (10, 200, 90)
    array[20:40, 80:120] -= 44  # a faint edge (Sobel ≈ 180): kept by low threshold 100, not by 190
    return Image.fromarray(array)


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(base64.b64decode(b64))))


def test_version_settings_and_module_list(client: httpx.Client) -> None:
    assert client.get("/controlnet/version").json() == {"version": 3}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    body = client.get("/controlnet/module_list").json()
    assert body["module_list"][0] == "none"
    assert {"canny", "invert", "tile_resample", "shuffle"} <= set(body["module_list"])
    assert set(body["module_detail"]) == set(body["module_list"])
    canny = body["module_detail"]["canny"]
    assert [s["name"] for s in canny["sliders"]] == ["Resolution", "Low Threshold", "High Threshold"]
    unavailable = body["unavailable"]  # weight-needing annotators: named with the files they would load
    assert unavailable["depth_midas"] == [
        "extensions/sd-webui-controlnet/annotator/downloads/midas/dpt_hybrid-midas-501f0c75.pt"
    ]
    assert "openpose_full" in unavailable
    assert not set(unavailable) & set(body["module_list"])
    labels = client.get("/controlnet/module_list", params={"alias_names": True}).json()["module_list"]
    assert "invert (from white bg & black line)" in labels


def _legacy_hash(path: Path) -> str:
    """A1111's ``sd_models.model_hash``: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits."""
    return hashlib.sha256(path.read_bytes()[0x100000:0x110000]).hexdigest()[:8]


def test_model_list_names_files_as_the_extension(server: Served, client: httpx.Client) -> None:
    models = server.app.state.services.settings.models_dir
    control, extension = models / "ControlNet", models.parent / "extensions/sd-webui-controlnet/models"
    expected = [  # per folder by file name; the extension folder's Control_A replaces control_a in place
        f"Control_A [{_legacy_hash(extension / 'Control_A.ckpt')}]",
        "small [e3b0c442]",  # shorter than 1 MiB: the hash of nothing, as A1111
        f"t2iadapter_canny_sd15v2 [{_legacy_hash(control / 't2iadapter_canny_sd15v2.pth')}]",
    ]
    assert client.get("/controlnet/model_list").json() == {"model_list": expected}
    (control / "later.safetensors").write_bytes(b"x")
    try:
        listed = client.get("/controlnet/model_list", params={"update": False}).json()["model_list"]
        assert "later [e3b0c442]" in listed  # read anew on every call
    finally:
        (control / "later.safetensors").unlink()


def test_detect_canny_is_opencv_canny_at_the_processor_resolution(client: httpx.Client) -> None:
    picture = _picture(128, 128)  # square and a multiple of 64: no resize padding involved at res 128
    body = {
        "controlnet_module": "canny", "controlnet_input_images": [png_b64(picture), png_b64(picture)],
        "controlnet_processor_res": 128, "controlnet_threshold_a": 190, "controlnet_threshold_b": 250,
    }  # fmt: skip
    response = client.post("/controlnet/detect", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["info"] == "Success"
    assert len(result["images"]) == 2
    edges = cv2.Canny(np.asarray(picture), 190, 250)
    got = _decode(result["images"][0])
    assert got.shape == (128, 128, 3)
    assert np.array_equal(got[..., 0], edges)
    assert np.array_equal(got, _decode(result["images"][1]))
    defaults = client.post("/controlnet/detect", json={**body, "controlnet_threshold_a": -1}).json()
    assert not np.array_equal(_decode(defaults["images"][0]), got)  # -1: the default low threshold, 100
    direct = preprocessors.detect("canny", np.asarray(picture), 128, 100, 250)
    assert np.array_equal(_decode(defaults["images"][0]), direct)


def test_detect_by_display_label_and_default_module(client: httpx.Client) -> None:
    picture = _picture()
    label = "invert (from white bg & black line)"
    body = {"controlnet_module": label, "controlnet_input_images": [png_b64(picture)]}
    inverted = _decode(client.post("/controlnet/detect", json=body).json()["images"][0])
    assert np.array_equal(inverted, 255 - np.asarray(picture))
    plain = client.post("/controlnet/detect", json={"controlnet_input_images": [png_b64(picture)]})
    assert np.array_equal(_decode(plain.json()["images"][0]), np.asarray(picture))  # module "none"


def test_detect_inpaint_returns_the_picture_with_its_mask_half_clear(client: httpx.Client) -> None:
    """The inpaint modules take one mask per image (``controlnet_masks``, its first channel) and return the
    picture with alpha 255 − mask // 2, as the extension's ``visualize_inpaint_mask``."""
    picture = _picture()
    mask = np.zeros((80, 96, 3), np.uint8)
    mask[30:60, 40:70] = 255
    mask[0:5, 0:5] = 90
    for module in ("inpaint_only", "inpaint_global_harmonious", "inpaint"):
        body = {"controlnet_module": module, "controlnet_input_images": [png_b64(picture)],
                "controlnet_masks": [png_b64(Image.fromarray(mask))]}  # fmt: skip
        response = client.post("/controlnet/detect", json=body)
        assert response.status_code == 200, response.text
        shown = _decode(response.json()["images"][0])
        assert shown.shape == (80, 96, 4)
        assert np.array_equal(shown[:, :, :3], np.asarray(picture))
        assert np.array_equal(shown[:, :, 3], 255 - mask[:, :, 0] // 2)
    no_mask = {"controlnet_module": "inpaint_only", "controlnet_input_images": [png_b64(picture)]}
    assert refused_field(client.post("/controlnet/detect", json=no_mask)) == "controlnet_masks"
    small = {**no_mask, "controlnet_masks": [png_b64(Image.fromarray(mask[:40]))]}
    response = client.post("/controlnet/detect", json=small)
    assert refused_field(response) == "controlnet_masks.0"
    assert "96x40" in response.text
    # a module that takes no mask ignores one, as there
    canny = {"controlnet_module": "invert", "controlnet_input_images": [png_b64(picture)],
             "controlnet_masks": [png_b64(Image.fromarray(mask))]}  # fmt: skip
    assert np.array_equal(
        _decode(client.post("/controlnet/detect", json=canny).json()["images"][0]), 255 - np.asarray(picture)
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"controlnet_module": "openpose_nonexistent"}, "controlnet_module"),
        ({"controlnet_input_images": []}, "controlnet_input_images"),
        ({"controlnet_input_images": ["not base64!"]}, "controlnet_input_images.0"),
        ({"controlnet_processor_res": 100_000}, "controlnet_processor_res"),
        ({"controlnet_threshold_a": 300}, "controlnet_threshold_a"),
        ({"controlnet_threshold_b": 0.5}, "controlnet_threshold_b"),
        ({"controlnet_unknown_field": 1}, "controlnet_unknown_field"),
    ],
)
def test_bad_detect_requests_name_the_field(
    client: httpx.Client, change: dict[str, object], field: str
) -> None:
    body = {"controlnet_module": "canny", "controlnet_input_images": [png_b64(_picture())], **change}
    response = client.post("/controlnet/detect", json=body)
    assert response.status_code == 422, response.text
    assert refused_field(response) == field
    assert client.get("/controlnet/version").status_code == 200


def test_control_types_group_modules_and_models_by_tag(client: httpx.Client) -> None:
    """``/controlnet/control_types`` as the extension's ``select_control_type``: "All" first with every
    label and model ("None" first), then each tag with its preprocessors ("none" first), the models whose
    name holds the tag (or an alias: Tile also matches "blur"), and the defaults."""
    types = client.get("/controlnet/control_types").json()["control_types"]
    models = client.get("/controlnet/model_list").json()["model_list"]
    labels = client.get("/controlnet/module_list", params={"alias_names": True}).json()["module_list"]
    assert next(iter(types)) == "All"
    assert types["All"] == {"module_list": labels, "model_list": ["None", *models], "default_option": "none",
                            "default_model": "None"}  # fmt: skip
    canny = types["Canny"]
    assert canny["module_list"][0] == "none"
    assert canny["default_option"] == "canny"
    assert "invert (from white bg & black line)" in canny["module_list"]
    assert [m.split(" [")[0] for m in canny["model_list"]] == ["None", "t2iadapter_canny_sd15v2"]
    assert canny["default_model"] == canny["model_list"][1]
    assert types["Shuffle"]["model_list"] == ["None"]  # no file here is named for shuffle
    assert types["Shuffle"]["default_model"] == "None"
    adapter = types["T2I-Adapter"]
    assert [m.split(" [")[0] for m in adapter["model_list"]] == ["None", "t2iadapter_canny_sd15v2"]
    assert adapter["default_model"].startswith("t2iadapter_canny_sd15v2 [")
    assert set(types) >= {"Tile", "Shuffle", "Lineart", "Scribble", "Recolor", "InstructP2P"}


def test_detect_openpose_returns_the_pose_json_beside_the_map(server: Served, client: httpx.Client) -> None:
    """An openpose module answers ``poses`` too (one per image, the extension's JSON); others do not."""
    models = server.app.state.services.settings.models_dir
    folder = models / annotators.OWN_FOLDER / "openpose"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(random_state("body", 4), folder / "body_pose_model.pth")
    try:
        pictures = [png_b64(_picture()), png_b64(_picture(64, 72))]
        body = {"controlnet_module": "openpose", "controlnet_input_images": pictures,
                "controlnet_processor_res": 64}  # fmt: skip
        answer = client.post("/controlnet/detect", json=body).json()
        assert len(answer["images"]) == len(answer["poses"]) == 2
        expected = preprocessors.detect_with_pose(
            "openpose", np.asarray(_picture()), 64, roots=annotators.roots(models)
        )
        assert (_decode(answer["images"][0]) == expected[0]).all()
        assert answer["poses"][0] == expected[1]
        assert {"people", "canvas_width", "canvas_height"} <= set(answer["poses"][1])
        canny = client.post("/controlnet/detect", json={**body, "controlnet_module": "canny"}).json()
        assert "poses" not in canny
    finally:
        (folder / "body_pose_model.pth").unlink()
