"""The PiDiNet annotators (softedge_pidinet, softedge_pidisafe, scribble_pidinet, t2ia_sketch_pidi) from a
table5_pidinet.pth the user placed, in the released layout (a checkpoint whose ``state_dict`` holds the
``module.``-prefixed weights): the network against an independent forward written here with the
pixel-difference convolutions folded into plain kernels, each module through ``detect``, listed only when
the file is there, and a missing or wrong file one refusal naming it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, pidinet, preprocessors
from latentstudio.core import FieldError

STAGES = ((60, 3), (120, 4), (240, 4), (240, 4))
MODULES = {
    "pidinet": "softedge_pidinet",
    "pidinet_safe": "softedge_pidisafe",
    "pidinet_scribble": "scribble_pidinet",
    "pidinet_sketch": "t2ia_sketch_pidi",
}


def _shapes() -> dict[str, tuple[int, ...]]:
    """The carv4 network's tensors (dil 24, spatial attention), named as in the released file."""
    shapes: dict[str, tuple[int, ...]] = {"init_block.weight": (60, 3, 3, 3)}
    channels = 60
    for s, (width, count) in enumerate(STAGES, start=1):
        for b in range(1, count + 1):
            name = f"block{s}_{b}"
            if s > 1 and b == 1:
                shapes |= {
                    f"{name}.shortcut.weight": (width, channels, 1, 1),
                    f"{name}.shortcut.bias": (width,),
                }
            shapes |= {
                f"{name}.conv1.weight": (channels, 1, 3, 3),
                f"{name}.conv2.weight": (width, channels, 1, 1),
            }
            channels = width
    for i, (width, _) in enumerate(STAGES):
        shapes |= {f"dilations.{i}.conv1.weight": (24, width, 1, 1), f"dilations.{i}.conv1.bias": (24,)}
        shapes |= {f"dilations.{i}.conv2_{j}.weight": (24, 24, 3, 3) for j in range(1, 5)}
        shapes |= {f"attentions.{i}.conv1.weight": (4, 24, 1, 1), f"attentions.{i}.conv1.bias": (4,)}
        shapes |= {f"attentions.{i}.conv2.weight": (1, 4, 3, 3)}
        shapes |= {f"conv_reduces.{i}.conv.weight": (1, 24, 1, 1), f"conv_reduces.{i}.conv.bias": (1,)}
    return shapes | {"classifier.weight": (1, 4, 1, 1), "classifier.bias": (1,)}


def random_pidinet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (He-scaled, small biases), keyed without the ``module.`` prefix."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in _shapes().items():
        scale = 0.1 if name.endswith("bias") else (2.0 / float(np.prod(shape[1:]))) ** 0.5
        state[name] = torch.randn(shape, generator=g) * scale
    return state


