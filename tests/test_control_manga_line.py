"""The lineart_anime_denoise annotator (MangaLineExtraction's res_skip from ``manga_line/erika.pth``): the
network against an independent forward written here from the extension's description, the map (grey
input in [0, 255], ``255 − output`` on the padded image, cropped) end to end, the entry's sliders and tags,
and the file: a ``module.``-prefixed save accepted, other tensors refused naming the file, a missing one a
refusal on ``module`` naming it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import manga_line, preprocessors
from latentstudio.control.preprocessor_types import Settings
from latentstudio.core import FieldError
from latentstudio.models.files import ModelFileError

# (key, channels in, channels out, units, down: last unit stride 2, up: first unit upsamples)
STAGES = (("block0", 1, 24, 2, False, False), ("block1", 24, 48, 3, True, False),
          ("block2", 48, 96, 5, True, False), ("block3", 96, 192, 7, True, False),
          ("block4", 192, 384, 12, True, False), ("block5", 384, 192, 7, False, True),
          ("block6", 192, 96, 5, False, True), ("block7", 96, 48, 3, False, True),
          ("block8", 48, 24, 2, False, True), ("block9", 24, 16, 2, False, False))  # fmt: skip
SKIPS = {"block5": "block3", "block6": "block2", "block7": "block1", "block8": "block0"}  # decoder: added


def _units(stage: tuple[str, int, int, int, bool, bool]) -> list[tuple[str, int, int, int, bool]]:
    """A stage's residual units: (key, in, out, stride, upsampling)."""
    name, cin, cout, count, down, up = stage
    units = []
    for i in range(count):
        stride = 2 if down and i == count - 1 else 1
        units.append((f"{name}.model.{i}", cin if i == 0 else cout, cout, stride, up and i == 0))
    return units


@cache
def random_manga_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random res_skip state keyed as the released file (batch norms with running statistics and
    counters), scaled so that the map spreads over [0, 255] with a few values clipped at each end."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def pre(key: str, cin: int, cout: int, kernel: int, gain: float) -> None:
        state[f"{key}.model.0.weight"] = 1 + 0.1 * torch.randn(cin, generator=g)
        state[f"{key}.model.0.bias"] = 0.1 * torch.randn(cin, generator=g)
        state[f"{key}.model.0.running_mean"] = 0.1 * torch.randn(cin, generator=g)
        state[f"{key}.model.0.running_var"] = 1 + 0.1 * torch.rand(cin, generator=g)
        state[f"{key}.model.0.num_batches_tracked"] = torch.tensor(0)
        std = gain * (2 / (cin * kernel * kernel)) ** 0.5
        state[f"{key}.model.2.weight"] = torch.randn(cout, cin, kernel, kernel, generator=g) * std
        state[f"{key}.model.2.bias"] = 0.01 * torch.randn(cout, generator=g)

    for key, cin, cout, stride, _ in (unit for stage in STAGES for unit in _units(stage)):
        pre(f"{key}.conv1", cin, cout, 3, 1.0)
        pre(f"{key}.residual", cout, cout, 3, 0.3)
        if cin != cout or stride != 1:
            state[f"{key}.shortcut.model.0.weight"] = torch.randn(cout, cin, 1, 1, generator=g) / cin**0.5
            state[f"{key}.shortcut.model.0.bias"] = 0.01 * torch.randn(cout, generator=g)
    pre("conv15", 16, 1, 1, 1.0)
    state["block0.model.0.conv1.model.0.running_mean"].fill_(128.0)  # the grey input, [0, 255]
    state["block0.model.0.conv1.model.0.running_var"].fill_(64.0**2)
    state["block0.model.0.shortcut.model.0.weight"] /= 64.0
    state["conv15.model.0.running_var"].fill_(30.0**2)  # block9's spread
    state["conv15.model.2.weight"] *= 160.0
    state["conv15.model.2.bias"].fill_(290.0)
    return state


