"""The ``inpaint_only+lama`` preprocessor from a ControlNetLama.pth the user placed: a fast Fourier residual
block and the whole generator against independent functional forwards written here from the extension's
description, the fill's resizing, thresholding and blending against a numpy/cv2 re-implementation, the
unmasked pixels and the mask passed through unchanged, and the file: its generator tensors selected,
anything else refused naming it. The test file has 2 residual blocks instead of the released 18 (the
module reads the count from the keys) to stay fast; the layout is otherwise the released one."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import lama
from latentstudio.control.preprocessor_types import Settings
from latentstudio.models.files import ModelFileError

BLOCKS = 2  # residual blocks in the test file (18 in the released one)
LOCAL, GLOBAL = 128, 384  # the residual blocks' channel split (512 × 0.75 global)


def _up(blocks: int) -> list[tuple[int, int, int]]:
    """The transposed convolutions: (index of the layer, in, out); each followed by batch norm at +1."""
    return [(6 + blocks + 3 * i, 512 >> i, 256 >> i) for i in range(3)]


def random_lama_state(blocks: int = 18, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random FFCResNetGenerator state keyed as the released file (``model.N…``, batch norms with their
    statistics and counters), scaled so that the residual stack stays in range and the output sigmoid is
    not saturated. A new dict each call (its tensors shared between calls)."""
    return dict(_random_state(blocks, seed))


