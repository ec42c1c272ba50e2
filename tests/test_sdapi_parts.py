"""The pure A1111 pieces: options store, infotext pasting, info helpers, grids, extras upscaling, png-info."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from latentstudio.api.common import extras_spec
from latentstudio.api.sdapi import extras, listing, response
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.models import ExtrasSingleRequest, Txt2ImgRequest
from latentstudio.api.sdapi.pasting import apply_infotext
from latentstudio.config import Settings
from latentstudio.core import FieldError
from latentstudio.jobs import JobKind
from latentstudio.postprocess.extras import ExtrasOptions

EXAMPLE_3 = (
    "masterpiece, <lora:detail:0.6>, 1girl\nsecond line of prompt\nNegative prompt: lowres, bad hands\n"
    "more negative\nSteps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 42, "
    "Size: 512x512, Model hash: abcdef1234, Model: mymodel, Clip skip: 2, Variation seed: 99, "
    "Variation seed strength: 0.3, Seed resize from: 640x480, ENSD: 31337, Version: v1.9.4"
)


# -- options ---------------------------------------------------------------------------------------------
def test_options_store_round_trip_keeps_only_changes(tmp_path: Path) -> None:
    store = opts.OptionsStore(tmp_path)
    assert store.load() == opts.defaults()
    assert store.load()["send_seed"] is True
    assert store.load()["randn_source"] == "GPU"
    store.update(opts.check({"send_seed": False, "CLIP_stop_at_last_layers": 2.0, "jpeg_quality": 80}))
    assert store.load()["send_seed"] is False
    assert store.load()["CLIP_stop_at_last_layers"] == 2
    assert json.loads(store.path.read_text()) == {"send_seed": False, "CLIP_stop_at_last_layers": 2}
    store.update({"send_seed": True})  # back to the default: dropped from the file
    assert json.loads(store.path.read_text()) == {"CLIP_stop_at_last_layers": 2}
    assert not list(tmp_path.glob(".options-*"))  # no temp files left


def test_options_store_ignores_a_corrupt_or_hostile_file(tmp_path: Path) -> None:
    store = opts.OptionsStore(tmp_path)
    store.path.write_text("{not json")
    assert store.load() == opts.defaults()
    store.path.write_text(json.dumps({"__class__": 1, "CLIP_stop_at_last_layers": 99, "send_size": False}))
    loaded = store.load()
    assert "__class__" not in loaded
    assert loaded["CLIP_stop_at_last_layers"] == 1
    assert loaded["send_size"] is False


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    store = opts.OptionsStore(tmp_path)
    keys = ["send_seed", "send_size", "samples_save", "grid_save", "enable_pnginfo", "save_to_dirs"]
    threads = [threading.Thread(target=store.update, args=({key: False},)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(store.load()[key] is False for key in keys)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"send_seed": "yes"}, "send_seed"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"jpeg_quality": float("inf")}, "jpeg_quality"),
        ({"samples_format": "gif"}, "samples_format"),
        ({"img2img_background_color": "red; x"}, "img2img_background_color"),
        ({"tiling_axes": "diagonal"}, "tiling_axes"),
        ({"face_restoration": True}, "face_restoration"),
        ({"quicksettings_list": "sd_vae"}, "quicksettings_list"),
        ({"nope": 1}, "nope"),
    ],
)
def test_option_checks_name_the_key(values: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as e:
        opts.check(values)
    assert e.value.field == field


# -- infotext pasting ------------------------------------------------------------------------------------
def test_infotext_fills_unset_fields_and_settings() -> None:
    req = Txt2ImgRequest(infotext=EXAMPLE_3, steps=5, override_settings={"eta_noise_seed_delta": 1})
    pasted = apply_infotext(req, opts.defaults())
    assert pasted.prompt == "masterpiece, <lora:detail:0.6>, 1girl\nsecond line of prompt"
    assert pasted.negative_prompt == "lowres, bad hands\nmore negative"
    assert (pasted.steps, pasted.sampler_name, pasted.cfg_scale, pasted.seed) == (5, "Euler a", 6.5, 42)
    assert (pasted.subseed, pasted.subseed_strength) == (99, 0.3)
    assert (pasted.seed_resize_from_h, pasted.seed_resize_from_w) == (640, 480)  # A1111's swapped fields
    assert pasted.override_settings == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 1}
    assert pasted.enable_hr is False


def test_infotext_with_hires_keys_turns_on_hires() -> None:
    text = "a\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2"
    assert apply_infotext(Txt2ImgRequest(infotext=text), opts.defaults()).enable_hr is True


def test_infotext_values_breaking_limits_are_refused() -> None:
    with pytest.raises(FieldError) as e:
        apply_infotext(Txt2ImgRequest(infotext="a\nSteps: 900, Sampler: Euler, Seed: 1"), opts.defaults())
    assert e.value.field == "infotext"
    assert "steps" in e.value.message


# -- info helpers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("count", "n_rows", "batch", "size"),
    [(2, -1, 2, (128, 64)), (4, -1, 1, (128, 128)), (3, -1, 3, (128, 128)), (6, 0, 3, (128, 192))],
)
def test_grid_layout(count: int, n_rows: int, batch: int, size: tuple[int, int]) -> None:
    images = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(count)]
    grid = response.grid(images, n_rows, batch)
    assert grid.size == size
    assert grid.getpixel((70, 10)) == (40, 0, 0)  # the second image sits right of the first


def test_timestamp_format() -> None:
    assert response.timestamp(None) == "0"
    assert len(response.timestamp(1_700_000_000.0)) == 14
    assert response.timestamp(1.0).isdigit()


# -- extras and png-info ---------------------------------------------------------------------------------
def test_extras_request_becomes_a_job_spec() -> None:
    source = Image.new("RGB", (8, 8))
    request = ExtrasSingleRequest(image="x", upscaler_1="Lanczos", gfpgan_visibility=0.25, upscale_first=True)
    spec = extras_spec(request, [source])
    assert spec.options == ExtrasOptions(upscaler_1="Lanczos", gfpgan_visibility=0.25, upscale_first=True)
    assert (spec.images, spec.source, spec.kind) == ((source,), "sdapi", JobKind.EXTRAS)
    assert extras.html_info(["x", 'a "b" <c>']) == "<p>a &quot;b&quot; &lt;c&gt;</p>"  # the last image's
    assert extras.html_info([]) == "<p></p>"


def test_png_info_splits_infotext_and_items() -> None:
    image = Image.new("RGB", (8, 8))
    image.info.update({"parameters": "a\nSteps: 1, Seed: 2, Size: 8x8", "Software": "x", "dpi": (72, 72)})
    text, items = extras.png_info(image)
    assert text.startswith("a\n")
    assert items == {"Software": "x"}


def test_cmd_flags_never_carry_credentials(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, data_dir=tmp_path, api_auth="admin:s3cret:pass")
    flags = json.dumps(listing.cmd_flags(settings))
    assert "s3cret" not in flags
    assert "admin" not in flags
    assert "api_auth" not in flags