def _pre(x: torch.Tensor, s: dict[str, torch.Tensor], key: str, stride: int = 1) -> torch.Tensor:
    p = f"{key}.model"
    x = F.batch_norm(
        x, s[f"{p}.0.running_mean"], s[f"{p}.0.running_var"], s[f"{p}.0.weight"], s[f"{p}.0.bias"], eps=1e-3
    )
    w = s[f"{p}.2.weight"]
    return F.conv2d(F.leaky_relu(x, 0.2), w, s[f"{p}.2.bias"], stride, w.shape[-1] // 2)


def _double(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _reference(grey: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """res_skip written out with functional ops: ``[1, 1, H, W]`` → ``[1, 1, H, W]``."""
    h, ends = grey, {}
    for stage in STAGES:
        for key, _, _, stride, up in _units(stage):
            inner = _pre(h, s, f"{key}.conv1", stride)
            branch = _pre(_double(inner) if up else inner, s, f"{key}.residual")
            skip = h
            if f"{key}.shortcut.model.0.weight" in s:
                w, b = s[f"{key}.shortcut.model.0.weight"], s[f"{key}.shortcut.model.0.bias"]
                skip = _double(F.conv2d(h, w, b, stride)) if up else F.conv2d(h, w, b, stride)
            h = skip + branch
        h = ends[SKIPS[stage[0]]] + h if stage[0] in SKIPS else h
        ends[stage[0]] = h
    return _pre(h, s, "conv15")


def _grey(image: np.ndarray) -> np.ndarray:
    """OpenCV's fixed-point RGB→grey (weights 0.299, 0.587, 0.114 in 15 bits, rounded)."""
    x = image.astype(np.int64)
    return ((x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15).astype(np.uint8)


def _reference_map(image: np.ndarray, resolution: int) -> np.ndarray:
    """The extension's lineart_anime_denoise: resize with pad, grey, ``255 − res_skip`` on the padded
    image, clipped, truncated, cropped: ``[h, w]``."""
    k = resolution / min(image.shape[:2])
    height, width = round(image.shape[0] * k), round(image.shape[1] * k)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -height % 64], [0, -width % 64], [0, 0]], mode="edge")
    grey = torch.from_numpy(_grey(padded).astype(np.float32))[None, None]
    drawn = _reference(grey, random_manga_state())[0, 0].numpy()
    return (255 - drawn).clip(0, 255).astype(np.uint8)[:height, :width]


def _picture(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = np.stack([200 + x % 50, 220 - y % 30, np.full_like(x, 230)], axis=2).astype(np.uint8)
    pixels[10:40, 15:50] = rng.integers(60, 200, 3)
    cv2.line(pixels, (3, size[0] - 5), (size[1] - 4, 6), (20, 10, 30), 2)
    cv2.circle(pixels, (size[1] // 2, size[0] // 2), size[0] // 4, (0, 0, 0), 1)
    return pixels


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An annotator root (``<models>/ControlNetPreprocessor``) with erika.pth, shared: the network is
    loaded once."""
    folder = tmp_path_factory.mktemp("manga") / "ControlNetPreprocessor" / "manga_line"
    folder.mkdir(parents=True)
    torch.save(random_manga_state(), folder / "erika.pth")
    return folder.parent


def test_the_network_equals_an_independent_forward(root: Path, one_thread: None) -> None:
    grey = torch.from_numpy(_grey(_picture(0, (64, 64))).astype(np.float32))[None, None]
    with torch.no_grad():
        ours = manga_line.network(root / manga_line.FILE)(grey)
    reference = _reference(grey, random_manga_state())
    assert ours.shape == (1, 1, 64, 64)
    assert (ours - reference).abs().max() <= 1e-4 * reference.abs().max()
    assert 20 < float(reference.std()) < 120  # a spread map, not all one value


def test_the_map_is_inverted_on_the_padded_image_and_cropped(root: Path, one_thread: None) -> None:
    path = root / manga_line.FILE
    for seed, size in ((1, (60, 90)), (2, (128, 128))):  # enlarged (cubic), cropped; shrunk (area)
        image = _picture(seed, size)
        out = manga_line.ENTRIES[0].run(image, Settings(64, 0.0, 0.0, None, weights=(path,)))
        expected = _reference_map(image, 64)
        assert out.shape == (*expected.shape, 3)
        assert out.dtype == np.uint8
        assert (out == out[:, :, :1]).all()  # grey
        assert np.abs(out[:, :, 0].astype(int) - expected.astype(int)).max() <= 1
        assert (out == 0).any()  # clipped at both ends: the clip is exercised
        assert (out == 255).any()
        assert 40 < out.mean() < 215


def test_the_entry_matches_the_extension_table() -> None:
    (entry,) = manga_line.ENTRIES
    assert (entry.name, entry.label, entry.priority, entry.tags) == (
        "lineart_anime_denoise", "lineart_anime_denoise", 0, ("Lineart",)
    )  # fmt: skip
    assert entry.files == ("manga_line/erika.pth",)
    assert entry.module_detail() == {
        "model_free": False,
        "sliders": [{"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}],
    }
    assert entry.settings(None, 0.5, 7.0) == Settings(512, 0.0, 0.0, None)


def test_a_prefixed_save_other_tensors_and_no_file(root: Path, tmp_path: Path, one_thread: None) -> None:
    image = _picture(3, (64, 64))
    prefixed = tmp_path / "erika.pth"
    torch.save({f"module.{k}": t for k, t in random_manga_state().items()}, prefixed)  # a DataParallel save
    loaded = manga_line.network(prefixed).state_dict()
    assert all(torch.equal(loaded[k], t) for k, t in random_manga_state().items())
    other = tmp_path / "other.pth"
    torch.save({k: t for k, t in random_manga_state().items() if k.startswith(("block9", "conv15"))}, other)
    with pytest.raises(ModelFileError) as refused:
        manga_line.lineart_anime_denoise(image, 64, other)
    assert str(other) in str(refused.value)
    assert "MangaLineExtraction" in str(refused.value)
    with pytest.raises(FieldError) as missing:
        preprocessors.detect("lineart_anime_denoise", image, 64, roots=[tmp_path / "bare"])
    assert missing.value.field == "module"
    assert "erika.pth" in missing.value.message
