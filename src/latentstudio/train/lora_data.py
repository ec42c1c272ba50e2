"""``train lora`` data: a kohya-style folder of images with same-name captions, aspect-ratio buckets, and
the batch order.

Folder layout (kohya sd-scripts' DreamBooth-style ``train_data_dir``): images with a ``.txt`` caption of
the same name, either directly in the folder (repeated once) or in subfolders named ``N_name``, whose
images are repeated N times per epoch. An image without a caption (or with an empty one) is captioned with
its subfolder's ``name`` (kohya's class token), or left empty at the top level, with a warning. Subfolders
not named ``N_name`` are ignored with a warning, as kohya does.

Buckets (kohya's ``make_bucket_resolutions``/``select_bucket``): sizes of area ≈ resolution², sides
multiples of ``step`` between ``min_side`` and ``max_side``; each image goes to the bucket nearest its
aspect ratio, is resized to cover it and centre-cropped. Every batch comes from one bucket.

Order: epoch e shuffles each bucket's entries (an image once per repeat) and the batches with a generator
seeded by ``(seed, e)``, so batch k is a pure function of k and a resumed run sees the same batches.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEATS = re.compile(r"^(\d+)_(.+)$")
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
Size = tuple[int, int]  # (width, height)


class DataError(ValueError):
    """A training folder or image that cannot be used; the message names the path."""


@dataclass(frozen=True)
class Picture:
    """One training image: its caption, the folder it came from (kohya's dataset-dir key), how many times
    an epoch repeats it, and its (width, height) after EXIF orientation."""

    path: Path
    caption: str
    folder: str
    repeats: int
    size: Size


@dataclass(frozen=True)
class Dataset:
    """The pictures of a folder (sorted by path) and the warnings its scan produced."""

    root: Path
    pictures: tuple[Picture, ...]
    warnings: tuple[str, ...] = ()

    @property
    def num_train_images(self) -> int:
        """Images per epoch, repeats included (kohya's ``ss_num_train_images``)."""
        return sum(p.repeats for p in self.pictures)

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_dataset_dirs``: ``{folder: {"n_repeats": N, "img_count": images}}``."""
        dirs: dict[str, dict[str, int]] = {}
        for p in self.pictures:
            entry = dirs.setdefault(p.folder, {"n_repeats": p.repeats, "img_count": 0})
            entry["img_count"] += 1
        return dirs

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_tag_frequency``: per folder, how many captions have each comma-separated tag."""
        counts: dict[str, Counter[str]] = {}
        for p in self.pictures:
            tags = {t.strip() for t in p.caption.split(",") if t.strip()}
            counts.setdefault(p.folder, Counter()).update(tags)
        return {folder: dict(sorted(c.items())) for folder, c in counts.items()}


def _image_size(path: Path) -> Size:
    """(width, height) as the image will be used (EXIF orientation applied), reading the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def _caption(image: Path, suffix: str) -> str | None:
    """The first line of the image's caption file, stripped; None when there is none or it is empty."""
    path = image.with_suffix(suffix)
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: unreadable caption ({e})") from None
    first = lines[0].strip() if lines else ""
    return first or None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(root: Path, caption_extension: str = ".txt") -> Dataset:
    """The pictures of a kohya-style training folder (see the module docstring).

    Raises:
        DataError: the folder is missing or holds no images, or an image is unreadable (named).
    """
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    warnings: list[str] = []
    groups: list[tuple[Path, str, int, str]] = [(root, root.name, 1, "")]  # folder, key, repeats, token
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _REPEATS.match(sub.name)
        if match is None:
            warnings.append(f"{sub}: ignored (not named N_name, N the repeats)")
            continue
        groups.append((sub, sub.name, int(match.group(1)), match.group(2)))
    pictures: list[Picture] = []
    for folder, key, repeats, token in groups:
        if repeats < 1:
            warnings.append(f"{folder}: ignored (0 repeats)")
            continue
        missing = 0
        for path in _images(folder):
            caption = _caption(path, caption_extension)
            if caption is None:
                missing += 1
                caption = token
            pictures.append(Picture(path, caption, key, repeats, _image_size(path)))
        if missing:
            used = f"captioned {token!r}" if token else "trained with an empty caption"
            warnings.append(f"{folder}: {missing} image(s) without a {caption_extension} caption, {used}")
    if not pictures:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise DataError(f"{root}: no images ({suffixes}) in it or in N_name subfolders")
    return Dataset(root, tuple(pictures), tuple(warnings))


def bucket_sizes(resolution: int, step: int, min_side: int, max_side: int) -> list[Size]:
    """kohya's bucket sizes: the square of side ⌊resolution/step⌋·step and, for each width from
    ``min_side`` to ``max_side`` by ``step``, the largest height (a multiple of ``step``, ≤ ``max_side``)
    keeping the area ≤ resolution² — and its transpose. Sorted (width, height) pairs."""
    area = resolution * resolution
    square = resolution // step * step
    sizes = {(square, square)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, area // width // step * step)
        if height >= min_side:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes)


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is nearest the image's (the first of equals, as kohya's argmin)."""
    ratio = size[0] / size[1]
    errors = [abs(w / h - ratio) for w, h in buckets]
    return buckets[int(np.argmin(errors))]


def fit(image: Image.Image, bucket: Size) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` resized to cover ``bucket`` (aspect kept, Lanczos) and centre-cropped to it; also the crop's
    (top, left) in the resized image (SDXL's crop conditioning)."""
    width, height = image.size
    bw, bh = bucket
    scale = bh / height if width / height > bw / bh else bw / width
    resized = (max(bw, int(width * scale + 0.5)), max(bh, int(height * scale + 0.5)))
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.LANCZOS)
    left, top = (resized[0] - bw) // 2, (resized[1] - bh) // 2
    return image.crop((left, top, left + bw, top + bh)), (top, left)


