"""``Hires prompt`` / ``Hires negative prompt`` in a pasted infotext, read as A1111 v1.10.1's
``parse_generation_parameters`` (``modules/infotext_utils.py``) reads them, and pasted as its API and UI paste
them (``hr_prompt`` / ``hr_negative_prompt``).

A1111's rule, as its code reads: when ``infotext_styles`` is not "Ignore" (its default is "Apply if any") and
the infotext has either key and no ``Version`` ≤ 1.8.0-139, both hires prompts (a missing one: the main one)
lose the styles they end with and become "" where they then equal the main prompts without theirs; if the
hires prompts end with other styles than the main ones, nothing is changed. Then a missing key is "". The
expected dicts below are written out from that reading, for inputs of our own.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from latentstudio import infotext
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.models import Img2ImgRequest, Txt2ImgRequest
from latentstudio.api.sdapi.pasting import apply_infotext
from latentstudio.config import Settings
from latentstudio.models.families import Family
from latentstudio.pipeline.images import png_bytes
from latentstudio.prompts.styles import Style
from latentstudio.server.ui_backend import SdapiBackend
from tests.conftest import MakeTiny
from tests.serving import Served, serve

# what A1111's parse adds for an infotext without these keys (its defaults, in its order)
DEFAULTS: dict[str, Any] = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "", "Hires negative prompt": "", "Mask mode": "Inpaint masked",
    "Masked content": "original", "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full",
    "VAE Decoder": "Full", "FP8 weight": "Disable", "Refiner switch by sampling steps": False,
}  # fmt: skip
STYLES = {
    "framed": Style("framed", "masterpiece, {prompt}", "lowres"),
    "plain": Style("plain", "oil painting", ""),
}
HEAD = "a cat\nNegative prompt: blurry\n"
FRAMED = "masterpiece, a cat\nNegative prompt: lowres\n"  # the "framed" style on both prompts
PARAMS = {"Steps": "20", "Sampler": "Euler", "Seed": "1"}


def _text(extra: str, head: str = HEAD) -> str:
    return f"{head}Steps: 20, Sampler: Euler, Seed: 1{extra}"


def _expected(prompt: str = "a cat", negative: str = "blurry", **keys: Any) -> dict[str, Any]:
    return {**DEFAULTS, **PARAMS, **keys, "Prompt": prompt, "Negative prompt": negative}


@pytest.mark.parametrize(
    ("extra", "keys"),
    [
        ("", {}),  # neither key: both ""
        (", Hires prompt: a cat, Hires negative prompt: blurry", {}),  # both equal: both read as ""
        (", Hires prompt: a dog", {"Hires prompt": "a dog"}),  # the missing negative counts as equal
        (", Hires negative prompt: ugly", {"Hires negative prompt": "ugly"}),
        (", Hires negative prompt: blurry", {}),
        (', Hires prompt: "a cat"', {}),  # quoted (valid JSON): unquoted first, then equal
        (', Hires prompt: "a cat, red"', {"Hires prompt": "a cat, red"}),
        (", Hires prompt: a cat , Hires negative prompt: blurry", {"Hires prompt": "a cat "}),  # kept space
        (', Hires prompt: "a cat', {"Hires prompt": '"a cat'}),  # not JSON: the raw text, not equal
        (", Hires prompt: a cat, Version: v1.10.1", {"Version": "v1.10.1"}),
        (", Hires prompt: a cat, Version: v1.8.0-140-g1234abc", {"Version": "v1.8.0-140-g1234abc"}),
        (", Hires prompt: a cat, Version: not a version", {"Version": "not a version"}),  # unparsable: new
        # written by 1.8.0-139 or older: the hires prompts stay as written (no backcompat flag for these)
        (", Hires prompt: a cat, Version: v1.8.0", {"Hires prompt": "a cat", "Version": "v1.8.0"}),
        (
            ", Hires prompt: a cat, Hires negative prompt: blurry, Version: v1.8.0-139-g1234abc",
            {"Hires prompt": "a cat", "Hires negative prompt": "blurry", "Version": "v1.8.0-139-g1234abc"},
        ),
    ],
)
def test_hires_prompts_parse_as_a1111(extra: str, keys: dict[str, Any]) -> None:
    assert infotext.parse(_text(extra)) == _expected(**keys)


def test_multiline_and_quoted_hires_prompts() -> None:
    head = " a cat, red \nsecond line\nNegative prompt: blurry\nmore\n"  # each line stripped
    same = ', Hires prompt: "a cat, red\\nsecond line", Hires negative prompt: "blurry\\nmore"'
    assert infotext.parse(_text(same, head)) == _expected("a cat, red\nsecond line", "blurry\nmore")
    other = ', Hires prompt: "a cat, red\\nthird line"'
    parsed = infotext.parse(_text(other, head))
    hires = {"Hires prompt": "a cat, red\nthird line"}
    assert parsed == _expected("a cat, red\nsecond line", "blurry\nmore", **hires)


def test_ignore_keeps_equal_hires_prompts() -> None:
    text = _text(", Hires prompt: a cat, Hires negative prompt: blurry")
    expected = _expected(**{"Hires prompt": "a cat", "Hires negative prompt": "blurry"})
    assert infotext.parse(text, style_mode="Ignore") == expected
    assert infotext.parse(text, style_mode="Discard") == _expected()  # any other mode compares them


@pytest.mark.parametrize(
    ("head", "extra", "mode", "expected"),
    [
        # the main and the hires prompt end with the same style: compared, and the style taken off both
        ("a cat, oil painting\n", ', Hires prompt: "a dog, oil painting"', "Apply if any",
         {"Prompt": "a cat", "Hires prompt": "a dog", "Styles array": ["plain"]}),
        ("a cat, oil painting\n", ', Hires prompt: "a cat, oil painting"', "Apply if any",
         {"Prompt": "a cat", "Styles array": ["plain"]}),
        ("a cat, oil painting\n", ', Hires prompt: "a cat, oil painting"', "Discard", {"Prompt": "a cat"}),
        # other styles on the hires prompt: nothing extracted, the hires prompt as written
        ("a cat, oil painting\n", ", Hires prompt: a cat", "Apply if any",
         {"Prompt": "a cat, oil painting", "Hires prompt": "a cat"}),
        (FRAMED, ', Hires prompt: "masterpiece, a dog"', "Apply if any",
         {"Prompt": "a cat", "Hires prompt": "a dog", "Styles array": ["framed"]}),
        (FRAMED, ", Hires negative prompt: lowres", "Apply if any",
         {"Prompt": "a cat", "Styles array": ["framed"]}),
        ("a cat\n", ", Hires prompt: a cat", "Apply", {"Prompt": "a cat", "Styles array": []}),
        ("a cat, oil painting\n", "", "Apply if any", {"Prompt": "a cat", "Styles array": ["plain"]}),
    ],
)  # fmt: skip
def test_styles_are_taken_off_both_before_comparing(
    head: str, extra: str, mode: str, expected: dict[str, Any]
) -> None:
    parsed = infotext.parse(_text(extra, head), styles=STYLES, style_mode=mode)
    assert parsed == {**DEFAULTS, **PARAMS, "Negative prompt": "", **expected}


def test_paste_reads_hires_prompts_as_a1111() -> None:
    text = _text(", Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 7, Hires upscaler: Lanczos, "
                 "Hires prompt: a cat, Hires negative prompt: blurry")  # fmt: skip
    pasted = apply_infotext(Txt2ImgRequest(infotext=text), opts.defaults())
    assert (pasted.enable_hr, pasted.hr_prompt, pasted.hr_negative_prompt) == (True, "", "")
    assert (pasted.hr_scale, pasted.hr_second_pass_steps, pasted.hr_upscaler) == (1.5, 7, "Lanczos")
    assert (pasted.hr_resize_x, pasted.hr_resize_y, pasted.hr_sampler_name) == (0, 0, "Use same sampler")
    ignoring = apply_infotext(Txt2ImgRequest(infotext=text), {**opts.defaults(), "infotext_styles": "Ignore"})
    assert (ignoring.hr_prompt, ignoring.hr_negative_prompt) == ("a cat", "blurry")
    dog = text.replace("Hires prompt: a cat", "Hires prompt: a dog")
    other = apply_infotext(Txt2ImgRequest(infotext=dog), opts.defaults())
    assert (other.hr_prompt, other.hr_negative_prompt) == ("a dog", "")
    own = apply_infotext(Txt2ImgRequest(infotext=text, hr_prompt="a cow"), opts.defaults())
    assert own.hr_prompt == "a cow"  # a field the request sets wins
    img = apply_infotext(Img2ImgRequest(infotext=text, init_images=["x"]), opts.defaults())
    assert img.prompt == "a cat"  # no hires fields in img2img: nothing else to fill


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("infotext-hires")
    target = root / "models" / "Stable-diffusion" / "tiny.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copyfile(make_tiny(Family.SD1).path, target)
    with serve(Settings(models_dir=root / "models", data_dir=root / "data", device="cpu")) as served:
        yield served


def test_http_and_ui_paste_read_equal_hires_prompts_as_empty(server: Served) -> None:
    text = _text(", Size: 64x64, Denoising strength: 0.5, Hires upscale: 1.5, Hires prompt: a cat, "
                 "Hires negative prompt: ugly")  # fmt: skip
    with httpx.Client(base_url=server.base, timeout=120) as client:
        body = {"infotext": text, "steps": 2, "hr_second_pass_steps": 1, "cfg_scale": 1}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        echoed = response.json()["parameters"]
        assert (echoed["enable_hr"], echoed["hr_prompt"], echoed["hr_negative_prompt"]) == (True, "", "ugly")
        assert (echoed["hr_scale"], echoed["prompt"], echoed["negative_prompt"]) == (1.5, "a cat", "blurry")
        image = base64.b64encode(png_bytes(Image.new("RGB", (8, 8)), text)).decode()
        info = client.post("/sdapi/v1/png-info", json={"image": image}).json()["parameters"]
        assert (info["Hires prompt"], info["Hires negative prompt"]) == ("", "ugly")
    pasted = SdapiBackend(server.app.state.services).paste(text)
    assert (pasted["hr_prompt"], pasted["hr_negative_prompt"], pasted["hr_scale"]) == ("", "ugly", 1.5)
