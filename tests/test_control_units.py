"""ControlNet units without networks: the infotext entry, its parsing, validation, the control image's
fitting (resize modes, pixel perfect, high-quality resize) and the HTTP unit fields."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from latentstudio.api.control_units import parse_units
from latentstudio.control import hint
from latentstudio.control.units import ControlMode, ControlResize, ControlUnit, parse_infotext
from latentstudio.core import FieldError


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _decode(data: str, field: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    except Exception as e:
        raise FieldError(field, "not an image") from e


def test_infotext_is_the_extensions_serialization_with_module_defaults() -> None:
    unit = ControlUnit(module="canny", model="control_v11p_sd15_canny [d14c016b]")
    assert unit.infotext() == (
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, "
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, "
        "Guidance Start: 0.0, Guidance End: 1.0, "
        "Pixel Perfect: False, Control Mode: Balanced"
    )
    # a module without threshold sliders: the hidden slider's 0.5 where the value is outside [0, 1]
    other = ControlUnit(module="invert", model="m", weight=0.5, threshold_a=64, threshold_b=0.25,
                        control_mode=ControlMode.CONTROL, resize_mode=ControlResize.JUST_RESIZE)  # fmt: skip
    text = other.infotext()
    assert "Threshold A: 0.5, Threshold B: 0.25" in text
    assert "Weight: 0.5" in text
    assert "Control Mode: ControlNet is more important" in text
    assert ControlUnit(module="canny", model="a, b").infotext() == ""  # the extension writes nothing then


def test_parse_infotext_restores_the_fields() -> None:
    unit = ControlUnit(module="canny", model="cn [abcd1234]", weight=0.7, processor_res=384, threshold_a=50,
                       guidance_start=0.1, guidance_end=0.8, pixel_perfect=True)  # fmt: skip
    fields = parse_infotext(unit.infotext())
    assert fields == {
        "module": "canny", "model": "cn [abcd1234]", "weight": 0.7, "resize_mode": "Crop and Resize",
        "processor_res": 384, "threshold_a": 50.0, "threshold_b": 200.0, "guidance_start": 0.1,
        "guidance_end": 0.8, "pixel_perfect": True, "control_mode": "Balanced",
    }  # fmt: skip
    with pytest.raises(ValueError, match="not a ControlNet unit entry"):
        parse_infotext("garbage")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"module": "nope"}, "control.1.module"),
        ({"weight": 2.5}, "control.1.weight"),
        ({"guidance_start": 0.6, "guidance_end": 0.5}, "control.1.guidance_start"),
        ({"threshold_a": 0}, "control.1.threshold_a"),
        ({"processor_res": 10}, "control.1.processor_res"),
        ({"model": "None"}, "control.1.model"),
        ({"advanced_weighting": (1.0,) * 14}, "control.1.advanced_weighting"),
    ],
)
def test_validate_names_the_unit_and_field(changes: dict[str, object], field: str) -> None:
    unit = ControlUnit(**{"module": "canny", "model": "m", **changes})  # type: ignore[arg-type]
    with pytest.raises(FieldError) as e:
        unit.validate(1)
    assert e.value.field == field


def test_pixel_perfect_resolution() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    # cover: max(512/300, 768/400) × 300; fit: min(...) × 300
    assert hint.pixel_perfect_resolution(image, 512, 768, ControlResize.CROP_AND_RESIZE) == 576
    assert hint.pixel_perfect_resolution(image, 512, 768, ControlResize.RESIZE_AND_FILL) == 512
    assert hint.pixel_perfect_resolution(image, 512, 768, ControlResize.JUST_RESIZE) == 576


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y) % 256], 2).astype(
        np.uint8
    )


def test_fit_modes_place_the_map_as_the_extension_does() -> None:
    src = _gradient(100, 200)  # 2:1 onto a square
    just = hint.fit(src, ControlResize.JUST_RESIZE, 64, 64)
    assert just.shape == (64, 64, 3)
    crop = hint.fit(src, ControlResize.CROP_AND_RESIZE, 64, 64)  # scaled to 64×128, centre 64 columns
    assert crop.shape == (64, 64, 3)
    assert 40 < int(crop[:, :, 0].mean()) < 215  # the centre of the horizontal ramp
    fill = hint.fit(src, ControlResize.RESIZE_AND_FILL, 64, 64)  # scaled to 32×64, padded above and below
    assert fill.shape == (64, 64, 3)
    border = np.concatenate([src[0], src[-1], src[:, 0], src[:, -1]])
    assert (fill[0, 0] == np.median(border, axis=0).astype(np.uint8)).all()
    assert (fill[:16] == fill[0, 0]).all()
    assert (fill[48:] == fill[0, 0]).all()
    assert not (fill[16:48] == fill[0, 0]).all()


def test_binary_edge_maps_stay_binary_and_thin_when_resized() -> None:
    edges = np.zeros((64, 64), np.uint8)
    edges[32, 8:56] = 255  # a one-pixel line
    edges[8:56, 20] = 255
    up = hint.fit(edges, ControlResize.JUST_RESIZE, 128, 128)
    assert set(np.unique(up).tolist()) <= {0, 255}
    # still about one pixel wide: a column through the horizontal line crosses it once or twice
    assert 1 <= int((up[:, 100, 0] > 0).sum()) <= 2


def test_input_image_uses_a_partial_mask_as_scribble() -> None:
    image = np.full((8, 8, 3), 200, np.uint8)
    assert (hint.input_image(image, None) == image).all()
    assert (hint.input_image(image, np.zeros((8, 8, 3), np.uint8)) == image).all()  # all clear: the image
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[2:4] = 255
    assert (hint.input_image(image, mask)[:, :, 0] == mask[:, :, 0]).all()  # the scribble


def test_parse_units_http_fields() -> None:
    png = _b64(Image.new("RGB", (16, 16), "white"))
    args: list[object] = [
        {"enabled": True, "module": "canny", "model": "m", "image": png, "lowvram": True,
         "resize_mode": 0, "guidance": 0.5},
        None,
        {"module": "canny", "model": "m", "image": png},  # not enabled: dropped
        {"enabled": True, "model": "m", "image": {"image": png, "mask": png}, "control_mode": 2},
    ]  # fmt: skip
    units, indices = parse_units(args, "alwayson_scripts.controlnet.args", _decode)
    assert indices == (0, 3)
    assert units[0].low_vram
    assert units[0].resize_mode is ControlResize.JUST_RESIZE
    assert units[0].guidance_end == 0.5
    assert units[0].image is not None
    assert units[1].mask is not None
    assert units[1].control_mode is ControlMode.CONTROL


@pytest.mark.parametrize(
    ("unit", "field"),
    [
        ({"enabled": True, "bogus": 1}, "x.0.bogus"),
        ({"enabled": True, "weight": 3}, "x.0.weight"),
        ({"enabled": True, "image": "/etc/passwd"}, "x.0.image"),  # never a path
        ({"enabled": True, "input_mode": "batch"}, "x.0.input_mode"),
        ({"enabled": True, "guidance": 0.5, "guidance_end": 0.4}, "x.0"),
        ({"enabled": True, "resize_mode": "Sideways"}, "x.0.resize_mode"),
    ],
)
def test_parse_units_refusals_name_the_field(unit: dict[str, object], field: str) -> None:
    with pytest.raises(FieldError) as e:
        parse_units([unit], "x", _decode)
    assert e.value.field == field