@functools.cache
def _random_state(blocks: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(key: str, cout: int, cin: int, k: int, gain: float = 2.0) -> None:
        state[key] = torch.randn(cout, cin, k, k, generator=g) * (gain / (cin * k * k)) ** 0.5

    def bn(key: str, n: int, scale: float = 1.0) -> None:
        state[f"{key}.weight"] = scale * (1 + 0.1 * torch.randn(n, generator=g))
        state[f"{key}.bias"] = 0.1 * torch.randn(n, generator=g)
        state[f"{key}.running_mean"] = 0.1 * torch.randn(n, generator=g)
        state[f"{key}.running_var"] = 1 + 0.2 * torch.rand(n, generator=g)
        state[f"{key}.num_batches_tracked"] = torch.tensor(0)

    conv("model.1.ffc.convl2l.weight", 64, 4, 7)
    bn("model.1.bn_l", 64)
    for n, (cin, cout) in enumerate(((64, 128), (128, 256)), start=2):
        conv(f"model.{n}.ffc.convl2l.weight", cout, cin, 3)
        bn(f"model.{n}.bn_l", cout)
    conv("model.4.ffc.convl2l.weight", LOCAL, 256, 3)
    conv("model.4.ffc.convl2g.weight", GLOBAL, 256, 3)
    bn("model.4.bn_l", LOCAL)
    bn("model.4.bn_g", GLOBAL)
    for block in range(5, 5 + blocks):
        for half in ("conv1", "conv2"):
            p = f"model.{block}.{half}"
            conv(f"{p}.ffc.convl2l.weight", LOCAL, LOCAL, 3, 1.0)
            conv(f"{p}.ffc.convl2g.weight", GLOBAL, LOCAL, 3, 1.0)
            conv(f"{p}.ffc.convg2l.weight", LOCAL, GLOBAL, 3, 1.0)
            conv(f"{p}.ffc.convg2g.conv1.0.weight", GLOBAL // 2, GLOBAL, 1)
            bn(f"{p}.ffc.convg2g.conv1.1", GLOBAL // 2)
            conv(f"{p}.ffc.convg2g.fu.conv_layer.weight", GLOBAL, GLOBAL, 1)
            bn(f"{p}.ffc.convg2g.fu.bn", GLOBAL)
            conv(f"{p}.ffc.convg2g.conv2.weight", GLOBAL, GLOBAL // 2, 1, 1.0)
            bn(f"{p}.bn_l", LOCAL, 0.3)
            bn(f"{p}.bn_g", GLOBAL, 0.3)
    for n, cin, cout in _up(blocks):
        state[f"model.{n}.weight"] = torch.randn(cin, cout, 3, 3, generator=g) * (2 / (cin * 9)) ** 0.5
        state[f"model.{n}.bias"] = 0.1 * torch.randn(cout, generator=g)
        bn(f"model.{n + 1}", cout)
    conv(f"model.{16 + blocks}.weight", 3, 64, 7, 50.0)
    state[f"model.{16 + blocks}.bias"] = 0.1 * torch.randn(3, generator=g)
    return state


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """A bias-free convolution with reflection padding (``k // 2`` for 3×3, none otherwise)."""
    pad = w.shape[-1] // 2 if w.shape[-1] == 3 else 0
    return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect") if pad else x, w, stride=stride)


def _bn(x: torch.Tensor, s: dict[str, torch.Tensor], key: str, relu: bool = True) -> torch.Tensor:
    y = F.batch_norm(
        x, s[f"{key}.running_mean"], s[f"{key}.running_var"], s[f"{key}.weight"], s[f"{key}.bias"]
    )
    return F.relu(y) if relu else y


def _spectral(x: torch.Tensor, s: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    """SpectralTransform without LFU: 1×1 down, the Fourier unit (real FFT, real/imaginary interleaved as
    channels, 1×1, batch norm, ReLU, inverse), their sum 1×1 up."""
    h = _bn(F.conv2d(x, s[f"{p}.conv1.0.weight"]), s, f"{p}.conv1.1")
    n, c, height, width = h.shape
    spectrum = torch.view_as_real(torch.fft.rfft2(h, norm="ortho"))  # [n, c, H, W/2+1, 2]
    parts = spectrum.permute(0, 1, 4, 2, 3).reshape(n, 2 * c, height, -1)
    y = _bn(F.conv2d(parts, s[f"{p}.fu.conv_layer.weight"]), s, f"{p}.fu.bn").reshape(n, c, 2, height, -1)
    fourier = torch.fft.irfft2(torch.complex(y[:, :, 0], y[:, :, 1]), s=(height, width), norm="ortho")
    return F.conv2d(h + fourier, s[f"{p}.conv2.weight"])


def _ffc_block(
    local: torch.Tensor, global_: torch.Tensor, s: dict[str, torch.Tensor], block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFCResnetBlock: two FFC + batch norm + ReLU layers, each part added back."""
    x_l, x_g = local, global_
    for half in ("conv1", "conv2"):
        p = f"model.{block}.{half}"
        to_l = _conv(x_l, s[f"{p}.ffc.convl2l.weight"]) + _conv(x_g, s[f"{p}.ffc.convg2l.weight"])
        to_g = _conv(x_l, s[f"{p}.ffc.convl2g.weight"]) + _spectral(x_g, s, f"{p}.ffc.convg2g")
        x_l, x_g = _bn(to_l, s, f"{p}.bn_l"), _bn(to_g, s, f"{p}.bn_g")
    return local + x_l, global_ + x_g


def _generator(x: torch.Tensor, s: dict[str, torch.Tensor], blocks: int) -> torch.Tensor:
    """The whole FFCResNetGenerator: ``[1, 4, H, W]`` → ``[1, 3, H, W]``."""
    h = _bn(_conv(F.pad(x, (3,) * 4, mode="reflect"), s["model.1.ffc.convl2l.weight"]), s, "model.1.bn_l")
    for n in (2, 3):
        h = _bn(_conv(h, s[f"model.{n}.ffc.convl2l.weight"], stride=2), s, f"model.{n}.bn_l")
    local = _bn(_conv(h, s["model.4.ffc.convl2l.weight"], stride=2), s, "model.4.bn_l")
    global_ = _bn(_conv(h, s["model.4.ffc.convl2g.weight"], stride=2), s, "model.4.bn_g")
    for block in range(5, 5 + blocks):
        local, global_ = _ffc_block(local, global_, s, block)
    h = torch.cat([local, global_], dim=1)
    for n, _, _ in _up(blocks):
        h = F.conv_transpose2d(h, s[f"model.{n}.weight"], s[f"model.{n}.bias"], 2, 1, 1)
        h = _bn(h, s, f"model.{n + 1}")
    last = f"model.{16 + blocks}"
    return torch.sigmoid(F.conv2d(F.pad(h, (3,) * 4, mode="reflect"), s[f"{last}.weight"], s[f"{last}.bias"]))


def _reference_fill(rgba: np.ndarray, s: dict[str, torch.Tensor], blocks: int) -> np.ndarray:
    """PreprocessorLamaInpaint + LamaInpainting written out: ``[H, W, 4]`` → ``[H, W, 4]`` uint8."""
    height, width = rgba.shape[:2]
    k = 256 / min(height, width)
    h, w = round(height * k), round(width * k)
    small = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(small, [[0, -h % 64], [0, -w % 64], [0, 0]], mode="edge").astype(np.float32) / 255.0
    hole = (padded[:, :, 3:] > 0.5).astype(np.float32)
    color = padded[:, :, :3] * (1 - hole)
    x = torch.from_numpy(np.concatenate([color, hole], axis=2)).permute(2, 0, 1)[None]
    with torch.no_grad():
        predicted = _generator(x, s, blocks)[0].permute(1, 2, 0).numpy()
    filled = np.clip((predicted * hole + color * (1 - hole)) * 255, 0, 255).astype(np.uint8)[:h, :w]
    back = cv2.resize(np.ascontiguousarray(filled), (width, height), interpolation=cv2.INTER_LINEAR)
    alpha = rgba[:, :, 3:].astype(np.float32) / 255
    out = back.astype(np.float32) * alpha + rgba[:, :, :3].astype(np.float32) * (1 - alpha)
    return np.concatenate([np.clip(out, 0, 255).astype(np.uint8), rgba[:, :, 3:]], axis=2)


def _rgba(seed: int, size: tuple[int, int]) -> np.ndarray:
    """Smooth random colours and a soft-edged ellipse to fill (a little 255, a little in between)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]] * (200 / max(size))
    noisy = np.stack([x, y, 255 - x - y / 2], axis=2) + rng.normal(0, 12, (*size, 3))
    color = cv2.GaussianBlur(noisy.clip(0, 255).astype(np.uint8), (0, 0), 1.0)
    ellipse = np.zeros(size, np.uint8)
    cv2.ellipse(ellipse, (size[1] // 2, size[0] // 3), (size[1] // 5, size[0] // 6), 20, 0, 360, 255, -1)
    mask = cv2.GaussianBlur(ellipse, (0, 0), 1.5)
    return np.concatenate([color, mask[:, :, None]], axis=2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("annotators") / "ControlNetPreprocessor" / "lama"
    folder.mkdir(parents=True)
    torch.save(random_lama_state(BLOCKS), folder / "ControlNetLama.pth")
    return folder / "ControlNetLama.pth"


@pytest.mark.usefixtures("one_thread")
def test_an_ffc_residual_block_equals_a_functional_one(weights: Path) -> None:
    model = lama.network(weights)
    g = torch.Generator().manual_seed(3)
    local, global_ = torch.randn(1, LOCAL, 12, 20, generator=g), torch.randn(1, GLOBAL, 12, 20, generator=g)
    with torch.no_grad():
        ours = model.model[6]((local, global_))
    expected = _ffc_block(local, global_, random_lama_state(BLOCKS), 6)
    for a, b in zip(ours, expected, strict=True):
        assert a is not None
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert (expected[1] != global_).float().mean() > 0.3  # the block changes its input


@pytest.mark.usefixtures("one_thread")
def test_fill_equals_the_extension_pipeline_written_out(weights: Path) -> None:
    rgba = _rgba(1, (90, 80))  # resized to 288×256, padded to 320×256
    out = lama.ENTRIES[0].run(rgba, Settings(512, 0.0, 0.0, None, weights=(weights,)))
    expected = _reference_fill(rgba, random_lama_state(BLOCKS), BLOCKS)
    assert out.shape == (90, 80, 4)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    np.testing.assert_array_equal(out[:, :, 3], rgba[:, :, 3])  # the mask passed through
    kept = rgba[:, :, 3] == 0
    np.testing.assert_array_equal(out[kept, :3], rgba[kept, :3])  # unmasked pixels unchanged
    hole = rgba[:, :, 3] == 255
    assert hole.sum() > 200
    assert (out[hole, :3] != rgba[hole, :3]).mean() > 0.9  # filled by the network
    assert out[hole, :3].std() > 20  # varied: neither a flat nor a saturated sigmoid


def test_entry_describes_the_extension_module() -> None:
    (entry,) = lama.ENTRIES
    assert (entry.name, entry.label, entry.tags, entry.files) == (
        "inpaint_only+lama", "inpaint_only+lama", ("Inpaint",), ("lama/ControlNetLama.pth",),
    )  # fmt: skip
    assert entry.accepts_mask
    assert not entry.uses_resolution
    assert entry.priority == 0
    assert entry.sliders == ()


def test_the_generator_tensors_are_selected_from_the_file(weights: Path, tmp_path: Path) -> None:
    state = random_lama_state(BLOCKS)
    extra = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    extra["discriminator.model0.0.weight"] = torch.zeros(3)  # not the generator's: ignored, as the extension
    path = tmp_path / "ControlNetLama.pth"
    torch.save(extra, path)
    model = lama.network(path)
    assert len(model.model) == 18 + BLOCKS
    ours = model.state_dict()
    assert not any(t.is_meta or t.requires_grad for t in ours.values())
    assert set(ours) == {k for k in state if k.startswith("model.")}  # with the counters the file lacks
    assert all(torch.equal(ours[k], v) for k, v in extra.items() if k.startswith("model."))


@pytest.mark.parametrize("change", ["renamed", "reshaped", "other"])
def test_a_file_that_is_not_lama_is_refused_naming_it(tmp_path: Path, change: str) -> None:
    state = random_lama_state(1)
    if change == "renamed":
        state["model.5.conv1.ffc.convl2x.weight"] = state.pop("model.5.conv1.ffc.convl2l.weight")
    elif change == "reshaped":
        state["model.17.weight"] = state["model.17.weight"][:, :, :2]  # the last convolution
    else:
        state = {"backbone.features.0.0.weight": torch.zeros(32, 4, 3, 3)}
    path = tmp_path / "ControlNetLama.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as refused:
        lama.fill(_rgba(0, (32, 32)), path)
    assert str(path) in str(refused.value)
    assert "not the LaMa generator" in str(refused.value)
    assert "\n" not in str(refused.value)