def load_pixels(picture: Picture, bucket: Size) -> tuple[torch.Tensor, tuple[int, int]]:
    """The picture fitted to ``bucket``: ``[3, H, W]`` in [-1, 1], and its crop's (top, left).

    Raises:
        DataError: the image cannot be decoded (named).
    """
    try:
        with Image.open(picture.path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{picture.path}: unreadable image ({e})") from None
    fitted, crop = fit(image, bucket)
    array = np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), crop


class BatchOrder:
    """Which pictures make batch k: entries (a picture once per repeat) grouped by bucket, shuffled per
    epoch within each bucket, cut into batches of ``batch_size`` (a bucket's last batch may be smaller),
    and the batches shuffled; the same ``(seed, k)`` always gives the same batch."""

    def __init__(self, buckets: Sequence[Size], repeats: Sequence[int], batch_size: int, seed: int) -> None:
        groups: dict[Size, list[int]] = {}
        for index, (bucket, times) in enumerate(zip(buckets, repeats, strict=True)):
            groups.setdefault(bucket, []).extend([index] * times)
        self._groups = [np.array(groups[b]) for b in sorted(groups)]
        self.batch_size = batch_size
        self.seed = seed
        self.per_epoch = sum(math.ceil(len(g) / batch_size) for g in self._groups)
        self._epoch: tuple[int, list[tuple[int, ...]]] | None = None

    def _batches(self, epoch: int) -> list[tuple[int, ...]]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches: list[tuple[int, ...]] = []
            for group in self._groups:
                shuffled = rng.permutation(group)
                batches += [
                    tuple(int(i) for i in shuffled[s : s + self.batch_size])
                    for s in range(0, len(shuffled), self.batch_size)
                ]
            self._epoch = (epoch, [batches[int(i)] for i in rng.permutation(len(batches))])
        return self._epoch[1]

    def batch(self, index: int) -> tuple[int, ...]:
        """The picture indices of global batch ``index`` (0-based over the whole run)."""
        epoch, position = divmod(index, self.per_epoch)
        return self._batches(epoch)[position]
