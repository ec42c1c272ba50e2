"""Optional NSFW safety checker (off by default, like A1111, which has none; on for public deployments).

The checker is diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision tower, a projection and the
concept embeddings with their thresholds) built from a **local** folder in the Hugging Face layout:
``config.json`` (a ``CLIPConfig``) plus ``model.safetensors`` (or ``pytorch_model.bin``, read with the
weights-only unpickler). Nothing is downloaded and nothing from the files executes: the config is JSON,
the weights go through :func:`latentstudio.models.files.read_tensor_file` and a strict ``load_state_dict``.
Flagged images are replaced by black images of the same size, as diffusers does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentstudio.models.files import ModelFileError, read_tensor_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class SafetyCheckerError(ValueError):
    """A safety checker folder that cannot be used (missing or bad config or weights)."""


@dataclass(frozen=True)
class SafetyResult:
    """``images``: the inputs, flagged ones replaced by black; ``flagged[i]``: image i had an NSFW concept."""

    images: list[Image.Image]
    flagged: list[bool]


def _weights_path(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise SafetyCheckerError(f"{folder}: no weights; expected one of {', '.join(WEIGHT_FILES)}")


def load_checker(folder: Path, *, device: torch.device | None = None) -> Any:
    """Build the checker from ``folder`` (``config.json`` + weights), fp32, eval mode, on ``device``."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SafetyCheckerError(f"{folder}: not a safety checker folder (no config.json)")
    try:
        config = CLIPConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise SafetyCheckerError(f"{config_path}: not a CLIP config: {e}") from e
    try:
        tensors = dict(read_tensor_file(_weights_path(folder)).tensors)
    except ModelFileError as e:
        raise SafetyCheckerError(str(e)) from e
    checker = StableDiffusionSafetyChecker(config)
    try:
        checker.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise SafetyCheckerError(f"{folder}: weights do not fit the config: {first}") from e
    return checker.to(device or torch.device("cpu"), torch.float32).eval()


def clip_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """CLIP preprocessing → ``[B, 3, size, size]``: shortest side to ``size`` (bicubic), centre crop,
    [0, 1], then CLIP's mean/std normalisation (what ``CLIPImageProcessor`` does with its defaults)."""
    batch = []
    for image in images:
        rgb = image.convert("RGB")
        scale = size / min(rgb.size)
        w, h = max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))
        rgb = rgb.resize((w, h), resample=Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
        batch.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1))
    pixels = torch.stack(batch)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (pixels - mean) / std


class SafetyChecker:
    """A loaded checker; :meth:`check` filters a batch. Built once per process when the setting is on."""

    def __init__(self, folder: Path, *, device: torch.device | None = None) -> None:
        self.folder = folder
        self.model = load_checker(folder, device=device)

    def check(self, images: Sequence[Image.Image]) -> SafetyResult:
        """Flag and black out NSFW images (diffusers' thresholds and special-care adjustment)."""
        if not images:
            return SafetyResult([], [])
        size = int(self.model.config.vision_config.image_size)
        pixels = clip_pixels(images, size).to(next(self.model.parameters()).device)
        with torch.inference_mode():
            _, flags = self.model(clip_input=pixels, images=[torch.zeros(1) for _ in images])
        flagged = [bool(f) for f in flags]
        out = [Image.new("RGB", im.size) if bad else im for im, bad in zip(images, flagged, strict=True)]
        return SafetyResult(out, flagged)
