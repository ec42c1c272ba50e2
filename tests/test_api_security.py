"""Auth, body limit, CORS and image-decoding limits of the server (real HTTP where the transport matters)."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from typer.testing import CliRunner

from latentstudio.api.imageio import decode_image
from latentstudio.api.security import CredentialsError, check_basic, parse_credentials
from latentstudio.cli import app as cli
from latentstudio.config import Settings
from latentstudio.core import FieldError
from tests.serving import Served, serve


def _settings(tmp_path: Path, **kwargs: object) -> Settings:
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    return Settings(
        models_dir=models,
        data_dir=tmp_path / "data",
        device="cpu",
        builtin_model=False,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server without models (not ready, but every route answers) behind two users' credentials."""
    settings = _settings(tmp_path_factory.mktemp("auth"), api_auth=SecretStr("alice:pa:ss:wörd,bob:hunter2"))
    with serve(settings, ready=False) as served:
        yield served


def test_credentials_split_on_the_first_colon() -> None:
    assert parse_credentials("alice:pa:ss,bob:x") == {"alice": "pa:ss", "bob": "x"}
    for bad in ("alice", "alice:", ":pw", "alice:pw,"):
        with pytest.raises(CredentialsError):
            parse_credentials(bad)
    token = base64.b64encode(b"alice:pa:ss").decode()
    assert check_basic(f"Basic {token}", {"alice": "pa:ss"})
    assert not check_basic(f"Basic {token}", {"alice": "pa"})
    assert not check_basic("Basic !!!", {"alice": "pa:ss"})
    assert not check_basic(f"Bearer {token}", {"alice": "pa:ss"})


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/api/v1/jobs", "/openapi.json", "/docs", "/nope"])
def test_every_route_needs_credentials(guarded: Served, path: str) -> None:
    response = httpx.get(guarded.base + path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(guarded.base + path, auth=("alice", "pa:ss")).status_code == 401  # truncated password
    assert httpx.get(guarded.base + path, auth=("mallory", "pa:ss:wörd")).status_code == 401


def test_valid_credentials_pass_and_openapi_declares_basic_auth(guarded: Served) -> None:
    assert httpx.get(guarded.base + "/healthz", auth=("alice", "pa:ss:wörd")).status_code == 200
    assert httpx.get(guarded.base + "/api/v1/jobs", auth=("bob", "hunter2")).json()["total"] == 0
    ready = httpx.get(guarded.base + "/readyz", auth=("bob", "hunter2"))
    assert ready.status_code == 503
    assert "no checkpoints" in ready.json()["detail"]
    for path in ("/api/v1/jobs", "/sdapi/v1/txt2img"):  # nothing to run a job with: the server's fault
        job = httpx.post(guarded.base + path, json={"prompt": "x", "steps": 2}, auth=("bob", "hunter2"))
        assert job.status_code == 503, job.text
        assert "no checkpoints in" in job.json()["detail"]
    schema = httpx.get(guarded.base + "/openapi.json", auth=("bob", "hunter2")).json()
    assert schema["components"]["securitySchemes"]["basic"] == {"type": "http", "scheme": "basic"}
    unauthenticated_post = httpx.post(guarded.base + "/api/v1/jobs", content=b"x" * 1_000_000)
    assert unauthenticated_post.status_code == 401  # refused before the body is read


def _raw(base: str, request: bytes, body_chunks: Iterable[bytes] = ()) -> tuple[int, float]:
    """Send a raw HTTP/1.1 request (headers, then chunks while the server reads); the status and the
    seconds until it arrived."""
    url = urlparse(base)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(request)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        reply = s.recv(4096)
    return int(reply.split(b" ", 2)[1]), time.monotonic() - started


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = _settings(tmp_path_factory.mktemp("open"), cors_allow_origins=("http://ui.example",))
    with serve(settings, ready=False) as served:
        yield served


def test_body_over_50_mb_is_413_from_content_length_at_once(open_server: Served) -> None:
    head = (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000000\r\n\r\n"
    )
    status, seconds = _raw(open_server.base, head)
    assert status == 413
    assert seconds < 1.0


def test_chunked_body_over_50_mb_is_413_while_streaming(open_server: Served) -> None:
    head = (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, _ = _raw(open_server.base, head, iter([chunk] * 60))
    assert status == 413
    assert httpx.get(open_server.base + "/healthz").status_code == 200  # still up


def test_cors_only_for_the_configured_origins(open_server: Served, tmp_path: Path) -> None:
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    allowed = httpx.options(open_server.base + "/api/v1/jobs", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == "http://ui.example"
    other = httpx.get(open_server.base + "/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_without_the_option(tmp_path: Path) -> None:
    with serve(_settings(tmp_path), ready=False) as served:
        response = httpx.get(served.base + "/healthz", headers={"Origin": "http://evil.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


def _png(image: Image.Image) -> str:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_decoded_images_are_limited_before_decoding() -> None:
    assert decode_image(_png(Image.new("RGB", (64, 32))), "f", max_pixels=40_000_000).size == (64, 32)
    assert decode_image(_png(Image.new("L", (8, 8))), "f", max_pixels=100).mode == "RGB"
    cases = [
        (_png(Image.new("1", (8_000, 6_000))), "more than"),  # 48 MP: over our 40 MP limit
        (_png(Image.new("1", (10_000, 10_000))), "too large"),  # 100 MP: Pillow's bomb warning
        (_png(Image.new("1", (15_000, 15_000))), "too large"),  # 225 MP: Pillow's bomb error
        ("data:image/png;base64,////", "decode"),
        ("", "empty"),
        ("file:///etc/passwd", "URL"),
    ]
    for data, message in cases:
        with pytest.raises(FieldError, match=message) as caught:
            decode_image(data, "init_image", max_pixels=40_000_000)
        assert caught.value.field == "init_image"


def test_serve_refuses_a_public_bind_without_auth_and_bad_credentials(tmp_path: Path) -> None:
    runner = CliRunner()
    public = runner.invoke(cli, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert public.exit_code == 1
    assert "--insecure-no-auth" in public.output
    bad = runner.invoke(cli, ["serve", "--api-auth", "nocolon", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1
    assert "user:password" in bad.output
