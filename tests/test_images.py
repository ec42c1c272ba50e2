"""Image I/O: A1111 output naming, atomic PNG writes with infotext, img2img resize modes."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentstudio.pipeline.images import from_pil, next_number, read_infotext, save_image, to_pil
from latentstudio.pipeline.params import ResizeMode
from latentstudio.pipeline.resize import resize_image

DAY = date(2026, 11, 22)


def _image(width: int = 16, height: int = 8) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_save_names_like_a1111_and_keeps_the_infotext(tmp_path: Path) -> None:
    text = 'a cat, "quoted"\nNegative prompt: ünïcode\nSteps: 20, Seed: 5'
    first = save_image(_image(), tmp_path, 5, text, day=DAY)
    second = save_image(_image(), tmp_path, 6, None, day=DAY)
    assert first == tmp_path / "2026-11-22" / "00000-5.png"
    assert second == tmp_path / "2026-11-22" / "00001-6.png"
    (tmp_path / "2026-11-22" / "00041-1.png").touch()  # numbering continues after the highest
    assert save_image(_image(), tmp_path, 7, None, day=DAY).name == "00042-7.png"
    with Image.open(first) as img:
        assert read_infotext(img) == text
        assert np.array_equal(np.asarray(img), np.asarray(_image()))
    assert not [p for p in (tmp_path / "2026-11-22").iterdir() if p.name.endswith(".tmp")]


def test_concurrent_saves_never_share_a_number(tmp_path: Path) -> None:
    paths: list[Path] = []

    def worker(seed: int) -> None:
        for _ in range(5):
            paths.append(save_image(_image(), tmp_path, seed, "x", day=DAY))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(int(p.name.split("-")[0]) for p in paths)
    assert numbers == list(range(20))
    assert next_number(tmp_path / "2026-11-22") == 20


def test_tensor_pil_round_trip() -> None:
    image = _image()
    tensor = from_pil(image)
    assert tensor.shape == (1, 3, 8, 16)
    assert tensor.min() >= -1
    assert tensor.max() <= 1
    assert np.array_equal(np.asarray(to_pil(tensor)[0]), np.asarray(image))
    assert np.asarray(to_pil(torch.full((1, 3, 2, 2), 5.0))[0]).max() == 255  # clamped


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_resize_modes_give_the_target_size(mode: ResizeMode) -> None:
    out = resize_image(_image(40, 20), 16, 16, mode)
    expected = (40, 16) if mode is ResizeMode.LATENT_UPSCALE else (16, 16)
    assert out.size == expected


def test_crop_and_resize_crops_and_fill_stretches_edges() -> None:
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 10, 20))  # blue left quarter
    cropped = np.asarray(resize_image(wide, 20, 20, ResizeMode.CROP_AND_RESIZE))
    assert (cropped[:, :, 0] > 200).all()  # centre crop: only red remains
    tall = Image.new("RGB", (10, 40), (0, 255, 0))
    filled = np.asarray(resize_image(tall, 40, 40, ResizeMode.RESIZE_AND_FILL))
    assert (filled[:, :, 1] > 200).all()  # the side bands are stretched copies of the edge columns
    just = np.asarray(resize_image(tall, 40, 40, ResizeMode.JUST_RESIZE))
    assert just.shape == (40, 40, 3)
