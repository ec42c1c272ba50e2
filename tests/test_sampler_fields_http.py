"""The sampler-side fields of issue 22 over real HTTP with a tiny checkpoint: each changes the picture, writes
A1111's infotext key, and a pasted infotext (``infotext`` request field) gives the same picture again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from latentstudio import infotext
from tests.conftest import MakeTiny
from tests.sdapi_support import IMG2IMG_BASE, TXT2IMG_BASE, build_root, decode, generate, init_image_b64
from tests.serving import Served, serve

EULER = {**TXT2IMG_BASE, "sampler_index": "Euler", "seed": 1234, "steps": 6}


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(build_root(make_tiny, tmp_path_factory.mktemp("sampler-fields"))) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c


def _picture(body: dict[str, Any]) -> bytes:
    return decode(body["images"][0]).tobytes()


def _keys(body: dict[str, Any]) -> dict[str, str]:
    return infotext.parse(body["info"]["infotexts"][0])


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        ({"s_churn": 0.5}, {"Sigma churn": "0.5"}),
        (
            {"s_churn": 0.5, "s_tmin": 0.1, "s_tmax": 5},
            {"Sigma churn": "0.5", "Sigma tmin": "0.1", "Sigma tmax": "5.0"},
        ),
        (
            {"s_churn": 0.5, "sampler_index": "Heun", "s_noise": 0.8},
            {"Sigma churn": "0.5", "Sigma noise": "0.8"},
        ),
        ({"override_settings": {"s_churn": 0.7}, "sampler_index": "DPM2"}, {"Sigma churn": "0.7"}),
        ({"s_min_uncond": 100}, {"NGMS": "100.0"}),
        (
            {"s_min_uncond": 100, "override_settings": {"s_min_uncond_all": True}},
            {"NGMS": "100.0", "NGMS all steps": "True"},
        ),
        ({"override_settings": {"sgm_noise_multiplier": True}}, {"SGM noise multiplier": "True"}),
        (
            {"sampler_index": "DPM++ 2M", "override_settings": {"sigma_max": 8.0, "rho": 3.0}},
            {"Schedule max sigma": "8.0", "Schedule rho": "3.0"},
        ),
    ],
)
def test_txt2img_fields_change_the_picture_and_paste_back(
    client: httpx.Client, change: dict[str, Any], keys: dict[str, str]
) -> None:
    plain = generate(client, "txt2img", {**EULER, "sampler_index": change.get("sampler_index", "Euler")})
    body = generate(client, "txt2img", {**EULER, **change})
    assert _picture(body) != _picture(plain)
    written = _keys(body)
    assert {key: written.get(key) for key in keys} == keys
    assert not [key for key in keys if f"{key}: " in plain["info"]["infotexts"][0]]
    text = body["info"]["infotexts"][0]
    again = generate(client, "txt2img", {"infotext": text})
    assert again["info"]["infotexts"][0] == text
    assert _picture(again) == _picture(body)


def test_churn_is_ignored_where_a1111_ignores_it(client: httpx.Client) -> None:
    """Euler a takes no churn and no s_noise in A1111 (they are not in its sampler_extra_params)."""
    plain = generate(client, "txt2img", {**EULER, "sampler_index": "Euler a"})
    body = generate(client, "txt2img", {**EULER, "sampler_index": "Euler a", "s_churn": 0.5, "s_noise": 0.5})
    assert _picture(body) == _picture(plain)
    assert body["info"]["infotexts"] == plain["info"]["infotexts"]


def test_img2img_noise_multiplier_changes_the_picture_and_pastes_back(client: httpx.Client) -> None:
    image = init_image_b64()
    base = {**IMG2IMG_BASE, "init_images": [image], "sampler_index": "Euler", "seed": 77, "steps": 6}
    plain = generate(client, "img2img", base)
    body = generate(client, "img2img", {**base, "initial_noise_multiplier": 0.5})
    assert _picture(body) != _picture(plain)
    assert _keys(body)["Noise multiplier"] == "0.5"
    assert "Noise multiplier: " not in plain["info"]["infotexts"][0]
    text = body["info"]["infotexts"][0]
    again = generate(client, "img2img", {"init_images": [image], "infotext": text})
    assert _picture(again) == _picture(body)
    extra = generate(client, "img2img", {**base, "override_settings": {"img2img_extra_noise": 0.3}})
    assert _keys(extra)["Extra noise"] == "0.3"
    assert _picture(extra) != _picture(plain)
