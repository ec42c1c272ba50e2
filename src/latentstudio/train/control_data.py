"""Control-network training data: ``(picture, condition, caption)`` triples from a folder, or the procedural
shapes set of the built-in control model.

Folder: images with same-name captions as ``train lora`` reads them (kohya layout, ``N_name`` subfolders
repeat their images N times; :mod:`latentstudio.train.lora_data`), every picture centre-cropped to the
training square. Its condition is either the image of the same relative path and stem (any image suffix) in
the ``conditioning_data`` folder (kohya's ``conditioning_data_dir``; diffusers' ``conditioning_image``),
fitted the same way, or one of our preprocessors run once on the fitted picture at ``processor_res`` and
cached as a PNG under ``<output_dir>/conditions/`` (keyed by the image file's size, mtime and path, and the
preprocessor's settings), so a resumed run or a second process reads it back instead of recomputing it.

Batches are pure functions of their indices (the loop's exact resume and DDP equivalence rely on it): the
folder's order is :class:`~latentstudio.train.lora_data.BatchOrder`'s, the shapes set's sample ``i`` is a
function of ``(seed, i)``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from latentstudio.control import hint, preprocessors
from latentstudio.control.units import ControlResize
from latentstudio.prompts.conditioning import sdxl_time_ids
from latentstudio.train import lora_data
from latentstudio.train.lora_data import IMAGE_SUFFIXES, BatchOrder, DataError, Picture

if TYPE_CHECKING:
    from latentstudio.models.loader import Components
    from latentstudio.train.config import ControlConfig


@dataclass(frozen=True)
class ControlBatch:
    """One micro-batch: ``pixels [B, 3, R, R]`` in [-1, 1], ``hints [B, C, R, R]`` in [0, 1] (as the
    inference path feeds them), captions, and SDXL's ``time_ids [B, 6]``."""

    pixels: torch.Tensor
    hints: torch.Tensor
    captions: list[str]
    time_ids: torch.Tensor


class ControlSource(Protocol):
    """Where a control task's batches come from."""

    @property
    def name(self) -> str:
        """The default file stem."""
        ...

    @property
    def warnings(self) -> tuple[str, ...]:
        """What reading the data warned about."""
        ...

    def data(self, first: int, size: int) -> ControlBatch:
        """Samples ``first … first + size − 1`` (a pure, picklable function of its arguments)."""
        ...


def latents(components: Components, batch: ControlBatch) -> torch.Tensor:
    """The batch's pictures encoded by the checkpoint's VAE (posterior mean × scaling factor), fp32."""
    vae = components.vae
    param = next(vae.parameters())
    with torch.no_grad():
        encoded: torch.Tensor = vae.encode(batch.pixels.to(param.device, param.dtype)).latent_dist.mean
    return encoded.float() * float(vae.config.scaling_factor)


def _array(images: list[np.ndarray], channels: int) -> torch.Tensor:
    """uint8 ``[R, R, 3]`` maps → ``[B, channels, R, R]`` in [0, 1] (``hint.to_tensor`` of each)."""
    return torch.cat([hint.to_tensor(image)[:, :channels] for image in images])


@dataclass(frozen=True)
class FolderSource:
    """A folder of captioned images and their conditions (see the module docstring)."""

    name: str
    root: Path
    pictures: tuple[Picture, ...]
    order: BatchOrder
    resolution: int
    channels: int
    conditioning: Path | None
    preprocessor: str
    settings: tuple[int, float | None, float | None]  # processor_res, threshold_a, threshold_b
    cache: Path
    warnings: tuple[str, ...]

    def condition_file(self, picture: Picture) -> Path:
        """The condition image of ``picture`` in the conditioning folder (same relative path and stem)."""
        assert self.conditioning is not None
        relative = picture.path.relative_to(self.root).with_suffix("")
        for suffix in IMAGE_SUFFIXES:
            candidate = self.conditioning / relative.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        raise DataError(f"{picture.path}: no condition image {relative}.* in {self.conditioning}")

    def _condition(self, picture: Picture, fitted: np.ndarray) -> np.ndarray:
        """The fitted picture's condition map ``[R, R, 3]`` uint8."""
        size = (self.resolution, self.resolution)
        if self.conditioning is not None:
            path = self.condition_file(picture)
            image, _ = lora_data.fit(_open(path), size)
            return np.asarray(image, dtype=np.uint8).copy()
        stat = picture.path.stat()
        key = hashlib.sha256(
            f"{picture.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        ).hexdigest()
        cached = self.cache / f"{key[:32]}.png"
        if cached.is_file():
            return np.asarray(_open(cached), dtype=np.uint8).copy()
        res, a, b = self.settings
        detected = preprocessors.detect(self.preprocessor, fitted, res, a, b, seed=0)
        fit = hint.fit(detected, ControlResize.JUST_RESIZE, self.resolution, self.resolution)
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        Image.fromarray(fit).save(tmp, format="PNG")
        tmp.replace(cached)  # atomic: two processes computing the same map write the same bytes
        return fit

    def data(self, first: int, size: int) -> ControlBatch:
        entries = self.order.batch(first // size)
        square = (self.resolution, self.resolution)
        pixels, maps, captions, ids = [], [], [], []
        for index in entries:
            picture = self.pictures[index]
            tensor, crop = lora_data.load_pixels(picture, square)
            fitted = ((tensor.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
            pixels.append(tensor)
            maps.append(self._condition(picture, fitted))
            captions.append(picture.caption)
            ids.append(sdxl_time_ids(picture.size[::-1], crop, square)[0])
        return ControlBatch(torch.stack(pixels), _array(maps, self.channels), captions, torch.stack(ids))


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def open_folder(config: ControlConfig) -> FolderSource:
    """The config's data folder, checked now (a missing condition image or an unknown preprocessor is an
    error before the first step)."""
    root = Path(config.data)
    dataset = lora_data.scan_folder(root, config.caption_extension)
    order = BatchOrder([(0, 0)] * len(dataset.pictures), [p.repeats for p in dataset.pictures],
                       config.batch_size, config.seed)  # fmt: skip
    if config.preprocessor:
        preprocessors.find(config.preprocessor)  # FieldError (a ValueError) naming the allowed modules
    settings = (config.processor_res, config.threshold_a, config.threshold_b)
    label = "-".join(str(v) for v in (config.preprocessor, *settings))
    source = FolderSource(
        name=root.resolve().name or "control", root=root, pictures=dataset.pictures, order=order,
        resolution=config.resolution, channels=config.hint_channels,
        conditioning=Path(config.conditioning_data) if config.conditioning_data else None,
        preprocessor=config.preprocessor, settings=settings,
        cache=Path(config.output_dir) / "conditions" / label, warnings=dataset.warnings,
    )  # fmt: skip
    if source.conditioning is not None:
        if not source.conditioning.is_dir():
            raise DataError(f"{source.conditioning}: no such folder")
        for picture in dataset.pictures:
            source.condition_file(picture)
    return source
