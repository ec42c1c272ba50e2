"""The LeReS depth annotators (depth_leres from ``leres/res101.pth``; depth_leres++ with the pix2pix merge
network ``leres/latest_net_G.pth``): the network against an independent forward written here from the
extension's description (random weights at the released layout: a ``{"depth_model": …}`` checkpoint with
``module.`` keys), the uint8 map and its two removals, the boosting pipeline against a re-implementation of
the extension's ``estimateboost`` (with cheap stand-ins for the two networks), the merge U-Net against a
functional forward, the registry entries, and the refusals."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, leres, leres_boost, preprocessors
from latentstudio.control.preprocessor_types import RESOLUTION, Settings, Slider
from latentstudio.core import FieldError
from latentstudio.models.files import ModelFileError
from tests.test_control_hed import _padded

STAGES = ((3, 256), (4, 512), (23, 1024), (3, 2048))  # ResNeXt-101 32x8d: blocks, width (= channels)
FUSIONS = (("ffm2", 1024), ("ffm1", 512), ("ffm0", 256))
ENCODER = "depth_model.encoder_modules.encoder"
DECODER = "depth_model.decoder_modules"


def _leres_layout() -> tuple[list[tuple[str, tuple[int, ...], bool]], list[tuple[str, int, float]]]:
    """The released ``depth_model`` entry (``module.`` dropped): its convolutions (key, weight shape, has a
    bias) and batch norms (key, channels, weight scale: 0.2 on each bottleneck's last, which keeps the
    random 101-layer residual stack from exploding)."""
    convs: list[tuple[str, tuple[int, ...], bool]] = [(f"{ENCODER}.conv1", (64, 3, 7, 7), False)]
    norms: list[tuple[str, int, float]] = [(f"{ENCODER}.bn1", 64, 1.0)]
    channels = 64
    for s, (count, width) in enumerate(STAGES, start=1):
        for b in range(count):
            p = f"{ENCODER}.layer{s}.{b}"
            convs += [(f"{p}.conv1", (width, channels, 1, 1), False),
                      (f"{p}.conv2", (width, width // 32, 3, 3), False),
                      (f"{p}.conv3", (width, width, 1, 1), False)]  # fmt: skip
            norms += [(f"{p}.bn1", width, 1.0), (f"{p}.bn2", width, 1.0), (f"{p}.bn3", width, 0.2)]
            if b == 0:
                convs.append((f"{p}.downsample.0", (width, channels, 1, 1), False))
                norms.append((f"{p}.downsample.1", width, 1.0))
            channels = width

    def transfer(key: str, cin: int, mid: int) -> None:
        convs.extend([(f"{key}.conv1", (mid, cin, 3, 3), True),
                      (f"{key}.conv_branch.1", (mid, mid, 3, 3), True),
                      (f"{key}.conv_branch.4", (mid, mid, 3, 3), True)])  # fmt: skip
        norms.append((f"{key}.conv_branch.2", mid, 1.0))

    transfer(f"{DECODER}.conv", 2048, 512)
    convs.append((f"{DECODER}.conv1", (256, 512, 3, 3), True))
    for name, cin in FUSIONS:
        transfer(f"{DECODER}.{name}.ftb1", cin, 256)
        transfer(f"{DECODER}.{name}.ftb2", 256, 256)
    convs += [(f"{DECODER}.outconv.adapt_conv.0", (128, 256, 3, 3), True),
              (f"{DECODER}.outconv.adapt_conv.3", (1, 128, 3, 3), True)]  # fmt: skip
    norms.append((f"{DECODER}.outconv.adapt_conv.1", 128, 1.0))
    return convs, norms


def random_leres_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random RelDepthModel("resnext101") state keyed as the released ``depth_model`` entry (batch norms
    with running statistics and counters). The 115 M weights are windows at random offsets into one
    He-scaled random pool per fan-in (so the file holds ~23 M numbers and is written in a moment)."""
    rng = np.random.default_rng(seed)
    convs, norms = _leres_layout()
    slack = 4096
    need: dict[int, int] = {}
    for _, shape, _ in convs:
        fan_in = int(np.prod(shape[1:]))
        need[fan_in] = max(need.get(fan_in, 0), int(np.prod(shape)))
    unit = torch.from_numpy(rng.standard_normal(max(need.values()) + slack, dtype=np.float32))
    pools = {fan_in: unit[: n + slack] * (2 / fan_in) ** 0.5 for fan_in, n in need.items()}
    state: dict[str, torch.Tensor] = {}
    for key, shape, bias in convs:
        n, start = int(np.prod(shape)), int(rng.integers(0, slack))
        state[f"{key}.weight"] = pools[int(np.prod(shape[1:]))][start : start + n].view(shape)
        if bias:
            state[f"{key}.bias"] = torch.from_numpy(0.05 * rng.standard_normal(shape[0], dtype=np.float32))
    for key, channels, gain in norms:
        values = rng.standard_normal((3, channels), dtype=np.float32)
        state[f"{key}.weight"] = torch.from_numpy(gain * (1 + 0.1 * values[0]))
        state[f"{key}.bias"] = torch.from_numpy(0.1 * values[1])
        state[f"{key}.running_mean"] = torch.from_numpy(0.1 * values[2])
        state[f"{key}.running_var"] = torch.from_numpy(1 + 0.2 * rng.random(channels, np.float32))
        state[f"{key}.num_batches_tracked"] = torch.tensor(7)
    return state


