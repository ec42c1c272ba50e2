"""Gradio's event routes answer a request naming no event with a 4xx JSON, never a bare 500.

Gradio 6.31 looks the event up before its error handling: ``route_utils.get_fn`` raises
``FnIndexInferError`` for an unknown ``/gradio_api/run/<name>`` and ``KeyError`` for a ``fn_index`` that
is no event (``queue/join``, or any route's body), and FastAPI's validation answer for a body with
``NaN`` / ``1e999`` in a field cannot be written as JSON. Each became "Internal Server Error" in plain
text with a traceback in the log. :class:`EventRouteGuard` (ASGI, in front of the mounted Gradio app)
checks the name and the index against the Blocks' events first (and makes Gradio's 500 for a refused
input a 422); :func:`validation_error` is the Gradio app's answer to a body its schema refuses (the
rejected input is never echoed: it may be ``NaN``).
"""

from __future__ import annotations

import json
import re

import gradio as gr
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from gradio.route_utils import API_PREFIX
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentstudio.asgi import replay_body

# The POST routes that name an event: by api_name in the path, or by fn_index in the body
_NAMED = re.compile(rf"^{re.escape(API_PREFIX)}/(?P<route>run|api|call|call/v2)/(?P<name>[^/]+)/?$")
_DIRECT = ("run", "api")  # the routes that answer with the event's result (or its error) in the response
_BY_INDEX = (f"{API_PREFIX}/queue/join", f"{API_PREFIX}/queue/join/")


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape (``loc``, ``msg``, ``type``), without the rejected input."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _field_error(field: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, status)


class EventRouteGuard:
    """ASGI middleware: a POST to a Gradio event route must name an event of ``blocks``: 422 for a
    ``fn_index`` that is not one of the events' indexes, else (no index: the event is looked up by name)
    404 for an unknown ``api_name``. The body is read
    (the server's body limit, outside, bounds it) and handed on unchanged. A refused input called by name
    (``/run``, ``/api``) is a 422, where Gradio answers every error with a 500."""

    def __init__(self, app: ASGIApp, blocks: gr.Blocks) -> None:
        self.app = app
        self.blocks = blocks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        root = str(scope.get("root_path") or "")
        if root and path.startswith(root):
            path = path[len(root) :]
        named = _NAMED.match(path)
        if named is None and path not in _BY_INDEX:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away before sending it all: nobody to answer
            return
        index = _fn_index(body)  # Gradio looks an event up by its index first, by name only without one
        if index is not None and not (type(index) is int and index in self.blocks.fns):
            message = "not the index of one of this page's events"
            await _field_error("fn_index", message, 422)(scope, receive, send)
            return
        if index is None and named is not None and named["name"] not in self._api_names():
            answer = JSONResponse({"detail": "api_name: this page has no event of that name"}, 404)
            await answer(scope, receive, send)
            return
        direct = named is not None and named["route"] in _DIRECT
        await self.app(scope, replay_body(body, receive), _refusals_as_422(send) if direct else send)

    def _api_names(self) -> set[str]:
        return {fn.api_name for fn in self.blocks.fns.values() if isinstance(fn.api_name, str)}


def _fn_index(body: bytes) -> object:
    """The ``fn_index`` of a JSON object body (None when there is none, or no JSON object: Gradio's own
    checks answer those)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value.get("fn_index") if isinstance(value, dict) else None


def _refusals_as_422(send: Send) -> Send:
    """A ``send`` that turns Gradio's 500 for a deliberate refusal (a ``gr.Error``, whose JSON answer
    carries a ``title``: a refused input) into 422; any other 500 (the server's fault) stays 500."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] == 500:
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            answer = None
        refused = isinstance(answer, dict) and "error" in answer and "title" in answer
        await send({**held, "status": 422 if refused else 500})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return wrapped


async def _read_body(receive: Receive) -> bytes | None:
    """The request body; None when the client went away before sending all of it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


__all__ = ["EventRouteGuard", "validation_error"]
