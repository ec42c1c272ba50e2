"""One refusal type, three edges: :class:`FieldError` from the bottom layer becomes FastAPI's 422 body, the
CLI's one error line and the UI's message box, each by one function."""

from __future__ import annotations

import json
import pickle

import pytest
import typer
from fastapi import FastAPI
from fastapi.testclient import TestClient

from latentstudio.api.errors import field_error, install_error_handlers
from latentstudio.cli import _refused
from latentstudio.core import FieldError
from latentstudio.pipeline.params import GenerationParams
from latentstudio.ui.common import error_md


def test_a_field_error_names_its_field_and_reads_as_field_colon_message() -> None:
    error = FieldError("alwayson_scripts.x", "Script 'x' not found: no scripts here")
    assert isinstance(error, ValueError)
    assert (error.field, error.message) == ("alwayson_scripts.x", "Script 'x' not found: no scripts here")
    assert str(error) == "alwayson_scripts.x: Script 'x' not found: no scripts here"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.field, copy.message) == (FieldError, error.field, error.message)


def test_the_http_edge_answers_fastapis_422_shape() -> None:
    response = field_error(FieldError("alwayson_scripts.x", "a message: with a colon"))
    assert response.status_code == 422
    assert json.loads(response.body) == {
        "detail": [
            {
                "loc": ["body", "alwayson_scripts", "x"],
                "msg": "a message: with a colon",
                "type": "value_error",
            }
        ]
    }


def test_a_field_error_from_the_pipeline_reaches_a_client_as_that_422() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/check")
    async def check() -> None:
        GenerationParams(prompt="a", steps=0).resolved()

    with TestClient(app) as client:
        answer = client.post("/check")
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": [
            {"loc": ["body", "steps"], "msg": "must be an integer in [1, 150], got 0", "type": "value_error"}
        ]
    }


def test_the_cli_edge_prints_one_error_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = _refused(FieldError("steps", "must be an integer in [1, 150], got 0"))
    assert isinstance(exit_, typer.Exit)
    assert exit_.exit_code == 1
    assert capsys.readouterr().err == "error: steps: must be an integer in [1, 150], got 0\n"


def test_the_ui_edge_shows_the_field_in_bold() -> None:
    assert (
        error_md(FieldError("mask", "draw over the part to repaint"))
        == "**mask**: draw over the part to repaint"
    )
