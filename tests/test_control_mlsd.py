"""The M-LSD line annotator (mlsd) from an mlsd_large_512_fp32.pth the user placed: the network against an
independent forward written here from the extension's description, the line decoding against a numpy
re-implementation of its ``pred_lines``, the preprocessor end to end against both, the thresholds, and the
file: listed only when present, a refusal naming it when absent or not the M-LSD network."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import mlsd, preprocessors
from latentstudio.core import FieldError

STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))  # t, c, n, s
HEADS = ((15, 64, 96), (17, 32, 64), (19, 24, 64), (21, 16, 64))  # block, skip channels, deep channels


def _blocks() -> list[tuple[int, int, int, int]]:
    """The inverted residual blocks as (expansion, in, out, stride), features 1…13."""
    blocks, channels = [], 32
    for t, c, n, s in STAGES:
        for i in range(n):
            blocks.append((t, channels, c, s if i == 0 else 1))
            channels = c
    return blocks


def _convs() -> list[tuple[str, int, int, int, int, str | None]]:
    """Every convolution of the released file: (key, in, out, kernel, groups, its batch norm's key or None
    for the biased head convolutions, which are followed by one too unless it is the last)."""
    convs: list[tuple[str, int, int, int, int, str | None]] = [
        ("backbone.features.0.0", 4, 32, 3, 1, "backbone.features.0.1")
    ]
    for i, (t, cin, cout, _) in enumerate(_blocks(), start=1):
        p, hidden, k = f"backbone.features.{i}.conv", cin * t, int(t != 1)
        if t != 1:
            convs.append((f"{p}.0.0", cin, hidden, 1, 1, f"{p}.0.1"))
        convs.append((f"{p}.{k}.0", hidden, hidden, 3, hidden, f"{p}.{k}.1"))
        convs.append((f"{p}.{k + 1}", hidden, cout, 1, 1, f"{p}.{k + 2}"))
    for n, skip, deep in HEADS:
        convs += [(f"block{n}.conv1.0", deep, 64, 1, 1, f"block{n}.conv1.1"),
                  (f"block{n}.conv2.0", skip, 64, 1, 1, f"block{n}.conv2.1"),
                  (f"block{n + 1}.conv1.0", 128, 128, 3, 1, f"block{n + 1}.conv1.1"),
                  (f"block{n + 1}.conv2.0", 128, 64, 3, 1, f"block{n + 1}.conv2.1")]  # fmt: skip
    convs += [("block23.conv1.0", 64, 64, 3, 1, "block23.conv1.1"),
              ("block23.conv2.0", 64, 64, 3, 1, "block23.conv2.1"),
              ("block23.conv3", 64, 16, 1, 1, None)]  # fmt: skip
    return convs


def random_mlsd_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random MobileV2_MLSD_Large state keyed as the released file (batch norms with their running
    statistics and counters; the backbone's convolutions bias-free), scaled so that a few hundred line
    centres pass the default thresholds and segments run to ~20 half-size pixels."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, cin, cout, kernel, groups, bn in _convs():
        fan_in = cin // groups * kernel * kernel
        state[f"{key}.weight"] = (
            torch.randn(cout, cin // groups, kernel, kernel, generator=g) * (2 / fan_in) ** 0.5
        )
        if not key.startswith("backbone"):
            state[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.01
        if bn is not None:
            state[f"{bn}.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
            state[f"{bn}.bias"] = 0.1 * torch.randn(cout, generator=g)
            state[f"{bn}.running_mean"] = 0.1 * torch.randn(cout, generator=g)
            state[f"{bn}.running_var"] = 1 + 0.1 * torch.rand(cout, generator=g)
            state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    state["block23.conv3.bias"][7] -= 3.0  # the centre logit: not every local maximum passes 0.1
    return state


def _conv_bn(x: torch.Tensor, s: dict[str, torch.Tensor], key: str, bn: str, **conv: int) -> torch.Tensor:
    y = F.conv2d(x, s[f"{key}.weight"], s.get(f"{key}.bias"), **conv)
    return F.batch_norm(
        y, s[f"{bn}.running_mean"], s[f"{bn}.running_var"], s[f"{bn}.weight"], s[f"{bn}.bias"]
    )


def _reference_tp(image: np.ndarray, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """MobileV2_MLSD_Large written out: ``[H, W, 3]`` uint8 → TP map ``[1, 9, H/2, W/2]``."""
    x = np.concatenate([image, np.ones((*image.shape[:2], 1))], axis=2)[None].astype(np.float32) / 127.5 - 1
    h = torch.from_numpy(x).permute(0, 3, 1, 2)  # the extension's layout (a transposed numpy array)
    h = F.relu6(
        _conv_bn(F.pad(h, (0, 1, 0, 1)), s, "backbone.features.0.0", "backbone.features.0.1", stride=2)
    )
    taps = []
    for i, (t, cin, cout, stride) in enumerate(_blocks(), start=1):
        p, y, k = f"backbone.features.{i}.conv", h, int(t != 1)
        if t != 1:
            y = F.relu6(_conv_bn(y, s, f"{p}.0.0", f"{p}.0.1"))
        y = F.pad(y, (0, 1, 0, 1)) if stride == 2 else F.pad(y, (1, 1, 1, 1))
        y = F.relu6(_conv_bn(y, s, f"{p}.{k}.0", f"{p}.{k}.1", stride=stride, groups=y.shape[1]))
        y = _conv_bn(y, s, f"{p}.{k + 1}", f"{p}.{k + 2}")
        h = h + y if stride == 1 and cin == cout else y
        if i in (1, 3, 6, 10, 13):
            taps.append(h)
    for (n, _, _), skip in zip(HEADS, reversed(taps[:4]), strict=True):
        deep = F.relu(_conv_bn(h, s, f"block{n}.conv1.0", f"block{n}.conv1.1"))
        if n != 15:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        h = torch.cat([F.relu(_conv_bn(skip, s, f"block{n}.conv2.0", f"block{n}.conv2.1")), deep], dim=1)
        h = F.relu(_conv_bn(h, s, f"block{n + 1}.conv1.0", f"block{n + 1}.conv1.1", padding=1)) + h
        h = F.relu(_conv_bn(h, s, f"block{n + 1}.conv2.0", f"block{n + 1}.conv2.1", padding=1))
    h = F.relu(_conv_bn(h, s, "block23.conv1.0", "block23.conv1.1", padding=5, dilation=5))
    h = F.relu(_conv_bn(h, s, "block23.conv2.0", "block23.conv2.1", padding=1))
    return F.conv2d(h, s["block23.conv3.weight"], s["block23.conv3.bias"])[:, 7:]


def _reference_segments(tp: np.ndarray, score: float, distance: float) -> np.ndarray:
    """pred_lines' decoding in numpy: ``[9, h, w]`` → ``[N, 4]`` (x0, y0, x1, y1) in input pixels."""
    heat = 1 / (1 + np.exp(-tp[0]))
    padded = np.pad(heat, 1, constant_values=-np.inf)
    h, w = heat.shape
    neighbourhood = np.max([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
    peaks = np.where(heat == neighbourhood, heat, 0).ravel()
    best = np.argsort(-peaks, kind="stable")[:200]
    ys, xs = np.divmod(best, w)
    ends = tp[1:5, ys, xs].T
    long = np.hypot(ends[:, 0] - ends[:, 2], ends[:, 1] - ends[:, 3]) > distance
    kept = (peaks[best] > score) & long
    return 2 * (np.stack([xs, ys, xs, ys], axis=1)[kept] + ends[kept].astype(np.float64))


def _sorted(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def _reference_map(image: np.ndarray, resolution: int, score: float, distance: float) -> np.ndarray:
    """The extension's mlsd: resize with pad, lines on the padded image, drawn, the padding cut off."""
    k = resolution / min(image.shape[:2])
    height, width = round(image.shape[0] * k), round(image.shape[1] * k)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -height % 64], [0, -width % 64], [0, 0]], mode="edge")
    tp = _reference_tp(padded, random_mlsd_state())[0].numpy()
    canvas = np.zeros_like(padded)
    for x0, y0, x1, y1 in _reference_segments(tp, score, distance):
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), (255, 255, 255), 1)
    return canvas[:height, :width, 0]


