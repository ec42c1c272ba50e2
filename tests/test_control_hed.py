"""The HED soft-edge annotators (softedge_hed, softedge_hedsafe, scribble_hed) from a ControlNetHED.pth the
user placed: the network against an independent forward written here from the extension's description,
the file looked for in our folder and in the extension's downloads folder, listed only when present, and
every bad file one refusal naming it (a pickle that would run code included)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, hed, preprocessors
from latentstudio.core import FieldError

BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


def random_hed_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ControlNetHED state, keyed as the released file (``norm``, ``blockN.convs.K``,
    ``blockN.projection``), scaled so that the edges are neither all 0 nor all 1."""
    g = torch.Generator().manual_seed(seed)
    state = {"norm": torch.rand(1, 3, 1, 1, generator=g) * 128}
    for n, (cin, cout, count) in enumerate(BLOCKS, start=1):
        for k in range(count):
            fan_in = (cin if k == 0 else cout) * 9
            scale = (2.0 / fan_in) ** 0.5 / (128.0 if n == 1 and k == 0 else 1.0)
            state[f"block{n}.convs.{k}.weight"] = (
                torch.randn(cout, cin if k == 0 else cout, 3, 3, generator=g) * scale
            )
            state[f"block{n}.convs.{k}.bias"] = torch.randn(cout, generator=g) * 0.01
        state[f"block{n}.projection.weight"] = torch.randn(1, cout, 1, 1, generator=g) * 0.05
        state[f"block{n}.projection.bias"] = torch.randn(1, generator=g) * 0.1
    return state


def _reference(image: np.ndarray, state: dict[str, torch.Tensor]) -> np.ndarray:
    """apply_hed, written out: 0–255 RGB minus norm; per block an optional 2×2 max-pool, 3×3 conv + ReLU
    layers and a 1×1 projection; projections resized bilinearly, averaged, sigmoid, ×255."""
    h = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] - state["norm"]
    projections = []
    for n, (_, _, count) in enumerate(BLOCKS, start=1):
        if n > 1:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        for k in range(count):
            h = F.relu(
                F.conv2d(h, state[f"block{n}.convs.{k}.weight"], state[f"block{n}.convs.{k}.bias"], padding=1)
            )
        projections.append(
            F.conv2d(h, state[f"block{n}.projection.weight"], state[f"block{n}.projection.bias"])
        )
    height, width = image.shape[:2]
    sized = [
        cv2.resize(p[0, 0].numpy(), (width, height), interpolation=cv2.INTER_LINEAR) for p in projections
    ]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(sized, axis=2), axis=2).astype(np.float64)))
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _picture(seed: int = 0, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 40, np.uint8)
    pixels[20:70, 15:55] = rng.integers(100, 255, 3)
    pixels[40:60, 30:75] = rng.integers(0, 100, 3)
    return pixels


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """An A1111-style root: ``models/`` with the HED file in our folder."""
    folder = tmp_path / "models" / annotators.OWN_FOLDER / "hed"
    folder.mkdir(parents=True)
    torch.save(random_hed_state(), folder / "ControlNetHED.pth")
    return tmp_path / "models"


def test_the_network_equals_an_independent_forward(models: Path) -> None:
    path = models / annotators.OWN_FOLDER / hed.FILE
    image = _picture()
    ours = hed.edges(image, path, safe=False)
    reference = _reference(image, random_hed_state())
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
    assert 10 < ours.mean() < 245  # not saturated: the comparison means something


def test_softedge_hed_at_the_preprocessor_resolution(models: Path) -> None:
    roots = annotators.roots(models)
    image = _picture(1)
    out = preprocessors.detect("softedge_hed", image, 128, roots=roots)
    assert out.shape == (154, 128, 3)  # the short side at 128, the long one scaled (rounded), unpadded
    padded, height, width = _padded(image, 128)
    reference = _reference(padded, random_hed_state())[:height, :width]
    assert np.abs(out[:, :, 0].astype(int) - reference.astype(int)).max() <= 1
    assert (out[:, :, 0] == out[:, :, 2]).all()
    assert np.array_equal(preprocessors.detect("hed", image, 128, roots=roots), out)  # name or label
    safe = preprocessors.detect("softedge_hedsafe", image, 128, roots=roots)
    assert set(np.unique(safe)) <= {0, 127, 255}  # safe_step: three levels
    scribble = preprocessors.detect("scribble_hed", image, 128, roots=roots)
    assert set(np.unique(scribble)) <= {0, 255}


def _padded(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    """resize_image_with_pad: short side to ``resolution`` (cubic up), edge-padded to multiples of 64."""
    k = resolution / min(image.shape[:2])
    height, width = round(image.shape[0] * k), round(image.shape[1] * k)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    pad = [[0, -height % 64], [0, -width % 64], [0, 0]]
    return np.pad(resized, pad, mode="edge"), height, width


def test_listed_only_where_the_file_is(models: Path, tmp_path: Path) -> None:
    assert "hed" in preprocessors.module_list(roots=annotators.roots(models))
    assert "softedge_hed" in preprocessors.module_list(True, annotators.roots(models))
    assert "softedge_hed" not in preprocessors.unavailable(annotators.roots(models))
    bare = tmp_path / "bare" / "models"
    assert "hed" not in preprocessors.module_list(roots=annotators.roots(bare))
    assert preprocessors.unavailable(annotators.roots(bare))["softedge_hed"] == [
        f"{annotators.DOWNLOADS}/{hed.FILE}"
    ]
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("softedge_hed", _picture(), 64, roots=annotators.roots(bare))
    assert refused.value.field == "module"
    assert "ControlNetHED.pth" in refused.value.message
    assert f"{annotators.OWN_FOLDER}/hed/" in refused.value.message
    assert f"{annotators.DOWNLOADS}/hed/" in refused.value.message
    # the extension's own downloads folder beside an A1111 models folder is read too
    downloads = tmp_path / "a1111" / annotators.DOWNLOADS / "hed"
    downloads.mkdir(parents=True)
    torch.save(random_hed_state(), downloads / "ControlNetHED.pth")
    roots = annotators.roots(tmp_path / "a1111" / "models")
    assert preprocessors.detect("softedge_hed", _picture(), 64, roots=roots).shape == (77, 64, 3)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran",))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (lambda p: p.write_bytes(pickle.dumps({"norm": _Evil()})), "refused"),
        (lambda p: torch.save({"norm": torch.zeros(1, 3, 1, 1)}, p), "not the ControlNetHED network"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "corrupt"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(models: Path, content: object, words: str) -> None:
    path = models / annotators.OWN_FOLDER / hed.FILE
    content(path)  # type: ignore[operator]
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("softedge_hed", _picture(), 64, roots=annotators.roots(models))
    assert refused.value.field == "module"
    assert str(path) in refused.value.message
    assert words in refused.value.message
    assert "\n" not in refused.value.message
