"""Nothing a client sends gives a 5xx: the pure readers are fed generated and mutated A1111 infotexts,
numbers A1111 crashes on (``inf``, ``nan``, ``1e999``, 5000-digit integers, zero sizes), nesting and
arbitrary text, and may only answer with a valid result or our own error type; then the same families
of inputs go to the real server over HTTP and must be 2xx or 4xx JSON.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from pydantic import TypeAdapter, ValidationError

from latentstudio import infotext
from latentstudio.api.schemas import JobRequest
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.extras import png_info
from latentstudio.api.sdapi.models import Img2ImgRequest, Txt2ImgRequest
from latentstudio.api.sdapi.pasting import apply_infotext
from latentstudio.config import Settings
from latentstudio.core import FieldError
from latentstudio.prompts.attention import parse_attention
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.networks import extract_networks
from latentstudio.prompts.parser import check_prompt
from tests.serving import Served, serve

KEYS = [
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip", "ENSD", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "First pass size", "Hires upscale",
    "Hires resize", "Hires upscaler", "RNG", "Eta", "Sigma noise", "Emphasis", "Version", "Hypernet",
    "Hypernet strength", "Mask blur", "Masked area padding", "Pad conds", "VAE", "Schedule rho", "Tiling",
]  # fmt: skip
HOSTILE_NUMBERS = [
    "inf", "-inf", "nan", "NaN", "1e999", "-1e999", "9" * 5000, "0", "-0", "0x0", "0x9", "9" * 5000 + "x1",
    "1x" + "9" * 5000, "1e308", "4294967296", "-1", "1.5", "", " ", "\"", '"a,b"', "true", "✓", "\x00",
]  # fmt: skip
values = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS), st.integers().map(str), st.floats().map(str), st.text(max_size=12)
)
params = st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=0, max_size=12)
prompts = st.text(max_size=200) | st.sampled_from(
    ["(a:1.2.3)", "((((x", "[a:b:1e999]", "<lora:x:inf>", "a\nb"]
)


def _infotext(prompt: str, negative: str, pairs: list[tuple[str, str]]) -> str:
    line = ", ".join(f"{key}: {value}" for key, value in pairs)
    return f"{prompt}\nNegative prompt: {negative}\n{line}" if negative else f"{prompt}\n{line}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts, prompts, params)
def test_infotext_parse_answers_every_text(prompt: str, negative: str, pairs: list[tuple[str, str]]) -> None:
    parsed = infotext.parse(_infotext(prompt, negative, pairs))
    assert isinstance(parsed["Prompt"], str)
    json.dumps(parsed)  # plain values only


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_infotext_parse_answers_arbitrary_text(text: str) -> None:
    infotext.parse(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts, params, st.sampled_from([Txt2ImgRequest, Img2ImgRequest]))
def test_pasting_an_infotext_is_a_request_or_an_input_error(
    prompt: str, pairs: list[tuple[str, str]], kind: type[Txt2ImgRequest] | type[Img2ImgRequest]
) -> None:
    request = kind(infotext=_infotext(prompt, "", pairs))
    try:
        pasted: object = apply_infotext(request, opts.defaults())
    except FieldError as e:
        pasted = e.field
    assert isinstance(pasted, kind) or pasted == "infotext"


@settings(max_examples=300, deadline=None)
@given(prompts, st.integers(min_value=1, max_value=150))
def test_the_prompt_parser_raises_only_prompt_errors(prompt: str, steps: int) -> None:
    try:
        check_prompt(prompt, steps)
        parse_attention(prompt)
        extract_networks(prompt)
    except PromptError:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(HOSTILE_NUMBERS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=20,
)
FIELDS = [
    "prompt", "steps", "width", "height", "seed", "cfg_scale", "sampler_name", "sampler_index", "scheduler",
    "batch_size", "n_iter", "script_args", "alwayson_scripts", "override_settings", "infotext", "enable_hr",
    "hr_scale", "hr_upscaler", "denoising_strength", "styles", "comments", "mask_blur", "inpainting_fill",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
def test_request_schemas_validate_or_refuse(body: dict[str, Any]) -> None:
    for model in (Txt2ImgRequest, Img2ImgRequest):
        with contextlib.suppress(ValidationError):
            model.model_validate(body).model_dump()
    with contextlib.suppress(ValidationError):
        TypeAdapter(JobRequest).validate_python(body)


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_is_refused_where_free_json_is_accepted() -> None:
    for field in ("script_args", "alwayson_scripts", "override_settings", "comments"):
        deep = [_nested(900)] if field == "script_args" else {"x": _nested(900)}
        with pytest.raises(ValidationError, match="nested more than"):
            Txt2ImgRequest.model_validate({field: deep})
    Txt2ImgRequest.model_validate({"script_args": [_nested(20)]})  # A1111-sized nesting still passes


# -- the same families over real HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "models").mkdir()
    with serve(Settings(models_dir=root / "models", data_dir=root / "data", device="cpu")) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=120) as http:
        yield http


def _png_with(text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=info)
    return base64.b64encode(out.getvalue()).decode()


CRASHERS = [
    "a cat\nSteps: 2, Sampler: Euler, Size: 0x0, First pass size: 0x0",
    "a cat\nSteps: inf, Sampler: Euler, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, Seed: 1e999, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, Clip skip: inf, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, ENSD: 1e999, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, Size: 64x64, First pass size: " + "9" * 5000 + "x1",
    "a cat\nSteps: nan, Sampler: Euler, CFG scale: nan, Size: 64x64",
    "a cat\nSteps: 2, Sampler: Euler, Size: " + "9" * 5000 + "x64",
]


@pytest.mark.parametrize("text", CRASHERS, ids=range(len(CRASHERS)))
def test_pasted_and_read_infotexts_never_crash_the_server(client: httpx.Client, text: str) -> None:
    pasted = client.post("/sdapi/v1/txt2img", json={"infotext": text, "width": 64, "height": 64, "steps": 2})
    assert pasted.status_code in (200, 422), pasted.text
    pasted.json()
    unset = client.post("/sdapi/v1/txt2img", json={"infotext": text})  # every pasted value is used
    assert unset.status_code in (200, 422), unset.text
    read = client.post("/sdapi/v1/png-info", json={"image": _png_with(text)})
    assert read.status_code == 200, read.text
    assert read.json()["info"] == text
    assert png_info(Image.open(io.BytesIO(base64.b64decode(_png_with(text)))))[0] == text


def test_deep_script_args_and_unknown_upscalers_are_refused_before_queueing(
    client: httpx.Client, server: Served
) -> None:
    jobs = server.jobs.count()
    small = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    deep = client.post("/sdapi/v1/txt2img", json={**small, "script_args": _nested(900)})
    assert deep.status_code == 422
    assert deep.json()["detail"][0]["loc"][:2] == ["body", "script_args"]
    for body, where in (
        ({**small, "enable_hr": True, "hr_upscaler": "../../etc/passwd"}, "/sdapi/v1/txt2img"),
        ({**small, "hires": {"upscaler": "../../etc/passwd"}}, "/api/v1/jobs"),
    ):
        refused = client.post(where, json=body)
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"][0]
        assert detail["loc"][-1] in ("hr_upscaler", "upscaler")
        assert "Lanczos" in detail["msg"]
        assert "Latent (bicubic)" in detail["msg"]
    assert server.jobs.count() == jobs


def test_cmd_flags_tell_whether_the_ui_is_served(
    client: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert client.get("/sdapi/v1/cmd-flags").json()["nowebui"] is False
    root = tmp_path_factory.mktemp("no-ui")
    settings = Settings(models_dir=root / "models", data_dir=root / "data", device="cpu", ui=False)
    with serve(settings, ready=False) as served:
        assert httpx.get(f"{served.base}/sdapi/v1/cmd-flags").json()["nowebui"] is True


line_text = st.text(alphabet=st.sampled_from(list('ab :,"\\\n\t-/é1')), max_size=60)


@settings(max_examples=2000, deadline=None)
@given(line_text)
def test_param_pairs_is_a1111s_findall(line: str) -> None:
    assert infotext.param_pairs(line) == infotext.PARAM_RE.findall(line)


@pytest.mark.timeout(60)  # a hang guard, not a timing: A1111's findall needs hours on these
@pytest.mark.parametrize(
    "line", ["a" * 2**21, " " * 2**20 + "-", "-" * 2**18 + ":", "a-" * 2**20, "\t" * 2**20]
)
def test_long_parameter_lines_parse_in_linear_time(line: str) -> None:
    assert infotext.param_pairs(line) == []
    infotext.parse(f"a prompt\n{line}")


def test_native_requests_are_strict_where_a1111_coerces(client: httpx.Client, server: Served) -> None:
    """``/api/v1`` refuses ``"4"`` and ``true`` for numbers; ``/sdapi/v1`` coerces them as A1111's pydantic v1
    models do (``true`` is one step there)."""
    jobs = server.jobs.count()
    for value in ("4", True):
        refused = client.post("/api/v1/jobs", json={"prompt": "x", "steps": value})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"][-1] == "steps"
    assert server.jobs.count() == jobs
    coerced = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": True, "width": 64, "height": 64})
    assert coerced.status_code == 200
    assert json.loads(coerced.json()["info"])["steps"] == 1