def _picture(seed: int = 0, size: tuple[int, int] = (64, 100)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = np.stack([x * 2, y * 3, x + y], axis=2).astype(np.uint8)
    pixels[10:50, 20:60] = rng.integers(150, 255, 3)
    cv2.line(pixels, (5, 60), (90, 15), (10, 10, 10), 2)
    return pixels


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An annotator root (``<models>/ControlNetPreprocessor``) with the M-LSD file."""
    folder = tmp_path / "ControlNetPreprocessor" / "mlsd"
    folder.mkdir(parents=True)
    torch.save(random_mlsd_state(), folder / "mlsd_large_512_fp32.pth")
    return tmp_path / "ControlNetPreprocessor"


def test_network_and_decoding_equal_independent_ones(root: Path) -> None:
    image = np.ascontiguousarray(_picture(1, (64, 128)))
    tp = mlsd.tp_map(image, mlsd.network(root / mlsd.FILE))
    reference = _reference_tp(image, random_mlsd_state())
    assert tp.shape == (1, 9, 32, 64)
    assert (tp - reference).abs().max() <= 1e-4 * reference.abs().max()
    for score, distance in ((0.1, 0.1), (0.6, 4.0)):
        ours = mlsd.decode(reference, score, distance)
        expected = _reference_segments(reference[0].numpy(), score, distance)
        assert 10 < len(expected) < 200  # some centres fail the thresholds, some pass
        np.testing.assert_array_equal(_sorted(ours), _sorted(expected))


def test_detect_draws_white_lines_at_the_input_size(root: Path) -> None:
    image = _picture()
    out = preprocessors.detect("mlsd", image, 64, roots=[root])
    assert out.shape == (64, 100, 3)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}
    assert (out == out[:, :, :1]).all()  # grey
    np.testing.assert_array_equal(out[:, :, 0], _reference_map(image, 64, 0.1, 0.1))
    resized = preprocessors.detect("mlsd", image, 80, 0.3, 2.5, roots=[root])
    assert resized.shape == (80, 125, 3)
    np.testing.assert_array_equal(resized[:, :, 0], _reference_map(image, 80, 0.3, 2.5))


def test_thresholds_keep_fewer_lines(root: Path) -> None:
    image = _picture(2)
    default = preprocessors.detect("mlsd", image, 64, roots=[root])[:, :, 0] == 255
    for a, b in ((0.9, 0.1), (0.1, 6.0)):
        stricter = preprocessors.detect("mlsd", image, 64, a, b, roots=[root])[:, :, 0] == 255
        assert 0 < stricter.sum() < default.sum()
        assert not (stricter & ~default).any()  # a subset of the segments: a subset of the pixels
    none = preprocessors.detect("mlsd", image, 64, 2.0, 0.1, roots=[root])  # no sigmoid exceeds 2
    assert none.shape == (64, 100, 3)
    assert not none.any()
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("mlsd", image, 64, 2.5, roots=[root])
    assert refused.value.field == "threshold_a"


def test_listed_with_its_sliders_only_where_the_file_is(root: Path, tmp_path: Path) -> None:
    assert "mlsd" in preprocessors.module_list(roots=[root])
    assert preprocessors.find("mlsd").module_detail()["sliders"] == [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "MLSD Value Threshold", "value": 0.1, "min": 0.01, "max": 2.0, "step": 0.01},
        {"name": "MLSD Distance Threshold", "value": 0.1, "min": 0.01, "max": 20.0, "step": 0.01},
    ]
    bare = tmp_path / "bare"
    assert "mlsd" not in preprocessors.module_list(roots=[bare])
    assert "mlsd" in preprocessors.unavailable([bare])
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("mlsd", _picture(), 64, roots=[bare])
    assert refused.value.field == "module"
    assert "mlsd_large_512_fp32.pth" in refused.value.message


def test_a_file_with_other_tensors_is_refused_naming_it(root: Path) -> None:
    path = root / mlsd.FILE
    state = random_mlsd_state()
    state["block23.conv4.weight"] = state.pop("block23.conv3.weight")
    torch.save(state, path)
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("mlsd", _picture(), 64, roots=[root])
    assert refused.value.field == "module"
    assert str(path) in refused.value.message
    assert "not the M-LSD network" in refused.value.message
