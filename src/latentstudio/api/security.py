"""HTTP Basic auth on every route and the request-body limit, as pure ASGI middleware.

Pure ASGI (not FastAPI dependencies) so that they cover every route, including routers and apps
mounted later (A1111 layer, UI, docs, OpenAPI schema). Auth runs before the body is read, so an
unauthenticated client cannot make the server buffer 50 MB.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from latentstudio.asgi import replay_body


class CredentialsError(ValueError):
    """A malformed ``--api-auth`` value."""


def parse_credentials(value: str) -> dict[str, str]:
    """``user:pass[,user2:pass2]`` → ``{user: password}``; split on the first ``:`` only, so passwords
    may contain ``:`` (A1111's parser fails on them). Commas separate entries."""
    credentials: dict[str, str] = {}
    for entry in value.split(","):
        user, colon, password = entry.strip().partition(":")
        if not colon or not user or not password:
            raise CredentialsError("--api-auth: each entry must be user:password (comma-separated)")
        credentials[user] = password
    return credentials


def check_basic(header: str | None, credentials: Mapping[str, str]) -> bool:
    """Whether an ``Authorization`` header carries one of the credentials (constant-time compares)."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, colon, password = decoded.partition(":")
    if not colon:
        return False
    matched = False
    for known_user, known_password in credentials.items():  # no early exit: time does not reveal users
        same_user = hmac.compare_digest(user.encode(), known_user.encode())
        same_password = hmac.compare_digest(password.encode(), known_password.encode())
        matched |= same_user and same_password
    return matched


async def _reply(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BasicAuthMiddleware:
    """401 with ``WWW-Authenticate: Basic`` unless the request carries valid credentials."""

    def __init__(self, app: ASGIApp, credentials: Mapping[str, str]) -> None:
        self.app = app
        self.credentials = dict(credentials)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        if check_basic(header, self.credentials):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        challenge = [(b"www-authenticate", b'Basic realm="latentstudio", charset="UTF-8"')]
        await _reply(send, 401, "Incorrect username or password", challenge)


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: at once from Content-Length, else while counting the stream.

    The body is buffered here (at most ``limit`` bytes) and replayed to the app, so the app never sees
    a truncated body and a response is never started twice.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _reply(send, 413, f"request body larger than {self.limit} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _reply(send, 413, f"request body larger than {self.limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
