"""The TEED soft-edge annotators (softedge_teed, softedge_anyline) from a 7_model.pth / MTEED.pth the user
placed: the network against an independent forward written here from the extension's description, the
Safe Steps slider, Anyline's faint lines, listing only when the file is there, and a missing or wrong file
refused naming it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from scipy import ndimage

from latentstudio.control import preprocessors, teed
from latentstudio.core import FieldError

# the released file's tensors: name → (out, in per group, kernel); a transposed convolution is (in, out, k)
CONVS = {
    "block_1.conv1": (16, 3, 3), "block_1.conv2": (16, 16, 3),
    "block_2.conv1": (32, 16, 3), "block_2.conv2": (32, 32, 3),
    "dblock_3.denselayer1.conv1": (48, 32, 3), "dblock_3.denselayer1.conv2": (48, 48, 3),
    "side_1.conv": (32, 16, 1), "pre_dense_3.conv": (48, 32, 1),
    "up_block_1.features.0": (1, 16, 1), "up_block_1.features.2": (1, 1, 2),
    "up_block_2.features.0": (1, 32, 1), "up_block_2.features.2": (1, 1, 2),
    "up_block_3.features.0": (16, 48, 1), "up_block_3.features.2": (16, 16, 4),
    "up_block_3.features.3": (1, 16, 1), "up_block_3.features.5": (1, 1, 4),
    "block_cat.DWconv1": (24, 1, 3), "block_cat.DWconv2": (24, 1, 3),
}  # fmt: skip


def random_teed_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random TED state keyed as the released files, scaled so that the edges are not saturated."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (cout, cin, k) in CONVS.items():
        scale = (2.0 / (cin * k * k)) ** 0.5 / (128.0 if name == "block_1.conv1" else 1.0)
        scale *= 3.0 if name.startswith("up_block") else 1.0  # logits spread about ±1
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * scale
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1  # (square transposed ones here)
    return state


def _smish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(torch.log(1 + torch.sigmoid(x)))


def _logits(x: torch.Tensor, s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """TED written out: ``[1, 3, H, W]`` in 0–255 → four ``[1, 1, H, W]`` logits."""

    def conv(name: str, h: torch.Tensor, **kw: int) -> torch.Tensor:
        return F.conv2d(h, s[f"{name}.weight"], s[f"{name}.bias"], **kw)

    def up(name: str, h: torch.Tensor, steps: int) -> torch.Tensor:
        for i in range(steps):
            h = _smish(conv(f"{name}.features.{3 * i}", h))
            w, b = s[f"{name}.features.{3 * i + 2}.weight"], s[f"{name}.features.{3 * i + 2}.bias"]
            h = F.conv_transpose2d(h, w, b, stride=2, padding=steps - 1)
        return h

    b1 = _smish(conv("block_1.conv2", _smish(conv("block_1.conv1", x, stride=2, padding=1)), padding=1))
    b2 = conv("block_2.conv2", _smish(conv("block_2.conv1", b1, padding=1)), padding=1)
    pooled = F.max_pool2d(b2, 3, 2, 1)
    h = _smish(pooled + conv("side_1.conv", b1, stride=2))
    h = conv("dblock_3.denselayer1.conv2", _smish(conv("dblock_3.denselayer1.conv1", h, padding=2)))
    b3 = 0.5 * (h + conv("pre_dense_3.conv", pooled))
    maps = [up("up_block_1", b1, 1), up("up_block_2", b2, 1), up("up_block_3", b3, 2)]
    a = conv("block_cat.DWconv1", _smish(torch.cat(maps, 1)), padding=1, groups=3)
    a2 = conv("block_cat.DWconv2", _smish(a), padding=1, groups=24)
    return [*maps, _smish((a + a2).sum(1, keepdim=True))]


def _reference(image: np.ndarray, state: dict[str, torch.Tensor], steps: int) -> np.ndarray:
    """The detector: logits averaged, sigmoid, floored to ``steps`` + 1 levels (unless 0), ×255."""
    with torch.no_grad():
        maps = _logits(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None], state)
    mean = torch.cat(maps, 1).mean(1)[0].double().numpy()
    edge = 1 / (1 + np.exp(-mean))
    if steps:
        edge = np.floor(edge * (steps + 1)) / steps
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _picture(seed: int = 0, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 200, np.uint8)
    pixels[20:70, 15:55] = rng.integers(100, 255, 3)
    pixels[40:60, 30:75] = rng.integers(0, 100, 3)
    cv2.circle(pixels, (40, 45), 25, (196, 196, 196), 1)  # a faint line
    return pixels


def _padded(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    """resize_image_with_pad: short side to ``resolution`` (cubic up, area down), edge-padded to multiples
    of 64."""
    k = resolution / min(image.shape[:2])
    height, width = round(image.shape[0] * k), round(image.shape[1] * k)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad = [[0, -height % 64], [0, -width % 64], [0, 0]]
    return np.pad(resized, pad, mode="edge"), height, width


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Our annotator folder with both files (different random weights)."""
    folder = tmp_path / "ControlNetPreprocessor" / "TEED"
    folder.mkdir(parents=True)
    torch.save(random_teed_state(0), folder / "7_model.pth")
    torch.save(random_teed_state(1), folder / "MTEED.pth")
    return tmp_path / "ControlNetPreprocessor"