def write_leres(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """The released checkpoint's shape: ``{"depth_model": {"module.<key>": tensor}}`` (DataParallel's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"depth_model": {f"module.{k}": t for k, t in state.items()}}, path)
    return path


def _merge_layout(levels: int = leres_boost.LEVELS) -> dict[str, tuple[int, ...]]:
    """The released ``latest_net_G.pth`` keys and shapes: pix2pix's ``UnetGenerator(2, 1, levels, 64)``
    without norms (each level's ``model`` a Sequential; convolutions bias-free but the top transposed one)."""
    widths = [(64, 128), (128, 256), (256, 512)] + [(512, 512)] * (levels - 4)  # (outer, width) below the top
    layout = {
        "model.model.0.weight": (64, 2, 4, 4),
        "model.model.3.weight": (128, 1, 4, 4),
        "model.model.3.bias": (1,),
    }
    prefix = "model.model.1.model"
    for i, (outer, width) in enumerate(widths):
        innermost = i == len(widths) - 1
        layout[f"{prefix}.1.weight"] = (width, outer, 4, 4)
        layout[f"{prefix}.{3 if innermost else 5}.weight"] = (width if innermost else 2 * width, outer, 4, 4)
        prefix += ".3.model"
    return layout


def random_merge_state(
    seed: int = 0, levels: int = leres_boost.LEVELS, scaled: bool = True
) -> dict[str, torch.Tensor]:
    """Random merge-network weights at the released layout: windows of one random pool, He-scaled (the top
    transposed convolution small, so the tanh is not saturated) or, unscaled, views that share the pool
    (a small file)."""
    rng = np.random.default_rng(seed)
    layout = _merge_layout(levels)
    unit = torch.from_numpy(
        rng.standard_normal(max(int(np.prod(s)) for s in layout.values()) + 4096, dtype=np.float32)
    )
    state = {}
    for key, shape in layout.items():
        n, start = int(np.prod(shape)), int(rng.integers(0, 4096))
        fan_in = shape[1] * 16 if key.endswith("1.weight") or key == "model.model.0.weight" else shape[0] * 4
        gain = 0.3 if key.startswith("model.model.3") else 1.0
        window = unit[start : start + n].view(shape)
        state[key] = window * (gain * (2 / fan_in) ** 0.5) if scaled else window
    return state


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _reference_depth(image: np.ndarray, s: dict[str, torch.Tensor]) -> np.ndarray:
    """LeReS written out with functional ops, as the extension runs it: the BGR picture in 0–255 minus the
    ImageNet means over their deviations; every batch norm with the input's own statistics (the extension
    leaves the network in training mode). ``[H, W, 3]`` uint8 (multiples of 32) → ``[H, W]`` float32."""
    x = torch.from_numpy(image[:, :, ::-1].astype(np.float32).transpose(2, 0, 1).copy())
    x = ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))[None]

    def conv(h: torch.Tensor, key: str, **kw: int) -> torch.Tensor:
        return F.conv2d(h, s[f"{key}.weight"], s.get(f"{key}.bias"), **kw)

    def bn(h: torch.Tensor, key: str) -> torch.Tensor:
        return F.batch_norm(h, None, None, s[f"{key}.weight"], s[f"{key}.bias"], training=True)

    def up(h: torch.Tensor) -> torch.Tensor:
        return F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)

    def ftb(h: torch.Tensor, key: str) -> torch.Tensor:  # the in-place ReLU: relu(c) is what is added back
        c = F.relu(conv(h, f"{key}.conv1", padding=1))
        branch = F.relu(bn(conv(c, f"{key}.conv_branch.1", padding=1), f"{key}.conv_branch.2"))
        return F.relu(c + conv(branch, f"{key}.conv_branch.4", padding=1))

    h = F.max_pool2d(F.relu(bn(conv(x, f"{ENCODER}.conv1", stride=2, padding=3), f"{ENCODER}.bn1")), 3, 2, 1)
    features = []
    for st, (count, _) in enumerate(STAGES, start=1):
        for b in range(count):
            p, stride = f"{ENCODER}.layer{st}.{b}", 2 if st > 1 and b == 0 else 1
            y = F.relu(bn(conv(h, f"{p}.conv1"), f"{p}.bn1"))
            y = F.relu(bn(conv(y, f"{p}.conv2", stride=stride, padding=1, groups=32), f"{p}.bn2"))
            shortcut = bn(conv(h, f"{p}.downsample.0", stride=stride), f"{p}.downsample.1") if b == 0 else h
            h = F.relu(bn(conv(y, f"{p}.conv3"), f"{p}.bn3") + shortcut)
        features.append(h)
    h = up(conv(ftb(features[3], f"{DECODER}.conv"), f"{DECODER}.conv1", padding=1))
    for (name, _), skip in zip(FUSIONS, features[2::-1], strict=True):
        h = up(ftb(ftb(skip, f"{DECODER}.{name}.ftb1") + h, f"{DECODER}.{name}.ftb2"))
    a = f"{DECODER}.outconv.adapt_conv"
    h = up(conv(F.relu(bn(conv(h, f"{a}.0", padding=1), f"{a}.1")), f"{a}.3", padding=1))
    return h[0, 0].numpy()


