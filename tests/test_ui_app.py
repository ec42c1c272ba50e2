"""The UI mount without a browser: served at / by default, absent with ``ui=False``, API routes first;
the UI backend's answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from safetensors.torch import load_file, save_file

from latentstudio.config import Settings
from latentstudio.models.families import Family
from latentstudio.server.ui_backend import SdapiBackend
from tests.conftest import MakeTiny
from tests.serving import models_root, serve


def test_ui_is_served_at_root_and_can_be_turned_off(make_tiny: MakeTiny, tmp_path: Path) -> None:
    models = models_root(make_tiny(Family.SD1).path, tmp_path)
    for ui in (True, False):
        settings = Settings(models_dir=models, data_dir=tmp_path / f"data-{ui}", device="cpu", ui=ui)
        with serve(settings) as served, httpx.Client(base_url=served.base, timeout=30) as client:
            page = client.get("/")
            assert page.status_code == (200 if ui else 404)
            if ui:
                assert "text/html" in page.headers["content-type"]
                assert "fonts.googleapis" not in client.get("/config").text  # system fonts, nothing fetched
            # the API keeps its routes under the UI's catch-all mount
            assert client.get("/sdapi/v1/samplers").status_code == 200
            assert client.get("/api/v1/jobs").status_code == 200
            assert client.get("/healthz").status_code == 200


def test_the_ui_backend_gives_native_sizes_from_the_file_header(make_tiny: MakeTiny, tmp_path: Path) -> None:
    models = models_root(make_tiny(Family.SD1).path, tmp_path)
    folder = models / "Stable-diffusion"
    wide = {"latentstudio.architecture": json.dumps({"unet": {"sample_size": 96}})}  # 96 latents: 768 px
    save_file(load_file(folder / "tiny.safetensors"), folder / "wide.safetensors", metadata=wide)
    (folder / "zz-broken.safetensors").write_bytes(b"not a model")
    settings = Settings(models_dir=models, data_dir=tmp_path / "data", device="cpu")
    with serve(settings) as served:
        manager = served.app.state.services.manager
        backend = SdapiBackend(served.app.state.services)
        assert backend.catalog().native_size == 512  # the current checkpoint: tiny SD1
        assert backend.native_size("wide.safetensors") == 768
        assert [p.name for p in manager.loaded()] == ["tiny.safetensors"]  # wide: its header read, not loaded
        # an unknown or unreadable checkpoint has no size: the page keeps its own
        assert backend.native_size("zz-broken.safetensors") is None
        assert backend.native_size("missing.safetensors") is None
        backend.set_options({"sd_model_checkpoint": "zz-broken.safetensors"})
        assert backend.catalog().native_size is None
        backend.set_options({"sd_model_checkpoint": "wide"})
        assert backend.catalog().native_size == 768


def test_the_script_dropdowns_offer_a1111s_scripts_with_their_arguments() -> None:
    import gradio as gr

    from latentstudio.server.ui_backend import script_fields
    from latentstudio.ui.scripts import NO_SCRIPT, script_panel
    from latentstudio.ui.scripts import script_fields as chosen_args

    fields = script_fields()
    assert [f.title for f in fields["txt2img"]] == ["Prompts from file or textbox", "X/Y/Z plot"]
    assert [f.title for f in fields["img2img"]] == [
        "Loopback", "Outpainting mk2", "Poor man's outpainting", "Prompts from file or textbox", "SD upscale",
        "X/Y/Z plot",
    ]  # fmt: skip
    xyz = fields["txt2img"][1]
    assert (xyz.args[0]["label"], xyz.args[0]["value"]) == ("X type", "Seed")
    assert "Prompt S/R" in xyz.args[0]["choices"]
    upscale = fields["img2img"][4]
    assert upscale.args[2]["choices"][:3] == ["None", "Lanczos", "Nearest"]
    with gr.Blocks():
        controls = script_panel("txt2img", fields["txt2img"])
    prompts, plot = (len(controls.inputs[f.title]) for f in fields["txt2img"])
    assert (prompts, plot) == (5, 18)  # with the later make_combined checkbox
    values = [NO_SCRIPT, *([None] * (prompts + plot))]
    assert chosen_args(controls, values) == {}
    values = ["X/Y/Z plot", *([None] * prompts), "Steps", "1-3", [], *([0] * 13), 8.0, True]
    picked = chosen_args(controls, values)
    assert picked["script_name"] == "X/Y/Z plot"
    assert picked["script_args"][:3] == ["Steps", "1-3", []]
    assert picked["script_args"][16] == 8  # the margin slider's whole steps, sent as an integer
