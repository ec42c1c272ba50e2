"""Helpers for the ``/sdapi/v1`` HTTP tests: a models folder with two tiny checkpoints, a LoRA file and
styles; A1111's own test payloads (reference/a1111-compat.md §9); image encoding helpers."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image
from safetensors.torch import save_file

from latentstudio.config import Settings
from latentstudio.models.families import Family
from tests.conftest import MakeTiny

STYLES_CSV = 'name,prompt,negative_prompt\nframed,"masterpiece, {prompt}",lowres\nplain,oil painting,\n'

# §9: A1111's test_txt2img.py base payload, and its img2img one (images filled in by the tests)
TXT2IMG_BASE: dict[str, Any] = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
    "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
    "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
    "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
    "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
}  # fmt: skip
IMG2IMG_BASE: dict[str, Any] = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
    "include_init_images": False, "inpaint_full_res": False, "inpaint_full_res_padding": 0,
    "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None, "mask_blur": 4, "n_iter": 1,
    "negative_prompt": "", "override_settings": {}, "prompt": "example prompt", "resize_mode": 0,
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}  # fmt: skip
EXTRAS_BASE: dict[str, Any] = {
    "resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
    "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
    "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
}  # fmt: skip


def build_root(make_tiny: MakeTiny, root: Path) -> Settings:
    """``root/models`` with checkpoints ``tiny`` and ``other`` (different weights), a LoRA file, a
    ``styles.csv`` in the data folder; the settings of a CPU server over them."""
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "VAE").mkdir()
    (models / "Lora").mkdir()
    shutil.copyfile(make_tiny(Family.SD1).path, models / "Stable-diffusion" / "tiny.safetensors")
    shutil.copyfile(make_tiny(Family.SD1, seed=1).path, models / "Stable-diffusion" / "other.safetensors")
    metadata = {"ss_output_name": "detail_tweaker", "ss_tag_frequency": json.dumps({"a": {"b": 1}})}
    save_file({"x": torch.zeros(1)}, str(models / "Lora" / "detail.safetensors"), metadata=metadata)
    data = root / "data"
    data.mkdir()
    (data / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    return Settings(models_dir=models, data_dir=data, device="cpu", preview_every=1)


def png_b64(image: Image.Image, *, data_url: bool = False) -> str:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/png;base64,{text}" if data_url else text


def init_image_b64() -> str:
    """A 64×64 RGBA image like A1111's ``img2img_basic.png``, as a data URI (as its conftest sends it)."""
    image = Image.new("RGBA", (64, 64), (200, 40, 40, 255))
    image.paste((20, 20, 220, 0), (16, 16, 48, 48))
    return png_b64(image, data_url=True)


def mask_b64() -> str:
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste((255, 255, 255), (16, 16, 48, 48))
    return png_b64(mask, data_url=True)


def bomb_png_b64(width: int = 100_000, height: int = 100_000) -> str:
    """A valid tiny PNG whose header claims ``width × height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode("ascii")


def decode(b64: str) -> Image.Image:
    image = Image.open(BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def generate(client: httpx.Client, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST a generation and return the body with ``info`` decoded; fails on a non-200."""
    response = client.post(f"/sdapi/v1/{path}", json=payload)
    assert response.status_code == 200, response.text[:2000]
    body: dict[str, Any] = response.json()
    assert isinstance(body["info"], str)
    body["info"] = json.loads(body["info"])
    return body


def refused_field(response: httpx.Response) -> str:
    """The field a 422 names (last element of ``detail[0].loc``)."""
    assert response.status_code == 422, response.text[:2000]
    return ".".join(str(p) for p in response.json()["detail"][0]["loc"][1:])