def _reference_map(depth: np.ndarray, near: float, background: float) -> np.ndarray:
    """apply_leres' uint8 map in numpy: spread to 0–65535 and truncated, × 255/65535 rounded (float32), the
    values not above ``floor(near % of 255)`` zeroed, inverted, then the same with ``background``."""
    low, high = depth.min(), depth.max()
    spread = (
        65535 * (depth - low) / (high - low) if high - low > 2.220446049250313e-16 else np.zeros(depth.shape)
    )
    gray = np.rint(spread.astype(np.uint16) * np.float32(255 / 65535)).astype(np.uint8)
    if near:
        gray = np.where(gray > np.floor(near / 100 * 255), gray, 0).astype(np.uint8)
    gray = 255 - gray
    if background:
        gray = np.where(gray > np.floor(background / 100 * 255), gray, 0).astype(np.uint8)
    return gray


def _scene(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """A picture with a vertical ramp, a few flat boxes and a noisy one."""
    rng = np.random.default_rng(seed)
    image = np.zeros((*shape, 3), np.uint8)
    image[:] = np.linspace(30, 220, shape[0]).astype(np.uint8)[:, None, None]
    for _ in range(3):
        y, x = rng.integers(0, shape[0] // 2), rng.integers(0, shape[1] // 2)
        image[y : y + shape[0] // 3, x : x + shape[1] // 3] = rng.integers(0, 255, 3)
    image[-shape[0] // 4 :, : shape[1] // 3] = rng.integers(
        0, 255, (shape[0] - 3 * shape[0] // 4, shape[1] // 3, 3)
    )
    return image


@pytest.fixture(scope="module")
def leres_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``ControlNetPreprocessor/leres/res101.pth``: random weights at the released layout, written once."""
    root = tmp_path_factory.mktemp("leres") / annotators.OWN_FOLDER
    state = random_leres_state(0)
    return write_leres(root / leres.FILE_LERES, state), state


def test_depth_leres_equals_an_independent_forward_and_mapping(
    leres_file: tuple[Path, dict[str, torch.Tensor]], one_thread: None
) -> None:
    path, state = leres_file
    image = _scene(1, (64, 88))  # at resolution 64: 64×88, padded to 64×128 for the network
    padded, height, width = _padded(image, 64)
    depth = _reference_depth(padded, state)
    assert depth.std() > 1e-3 * np.abs(depth).max()  # not a degenerate random network
    out = leres.ENTRIES[0].run(image, Settings(64, 30.0, 25.5, None, weights=(path,)))
    assert out.shape == (height, width, 3)
    assert (out == out[:, :, :1]).all()
    np.testing.assert_array_equal(out[:, :, 0], _reference_map(depth, 30.0, 25.5)[:height, :width])
    assert len(np.unique(out)) > 20
    assert (out == 0).any()


@pytest.mark.parametrize("flat", [False, True])
def test_the_map_spread_removals_and_inversion(flat: bool) -> None:
    rng = np.random.default_rng(3)
    depth = (
        np.full((40, 50), 3.5, np.float32)
        if flat
        else (rng.standard_normal((40, 50)) * 40 - 7).astype(np.float32)
    )
    for near, background in ((0.0, 0.0), (12.3, 0.0), (0.0, 40.0), (55.5, 20.1), (100.0, 100.0)):
        np.testing.assert_array_equal(
            leres.to_map(depth, near, background), _reference_map(depth, near, background)
        )
    assert (leres.to_map(depth, 0, 0) == 255).all() == flat  # flat: all zero, inverted


def test_entries_are_the_extensions() -> None:
    plain, boosted = leres.ENTRIES
    near = Slider("Remove Near %", 0, 100, 0, 0.1)
    background = Slider("Remove Background %", 0, 100, 0, 0.1)
    for entry in (plain, boosted):
        assert (entry.label, entry.resolution, entry.threshold_a, entry.threshold_b) == (
            entry.name,
            RESOLUTION,
            near,
            background,
        )
        assert (entry.priority, entry.tags) == (0, ("Depth",))
    assert (plain.name, plain.files) == ("depth_leres", ("leres/res101.pth",))
    assert (boosted.name, boosted.files) == ("depth_leres++", ("leres/res101.pth", "leres/latest_net_G.pth"))


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FieldError) as missing:
        preprocessors.detect("depth_leres", _scene(0, (64, 64)), 64, roots=(tmp_path,))
    assert missing.value.field == "module"
    assert "res101.pth" in missing.value.message
    wrong = tmp_path / "wrong.pth"
    torch.save({"depth_model": {"module.conv.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(ModelFileError, match="LeReS"):
        leres.network(wrong)
    torch.save({"shift_model": {"conv.weight": torch.zeros(1)}}, wrong)  # no depth model in it
    with pytest.raises(ModelFileError):
        leres.network(wrong)
    with pytest.raises(FieldError) as small:  # the extension fails on such a picture (an unbound variable)
        leres.ENTRIES[1].run(_scene(0, (64, 64)), Settings(128, 0, 0, None, weights=(wrong, wrong)))
    assert small.value.field == "processor_res"
    assert "128x128" in small.value.message


def _stand_in_estimate(picture: np.ndarray, size: int) -> np.ndarray:
    """A cheap stand-in for LeReS at ``size``: the BGR picture resized to ``size``², its channel mean
    (weighted by the size) plus a ramp, resized back (bicubic); float32."""
    small = cv2.resize(np.ascontiguousarray(picture[:, :, ::-1]), (size, size)).astype(np.float32)
    depth = small.mean(axis=2) * np.float32(1 + size / 1000) + np.linspace(0, 40, size, dtype=np.float32)
    return cv2.resize(depth, (picture.shape[1], picture.shape[0]), interpolation=cv2.INTER_CUBIC)


def _stand_in_merge(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A cheap stand-in for the merge network's ``(out + 1) / 2``: a squashed mix of the standardised two."""
    z = 0.3 * (low - low.mean()) / (low.std() + 1e-3) + 0.7 * (high - high.mean()) / (high.std() + 1e-3)
    return (0.5 + 0.5 * np.tanh(z)).astype(np.float32)


def _mask(size: int) -> np.ndarray:
    """generatemask: ones inside a 15 % margin, Gaussian blurred (σ size/16), scaled to [0, 1]."""
    sigma = size // 16
    square = np.zeros((size, size), np.float32)
    margin = int(0.15 * size)
    square[margin : size - margin, margin : size - margin] = 1
    blurred = cv2.GaussianBlur(square, (4 * sigma + 1, 4 * sigma + 1), sigma)
    return (blurred - blurred.min()) / (blurred.max() - blurred.min())


def _grad(image: np.ndarray) -> np.ndarray:
    grey = image[..., 0] * 0.2989 + image[..., 1] * 0.5870 + image[..., 2] * 0.1140
    return np.abs(cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)) + np.abs(
        cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)
    )


def _reference_size(image: np.ndarray) -> tuple[int, float]:
    """calculateprocessingres for LeReS (R 448, R_max 1600, x 0.2): (whole size, patch scale)."""
    dim = min(image.shape[:2])
    edges = cv2.resize(_grad(image), (dim, dim), interpolation=cv2.INTER_LINEAR)
    edges = (edges >= edges.min() + 0.4 * (edges.max() - edges.min())).astype(np.float64)
    best, pooled = 14, np.zeros(0)
    for p in range(14, min(1600, 3 * max(image.shape[:2])) // 32, 7):
        n = dim // p
        blocks = np.zeros((-(-dim // n) * n,) * 2)
        blocks[:dim, :dim] = edges
        pooled = blocks.reshape(blocks.shape[0] // n, n, -1, n).max(axis=(1, 3))
        pooled = (cv2.resize(pooled, (p, p), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.float64)
        if (1 - cv2.dilate(pooled, np.ones((14, 14)))).mean() > 0.2:
            break
        best = p
    return 32 * best, float(cv2.dilate(pooled, np.ones((3, 3))).mean())


def _reference_boost(image: np.ndarray, mask_size: int) -> tuple[np.ndarray, int]:
    """estimateboost for LeReS with the stand-ins: (depth at the picture's size, patches merged)."""
    h0, w0 = image.shape[:2]
    cubic = cv2.INTER_CUBIC

    def double(picture: np.ndarray, high: int) -> np.ndarray:
        low_depth = cv2.resize(_stand_in_estimate(picture, 448), (1024, 1024), interpolation=cubic)
        out = _stand_in_merge(
            low_depth, cv2.resize(_stand_in_estimate(picture, high), (1024, 1024), interpolation=cubic)
        )
        return (out - out.min()) / (out.max() - out.min())

    size, patch_scale = _reference_size(image)
    whole = double(image, size)
    if max(h0, w0) < size:
        return cv2.resize(whole, (w0, h0), interpolation=cubic), 0
    f = min(max(4 * patch_scale * size / 1600, 0.2), 1)
    rows, cols = (2 * size, round(2 * size * w0 / h0)) if h0 > w0 else (round(2 * size * h0 / w0), 2 * size)
    target = cv2.resize(image, (round(cols / f), round(rows / f)), interpolation=cubic)
    g = _grad(target)
    g[g < g[g > 0].mean()] = 0
    integral, mean_density, step = cv2.integral(g), g.mean(), int(32 / f)

    def dense(x: int, y: int, w: int, h: int) -> bool:
        total = integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]
        return total / (w * h) >= mean_density

    rects = []
    for x in range(448, target.shape[1] - 448, 336):
        for y in range(448, target.shape[0] - 448, 336):
            r = (x - 448, y - 448, 896, 896)
            if not dense(*r):
                continue
            while True:
                t = (r[0] - step // 2, r[1] - step // 2, r[2] + step, r[3] + step)
                if (
                    min(t[:2]) < 0
                    or t[1] + t[3] > target.shape[0]
                    or t[0] + t[2] > target.shape[1]
                    or not dense(*t)
                ):
                    break
                r = t
            rects.append(r)
    rects.sort(key=lambda r: -r[2])
    scale = h0 / target.shape[0]
    shape = (round(target.shape[1] * scale), round(target.shape[0] * scale))
    picture, base = (
        cv2.resize(target, shape, interpolation=cubic),
        cv2.resize(whole, shape, interpolation=cubic),
    )
    out = base.copy()
    for r in rects:
        x, y, w, h = (int(v) for v in np.round(np.array(r) * scale))
        patch = base[y : y + h, x : x + w]
        square = cv2.resize(patch, (1024, 1024), interpolation=cubic)
        mapped = _stand_in_merge(square, double(picture[y : y + h, x : x + w], 896))
        fitted = np.polyval(np.polyfit(mapped.ravel(), square.ravel(), 1), mapped.ravel()).reshape(
            mapped.shape
        )
        merged = cv2.resize(fitted, (patch.shape[1], patch.shape[0]), interpolation=cubic)
        mask = cv2.resize(_mask(mask_size), (patch.shape[1], patch.shape[0]), interpolation=cv2.INTER_LINEAR)
        out[y : y + h, x : x + w] = out[y : y + h, x : x + w] * (1 - mask) + merged * mask
    return cv2.resize(out, (w0, h0), interpolation=cubic), len(rects)


def _strip(shape: tuple[int, int], width: int) -> np.ndarray:
    """A flat picture (a horizontal green ramp) with a noisy strip down its left side."""
    image = np.full((*shape, 3), 90, np.uint8)
    image[:, :, 1] = np.linspace(60, 160, shape[1]).astype(np.uint8)
    image[:, :width] = np.random.default_rng(5).integers(0, 255, (shape[0], width, 3))
    return image


def test_the_size_search_and_where_it_fails() -> None:
    for image in (_strip((448, 448), 180), _scene(2, (200, 300)), _scene(3, (512, 192))):
        assert leres_boost.whole_size(image) == _reference_size(image)
    assert leres_boost.long_enough(100, 160)
    assert not leres_boost.long_enough(159, 120)
    leres_boost.whole_size(_scene(4, (100, 160)))
    with pytest.raises(ValueError, match="too small"):
        leres_boost.whole_size(_scene(4, (159, 120)))


def test_the_blending_mask() -> None:
    np.testing.assert_array_equal(leres_boost.blend_mask(160), _mask(160))


@pytest.mark.parametrize("image", [_strip((448, 448), 180), _scene(6, (192, 256))], ids=["patches", "whole"])
def test_the_boosting_equals_the_extensions_pipeline(
    image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leres_boost, "MASK_SIZE", 300)  # the extension's 3000 takes seconds to blur
    expected, merged = _reference_boost(image, 300)
    assert merged == (3 if image.shape[0] == 448 else 0)  # the strip's three patches; the small one: none
    np.testing.assert_array_equal(leres_boost.boost(image, _stand_in_estimate, _stand_in_merge), expected)


def _reference_merge(x: torch.Tensor, s: dict[str, torch.Tensor], levels: int) -> torch.Tensor:
    """The U-Net written out: each level below the top concatenates the leaky-ReLU'd input (the extension's
    in-place LeakyReLU rewrites the skip) with its upsampled inner result."""

    def level(h: torch.Tensor, prefix: str, depth: int) -> torch.Tensor:
        h = F.leaky_relu(h, 0.2)
        inner = F.conv2d(h, s[f"{prefix}.1.weight"], stride=2, padding=1)
        if depth == levels - 1:
            return torch.cat(
                [h, F.conv_transpose2d(F.relu(inner), s[f"{prefix}.3.weight"], stride=2, padding=1)], 1
            )
        inner = level(inner, f"{prefix}.3.model", depth + 1)
        return torch.cat(
            [h, F.conv_transpose2d(F.relu(inner), s[f"{prefix}.5.weight"], stride=2, padding=1)], 1
        )

    inner = level(F.conv2d(x, s["model.model.0.weight"], stride=2, padding=1), "model.model.1.model", 1)
    return torch.tanh(
        F.conv_transpose2d(F.relu(inner), s["model.model.3.weight"], s["model.model.3.bias"], 2, 1)
    )


def test_the_merge_network_and_its_inputs(one_thread: None) -> None:
    with torch.device("meta"):
        layout = {k: tuple(t.shape) for k, t in leres_boost.MergeNetwork().state_dict().items()}
    assert layout == _merge_layout()  # the released file's keys and shapes
    state = random_merge_state(1, levels=6)
    model = leres_boost.MergeNetwork(6)
    model.load_state_dict(state)
    rng = np.random.default_rng(2)
    low, high = (rng.standard_normal((64, 64)).astype(np.float32) * 5 + 3 for _ in range(2))
    signed = [torch.from_numpy(2 * (d - d.min()) / (d.max() - d.min()) - 1)[None, None] for d in (low, high)]
    expected = (_reference_merge(torch.cat(signed, 1), state, 6)[0, 0].numpy() + 1) / 2
    out = leres_boost.merger(model)(low, high)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.shape == (64, 64)
    assert out.std() > 0.01


def test_depth_leres_boosted_end_to_end(
    leres_file: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module's call with the real files (the merge file at the released layout) and the two networks
    replaced by the stand-ins: LeReS at 448² and the merge net at 1024² are far too slow for a test."""
    merge_file = tmp_path / "latest_net_G.pth"
    torch.save(random_merge_state(0, scaled=False), merge_file)
    models: list[torch.nn.Module] = []
    monkeypatch.setattr(leres_boost, "MASK_SIZE", 300)
    monkeypatch.setattr(
        leres, "estimate", lambda picture, model, w, h: models.append(model) or _stand_in_estimate(picture, w)
    )
    monkeypatch.setattr(leres_boost, "merger", lambda model: models.append(model) or _stand_in_merge)
    image = _scene(7, (96, 120))
    out = leres.ENTRIES[1].run(image, Settings(192, 10.0, 30.0, None, weights=(leres_file[0], merge_file)))
    padded, height, width = _padded(image, 192)
    expected = _reference_map(_reference_boost(padded, 300)[0], 10.0, 30.0)[:height, :width]
    assert out.shape == (height, width, 3)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert {type(m) for m in models} == {leres.LeReSNetwork, leres_boost.MergeNetwork}