def test_the_network_equals_an_independent_forward(root: Path) -> None:
    image, _, _ = _padded(_picture(), 64)
    ours = teed.edges(image, root / teed.FILE, 0)
    reference = _reference(image, random_teed_state(0), 0)
    assert ours.shape == image.shape[:2]
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
    assert 10 < ours.mean() < 245  # not saturated: the comparison means something
    assert len(np.unique(ours)) > 20


def test_softedge_teed_at_the_preprocessor_resolution_with_safe_steps(root: Path) -> None:
    image = _picture(1)
    raw = preprocessors.detect("softedge_teed", image, 64, 0, roots=[root])
    assert raw.shape == (77, 64, 3)
    assert raw.dtype == np.uint8
    assert (raw[:, :, 0] == raw[:, :, 2]).all()
    padded, height, width = _padded(image, 64)
    reference = _reference(padded, random_teed_state(0), 0)[:height, :width]
    assert np.abs(raw[:, :, 0].astype(int) - reference.astype(int)).max() <= 1
    default = preprocessors.detect("softedge_teed", image, 64, roots=[root])  # Safe Steps 2
    assert set(np.unique(default)) <= {0, 127, 255}
    assert len(np.unique(default)) > 1
    assert not np.array_equal(default, raw)
    five = preprocessors.detect("softedge_teed", image, 64, 5, roots=[root])
    assert set(np.unique(five)) <= {0, 51, 102, 153, 204, 255}
    assert len(np.unique(five)) > 2
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("softedge_teed", image, 64, 11, roots=[root])
    assert refused.value.field == "threshold_a"


def _lineart_ones(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: lineart_standard (at the image's own size) equal to 1."""
    x = image.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity = intensity / max(16.0, float(np.median(strong)) if strong.size else 0.0) * 127
    return np.asarray(intensity.clip(0, 255).astype(np.uint8) == 1)


def _faint(padded: np.ndarray) -> np.ndarray:
    """Anyline's mask written out: the lineart 1s in 3-D 6-connected groups of ≥ 36 over three channels."""
    ones = np.repeat(_lineart_ones(padded)[:, :, None], 3, axis=2)
    labels, _ = ndimage.label(ones, ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel())
    return np.asarray(ones & (sizes[labels] >= 36))[:, :, 0]


def test_softedge_anyline_sets_the_faint_lines_to_one(root: Path) -> None:
    image = _picture(2)
    out = preprocessors.detect("softedge_anyline", image, 128, roots=[root])
    assert out.shape == (154, 128, 3)
    assert out.dtype == np.uint8
    padded, height, width = _padded(image, 128)
    mask = _faint(padded)
    assert 0 < mask.sum() < mask.size // 4  # some faint lines, not everything
    edges = _reference(padded, random_teed_state(1), 2)  # MTEED's weights, Safe Steps 2
    expected = np.where(mask, 1, edges)[:height, :width]
    assert np.abs(out[:, :, 0].astype(int) - expected.astype(int)).max() <= 1
    assert (out[:, :, 0] == 1).sum() == mask[:height, :width].sum()
    # a resolution that is not a multiple of 64 runs too (the lines at the padded size)
    assert preprocessors.detect("softedge_anyline", image, 72, roots=[root]).shape == (86, 72, 3)


def test_anyline_keeps_faint_groups_of_twelve_pixels_or_more() -> None:
    rng = np.random.default_rng(1)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (128, 128)).astype(np.float32), (0, 0), 4.0)
    grey = (200 + 3 * noise / noise.std()).clip(0, 255).astype(np.uint8)
    image = np.repeat(grey[:, :, None], 3, axis=2)
    mask = teed.faint_lines(image)
    assert np.array_equal(mask, _faint(image))
    labels, _ = ndimage.label(_lineart_ones(image))  # 2-D, 4-connected
    sizes = np.bincount(labels.ravel())[1:]
    assert 12 in sizes
    assert (sizes < 12).any()
    assert mask.sum() == sizes[sizes >= 12].sum()


def test_sliders_as_the_extension_lists_them() -> None:
    detail = preprocessors.find("softedge_teed").module_detail()
    safe = {"name": "Safe Steps", "value": 2, "min": 0, "max": 10, "step": 1}
    resolution = {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}
    assert detail["sliders"] == [resolution, safe]
    anyline = preprocessors.find("softedge_anyline").module_detail()
    assert anyline["sliders"] == [{**resolution, "value": 1280}, safe]


def test_listed_only_where_the_file_is(root: Path, tmp_path: Path) -> None:
    assert {"softedge_teed", "softedge_anyline"} <= set(preprocessors.module_list(roots=[root]))
    bare = tmp_path / "bare"
    assert "softedge_teed" not in preprocessors.module_list(roots=[bare])
    (root / teed.MTEED_FILE).unlink()
    listed = preprocessors.module_list(roots=[root])
    assert "softedge_teed" in listed
    assert "softedge_anyline" not in listed
    for module, name in (("softedge_teed", "7_model.pth"), ("softedge_anyline", "MTEED.pth")):
        with pytest.raises(FieldError) as refused:
            preprocessors.detect(module, _picture(), 64, roots=[bare])
        assert refused.value.field == "module"
        assert name in refused.value.message
        assert "/TEED/" in refused.value.message


def test_a_wrong_file_is_refused_naming_it(root: Path) -> None:
    path = root / teed.FILE
    state = random_teed_state()
    del state["block_cat.DWconv2.bias"]
    torch.save(state, path)
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("softedge_teed", _picture(), 64, roots=[root])
    assert refused.value.field == "module"
    assert str(path) in refused.value.message
    assert "not the TEED network" in refused.value.message