def released(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """The released file's layout: a training checkpoint of a DataParallel model."""
    return {"epoch": 19, "state_dict": {f"module.{k}": v for k, v in state.items()}}


def _folded(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
    """A pixel-difference kernel folded into a plain one (and its padding): central → the centre tap minus
    the kernel's sum; angular → each ring tap minus its clockwise predecessor; radial → a 5×5 with taps
    1…8 (row-major) at twice their direction's offset and negated at once it."""
    if kind == "cv":
        return weight, 1
    if kind == "cd":
        out = weight.clone()
        out[:, :, 1, 1] -= weight.sum(dim=(2, 3))
        return out, 1
    if kind == "ad":
        ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
        out = torch.zeros_like(weight)
        for j, (y, x) in enumerate(ring):
            py, px = ring[j - 1]
            out[:, :, y, x] = weight[:, :, y, x] - weight[:, :, py, px]
        return out, 1
    directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    taps = weight.flatten(2)[:, :, 1:]
    out = torch.zeros(*weight.shape[:2], 5, 5)
    for j, (dy, dx) in enumerate(directions):
        out[:, :, 2 + 2 * dy, 2 + 2 * dx] = taps[:, :, j]
        out[:, :, 2 + dy, 2 + dx] = -taps[:, :, j]
    return out, 2


def _reference(image: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
    """The edge probabilities ``[H, W]`` float32 for ``[H, W, 3]`` RGB, PiDiNet written out from the paper's
    description with folded kernels."""
    x = torch.from_numpy(image[:, :, ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    kinds = ["cd", "ad", "rd", "cv"] * 4
    kernel, pad = _folded(state["init_block.weight"], kinds[0])
    h, layer, sides = F.conv2d(x, kernel, padding=pad), 1, []
    for s, (_, count) in enumerate(STAGES, start=1):
        for b in range(1, count + 1):
            p = f"block{s}_{b}."
            if s > 1 and b == 1:
                h = F.max_pool2d(h, 2)
            kernel, pad = _folded(state[p + "conv1.weight"], kinds[layer])
            y = F.conv2d(
                F.relu(F.conv2d(h, kernel, padding=pad, groups=h.shape[1])), state[p + "conv2.weight"]
            )
            skip = (
                F.conv2d(h, state[p + "shortcut.weight"], state[p + "shortcut.bias"])
                if p + "shortcut.bias" in state
                else h
            )
            h, layer = y + skip, layer + 1
        d = f"dilations.{s - 1}."
        z = F.conv2d(F.relu(h), state[d + "conv1.weight"], state[d + "conv1.bias"])
        z = sum(
            F.conv2d(z, state[d + f"conv2_{j}.weight"], padding=r, dilation=r)
            for j, r in zip(range(1, 5), (5, 7, 9, 11), strict=True)
        )
        a = f"attentions.{s - 1}."
        gate = F.conv2d(
            F.conv2d(F.relu(z), state[a + "conv1.weight"], state[a + "conv1.bias"]),
            state[a + "conv2.weight"],
            padding=1,
        )
        side = F.conv2d(
            z * torch.sigmoid(gate),
            state[f"conv_reduces.{s - 1}.conv.weight"],
            state[f"conv_reduces.{s - 1}.conv.bias"],
        )
        sides.append(F.interpolate(side, image.shape[:2], mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(sides, dim=1), state["classifier.weight"], state["classifier.bias"])
    return torch.sigmoid(fused)[0, 0].numpy()


def _picture(seed: int = 0, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 40, np.uint8)
    pixels[20:70, 15:55] = rng.integers(100, 255, 3)
    pixels[40:60, 30:75] = rng.integers(0, 100, 3)
    cv2.circle(pixels, (60, 30), 12, rng.integers(0, 255, 3).tolist(), 2)
    return pixels


def _padded(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    """resize_image_with_pad: short side to ``resolution`` (cubic up, area down), edge-padded to multiples
    of 64."""
    k = resolution / min(image.shape[:2])
    height, width = round(image.shape[0] * k), round(image.shape[1] * k)
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return np.pad(resized, [[0, -height % 64], [0, -width % 64], [0, 0]], mode="edge"), height, width


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions: see conftest.one_thread


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Our annotator folder with the file in the released layout."""
    folder = tmp_path / annotators.OWN_FOLDER / "pidinet"
    folder.mkdir(parents=True)
    torch.save(released(random_pidinet_state()), folder / "table5_pidinet.pth")
    return tmp_path / annotators.OWN_FOLDER


def test_the_network_equals_an_independent_forward(root: Path) -> None:
    image = _picture()
    probability = _reference(image, random_pidinet_state())
    ours = pidinet.edges(image, root / pidinet.FILE)
    assert ours.shape == image.shape[:2]
    assert ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - (probability * 255).astype(int)).max() <= 1
    assert 20 < ours.mean() < 235
    assert ours.std() > 5


def test_each_module_at_the_preprocessor_resolution(root: Path) -> None:
    image = _picture(1)
    padded, height, width = _padded(image, 64)
    probability = _reference(padded, random_pidinet_state())[:height, :width]
    edge = {name: preprocessors.detect(name, image, 64, roots=[root]) for name in MODULES}
    for name, label in MODULES.items():
        assert edge[name].shape == (77, 64, 3)
        assert edge[name].dtype == np.uint8
        assert (edge[name][:, :, 0] == edge[name][:, :, 2]).all()
        assert preprocessors.find(label) is preprocessors.find(name)  # the label names the same module
    soft, safe, scribble, sketch = (edge[name][:, :, 0].astype(int) for name in MODULES)
    assert np.abs(soft - (probability * 255).astype(int)).max() <= 1
    assert set(np.unique(safe)) == {0, 127, 255}  # three levels: floor(3p) / 2
    unsure = np.abs(probability * 3 - np.round(probability * 3)) < 1e-3  # at a level's edge: either way
    assert (safe == np.minimum(np.floor(probability * 3) * 127.5, 255).astype(int))[~unsure].all()
    assert set(np.unique(sketch)) == {0, 255}
    unsure = np.abs(probability - 0.5) < 1e-3
    assert (sketch == np.where(probability > 0.5, 255, 0))[~unsure].all()
    assert ((probability > 0.4) & (probability < 0.5)).any()  # the threshold is tested at 0.5
    assert set(np.unique(scribble)) == {0, 255}
    blurred = cv2.GaussianBlur(soft.astype(np.float32), (0, 0), 3.0)
    framed = np.pad(blurred, 1, constant_values=-np.inf)  # outside the picture never wins
    peaks = np.zeros_like(blurred, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # a maximum along some line through the pixel
        ahead = framed[1 + dy : 1 + dy + blurred.shape[0], 1 + dx : 1 + dx + blurred.shape[1]]
        behind = framed[1 - dy : 1 - dy + blurred.shape[0], 1 - dx : 1 - dx + blurred.shape[1]]
        peaks |= (blurred >= ahead) & (blurred >= behind)
    thin = np.where(peaks & (blurred > 127), 1, 0).astype(np.uint8)
    assert thin.sum() > 20
    assert (scribble[thin == 1] == 255).mean() > 0.99  # the ridges, widened by the blur
    near = cv2.dilate(thin, np.ones((19, 19), np.uint8))  # within 9 px of a ridge
    assert (scribble[near == 0] == 0).all()  # nothing far from them
    assert 0 < (scribble == 255).mean() < 1
    assert not np.array_equal(scribble, sketch)


def test_an_unwrapped_unprefixed_state_reads_the_same(root: Path, tmp_path: Path) -> None:
    """The extension strips ``module.`` and unwraps ``state_dict`` only where present; so does ours."""
    plain = tmp_path / "plain" / "pidinet"
    plain.mkdir(parents=True)
    torch.save(random_pidinet_state(), plain / "table5_pidinet.pth")
    image = _picture(2, (64, 64))
    expected = preprocessors.detect("softedge_pidinet", image, 64, roots=[root])
    assert np.array_equal(preprocessors.detect("softedge_pidinet", image, 64, roots=[plain.parent]), expected)


def test_listed_only_where_the_file_is(root: Path, tmp_path: Path) -> None:
    listed = preprocessors.module_list(roots=[root])
    assert set(MODULES) <= set(listed)
    assert set(MODULES.values()) <= set(preprocessors.module_list(True, [root]))
    assert not set(MODULES.values()) & set(preprocessors.unavailable([root]))
    bare = [tmp_path / "bare"]
    assert not set(MODULES) & set(preprocessors.module_list(roots=bare))
    for name, label in MODULES.items():
        assert preprocessors.unavailable(bare)[label] == [f"{annotators.DOWNLOADS}/{pidinet.FILE}"]
        with pytest.raises(FieldError) as refused:
            preprocessors.detect(name, _picture(), 64, roots=bare)
        assert refused.value.field == "module"
        assert "table5_pidinet.pth" in refused.value.message
        assert f"{annotators.OWN_FOLDER}/pidinet/" in refused.value.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({k: v for k, v in released(random_pidinet_state()).items() if k != "state_dict"}, "no tensors"),
        (
            released({k: v for k, v in random_pidinet_state().items() if k != "classifier.bias"}),
            "classifier.bias",
        ),
        (
            released(random_pidinet_state() | {"init_block.weight": torch.zeros(60, 3, 5, 5)}),
            "init_block.weight",
        ),
        ({"norm": torch.zeros(1, 3, 1, 1)}, "not the PiDiNet network"),
    ],
)
def test_a_wrong_file_is_one_line_naming_it(root: Path, content: object, words: str) -> None:
    path = root / pidinet.FILE
    torch.save(content, path)
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("softedge_pidisafe", _picture(), 64, roots=[root])
    assert refused.value.field == "module"
    assert str(path) in refused.value.message
    assert words in refused.value.message
    assert "\n" not in refused.value.message
