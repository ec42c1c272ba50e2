"""The ControlNet accordion in a real browser (Debian's headless Chromium, as ``test_ui_browser``): a unit
set up as a person does (upload, preprocessor, its sliders, preview, model, enable) guides a txt2img job;
in img2img a unit takes the img2img image; PNG Info's Send to txt2img gives the units their settings back.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from latentstudio.config import Settings
from latentstudio.control import synthetic
from latentstudio.jobs import JobStatus
from latentstudio.models.families import Family
from tests.conftest import MakeTiny
from tests.sdapi_support import png_b64
from tests.serving import Served, models_root, serve
from tests.test_ui_browser import CHROMIUM, _number, _page, _shot, browser

__all__ = ["browser"]  # the browser fixture, shared with test_ui_browser

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/test installs it)"),
    pytest.mark.timeout(600),
]
UNIT = "txt2img_controlnet_unit0"


@pytest.fixture(scope="module")
def served(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ui-controlnet")
    models = models_root(make_tiny(Family.SD1).path, root)
    folder = models / "ControlNet"
    folder.mkdir()
    synthetic.tiny_controlnet_file(folder / "control_tiny_canny.safetensors", Family.SD1, seed=2)
    synthetic.tiny_controlnet_file(folder / "control_tiny_sd21.safetensors", Family.SD2, seed=4)
    settings = Settings(models_dir=models, data_dir=root / "data", device="cpu")
    with serve(settings) as running:
        yield running


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    with _page(browser, served.base) as opened:
        yield opened


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    pixels = np.full((64, 64, 3), 30, np.uint8)
    pixels[10:50, 14:46] = (230, 200, 40)
    path = tmp_path / "control.png"
    Image.fromarray(pixels).save(path)
    return path


def _open_unit(page: Any, tab: str) -> None:
    page.click(f"#tab_{tab}-button")
    page.locator(f"#{tab}_controlnet").get_by_text("ControlNet", exact=True).click()
    page.wait_for_selector(f"#{tab}_controlnet_unit0_module input")


def _options(page: Any, elem: str) -> list[str]:
    page.locator(f"#{elem} input").click()
    options = page.locator(f"#{elem} [role=option]")
    options.first.wait_for()
    texts = [str(text).replace("✓", "").strip() for text in options.all_inner_texts()]  # ✓: the chosen one
    page.keyboard.press("Escape")
    page.locator(f"#{elem} input").evaluate("e => e.blur()")
    return texts


def _pick(page: Any, elem: str, text: str) -> None:
    page.locator(f"#{elem} input").click()
    page.locator(f"#{elem} [role=option]", has_text=text).first.click()
    page.wait_for_function(f"document.querySelector('#{elem} input').value.includes('{text}')")


def _slider(page: Any, elem: str) -> str:
    return str(page.input_value(f"#{elem} input[type=number]"))


def _generate(page: Any, served: Served, tab: str) -> Any:
    """Click Generate; the finished job (the page shows its infotext, and no error)."""
    before = served.jobs.count()
    shown = json.dumps(page.input_value(f"#{tab}_info textarea"))  # the last job's (seeds are random)
    time.sleep(0.3)  # let the last input event land before the click reads the values
    page.click(f"#{tab}_generate")
    page.wait_for_function(
        f"document.querySelector('#{tab}_info textarea').value !== {shown}"
        f" || document.querySelector('#{tab}_error')?.offsetParent != null"
    )
    assert not page.locator(f"#{tab}_error").is_visible(), page.inner_text(f"#{tab}_error")
    assert served.jobs.count() == before + 1
    record = served.jobs.wait(served.jobs.list(limit=1)[0].id, 120)
    assert record.status is JobStatus.DONE, record.error
    assert page.input_value(f"#{tab}_info textarea") == record.infotexts[0]
    return record


def test_a_unit_set_up_in_the_page_guides_txt2img(page: Any, served: Served, picture: Path) -> None:
    _open_unit(page, "txt2img")
    models = _options(page, f"{UNIT}_model")
    assert models[0] == "None"
    assert any(m.startswith("control_tiny_canny [") for m in models)
    assert not any("sd21" in m for m in models)  # another family than the checkpoint's: not offered
    assert {"canny", "invert", "threshold"} <= set(_options(page, f"{UNIT}_module"))
    page.locator(f"#{UNIT}_image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector(f"#{UNIT}_image img")
    _pick(page, f"{UNIT}_module", "canny")
    page.wait_for_selector(f"#{UNIT}_threshold_a:has-text('Low Threshold')")  # canny's sliders
    assert (_slider(page, f"{UNIT}_threshold_a"), _slider(page, f"{UNIT}_threshold_b")) == ("100", "200")
    _number(page, f"{UNIT}_threshold_a", 60)
    _number(page, f"{UNIT}_processor_res", 64)
    page.click(f"#{UNIT}_run")
    page.wait_for_selector(f"#{UNIT}_preview img")  # the detected map
    assert not page.locator(f"#{UNIT}_error").is_visible()
    _pick(page, f"{UNIT}_model", "control_tiny_canny")
    page.locator(f"#{UNIT}_enable input").check()
    _number(page, f"{UNIT}_weight", 1.5)
    page.locator(f"#{UNIT}_control_mode").get_by_label("My prompt is more important", exact=True).check()
    page.fill("#txt2img_prompt textarea", "a guided box")
    for name, value in {"width": 64, "height": 64, "steps": 3}.items():
        _number(page, f"txt2img_{name}", value)
    record = _generate(page, served, "txt2img")
    _shot(page, "txt2img_controlnet")
    (unit,) = record.spec.params.control
    assert (unit.module, unit.threshold_a, unit.threshold_b, unit.processor_res) == ("canny", 60, 200, 64)
    assert (unit.weight, unit.control_mode.value) == (1.5, "My prompt is more important")
    assert unit.model.startswith("control_tiny_canny [")
    assert np.array_equal(
        np.asarray(unit.image.convert("RGB")), np.asarray(Image.open(picture).convert("RGB"))
    )
    info = page.input_value("#txt2img_info textarea")
    assert f'ControlNet 0: "Module: canny, Model: {unit.model}, Weight: 1.5' in info
    # a module without thresholds hides its sliders and sends the extension's hidden values
    _pick(page, f"{UNIT}_module", "invert")
    page.wait_for_selector(f"#{UNIT}_threshold_a", state="hidden")
    record = _generate(page, served, "txt2img")
    (unit,) = record.spec.params.control
    assert (unit.module, unit.threshold_a, unit.threshold_b) == ("invert", -1, -1)
    assert "Processor Res: 0.5, Threshold A: 0.5, Threshold B: 0.5" in record.images[0].infotext


def test_img2img_unit_uses_the_img2img_image(page: Any, served: Served, picture: Path) -> None:
    page.click("#tab_img2img-button")
    page.locator("#img2img_image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector("#img2img_image img")
    _open_unit(page, "img2img")
    unit_id = "img2img_controlnet_unit0"
    assert not page.locator(f"#{unit_id}_image").is_visible()  # until "Upload independent control image"
    _pick(page, f"{unit_id}_model", "control_tiny_canny")
    page.locator(f"#{unit_id}_enable input").check()
    page.click(f"#{unit_id}_run")  # the preview of the img2img image
    page.wait_for_selector(f"#{unit_id}_preview img")
    for name, value in {"width": 64, "height": 64, "steps": 2}.items():
        _number(page, f"img2img_{name}", value)
    record = _generate(page, served, "img2img")
    (unit,) = record.spec.params.control
    assert unit.image is None  # the img2img image is the hint
    assert "ControlNet 0: " in record.images[0].infotext
    page.locator(f"#{unit_id}_upload input").check()
    page.wait_for_selector(f"#{unit_id}_image")


def test_send_to_txt2img_restores_the_units_settings(
    page: Any, served: Served, picture: Path, tmp_path: Path
) -> None:
    unit = {"enabled": True, "module": "canny", "model": "control_tiny_canny",
            "image": png_b64(Image.open(picture)), "threshold_a": 60, "processor_res": 64, "weight": 1.5,
            "control_mode": 1}  # fmt: skip
    body = {"prompt": "pasted", "steps": 2, "width": 64, "height": 64,
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}  # fmt: skip
    with httpx.Client(base_url=served.base, timeout=120) as client:
        response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    png = tmp_path / "guided.png"
    png.write_bytes(base64.b64decode(response.json()["images"][0]))  # as sent: with its infotext
    page.click("#tab_pnginfo-button")
    page.locator("#pnginfo_file input[type=file]").set_input_files(str(png))
    page.wait_for_function(
        "document.querySelector('#pnginfo_parameters textarea').value.includes('ControlNet')"
    )
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_selector("#tab_txt2img-button[aria-selected=true]")
    _open_unit(page, "txt2img")
    page.wait_for_function(f"document.querySelector('#{UNIT}_module input').value === 'canny'")
    # the model by its listed title (the infotext names it as the request did: by its stem)
    assert page.input_value(f"#{UNIT}_model input").startswith("control_tiny_canny [")
    assert (_slider(page, f"{UNIT}_threshold_a"), _slider(page, f"{UNIT}_processor_res")) == ("60", "64")
    assert page.locator(f"#{UNIT}_threshold_b:has-text('High Threshold')").is_visible()
    assert _slider(page, f"{UNIT}_weight") == "1.5"
    assert page.locator(f"#{UNIT}_control_mode").get_by_label("My prompt is more important").is_checked()
    assert not page.locator(f"#{UNIT}_enable input").is_checked()  # the settings, not the switch
