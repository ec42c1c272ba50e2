"""The UI mount without a browser: served at / by default, absent with ``ui=False``, API routes first."""

from __future__ import annotations

from pathlib import Path

import httpx

from latentstudio.config import Settings
from latentstudio.models.families import Family
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
