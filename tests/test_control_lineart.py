"""The line-art annotators (lineart_realistic from ``lineart/sk_model.pth``, lineart_coarse from
``sk_model2.pth``): the generator against an independent forward written here from the extension's
description, the inverted map at the preprocessor resolution, each module needing its own file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, lineart, preprocessors
from latentstudio.core import FieldError
from tests.test_control_hed import _padded, _picture


def random_lineart_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random generator state keyed as the released files (``model0.1``, ``model1.0``/``.3``,
    ``model2.K.conv_block.1``/``.5``, ``model3.0``/``.3`` transposed, ``model4.1``)."""
    g = torch.Generator().manual_seed(seed)

    def conv(name: str, cout: int, cin: int, k: int, transposed: bool = False) -> None:
        shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        state[f"{name}.weight"] = torch.randn(*shape, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1

    state: dict[str, torch.Tensor] = {}
    conv("model0.1", 64, 3, 7)
    conv("model1.0", 128, 64, 3)
    conv("model1.3", 256, 128, 3)
    for block in range(3):
        conv(f"model2.{block}.conv_block.1", 256, 256, 3)
        conv(f"model2.{block}.conv_block.5", 256, 256, 3)
    conv("model3.0", 128, 256, 3, transposed=True)
    conv("model3.3", 64, 128, 3, transposed=True)
    conv("model4.1", 1, 64, 7)
    return state


def _reference(image: np.ndarray, s: dict[str, torch.Tensor]) -> np.ndarray:
    """The generator written out with functional ops: ``[H, W]`` uint8, lines dark."""

    def conv(x: torch.Tensor, name: str, pad: int = 0, stride: int = 1, padding: int = 0) -> torch.Tensor:
        x = F.pad(x, (pad,) * 4, mode="reflect") if pad else x
        return F.conv2d(x, s[f"{name}.weight"], s[f"{name}.bias"], stride=stride, padding=padding)

    def up(x: torch.Tensor, name: str) -> torch.Tensor:
        y = F.conv_transpose2d(x, s[f"{name}.weight"], s[f"{name}.bias"], 2, 1, 1)
        return F.relu(F.instance_norm(y))

    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    h = F.relu(F.instance_norm(conv(x, "model0.1", pad=3)))
    h = F.relu(F.instance_norm(conv(h, "model1.0", stride=2, padding=1)))
    h = F.relu(F.instance_norm(conv(h, "model1.3", stride=2, padding=1)))
    for block in range(3):
        r = F.relu(F.instance_norm(conv(h, f"model2.{block}.conv_block.1", pad=1)))
        h = h + F.instance_norm(conv(r, f"model2.{block}.conv_block.5", pad=1))
    h = up(up(h, "model3.0"), "model3.3")
    line = torch.sigmoid(conv(h, "model4.1", pad=3))[0, 0].numpy()
    return (line * 255.0).clip(0, 255).astype(np.uint8)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / annotators.OWN_FOLDER / "lineart"
    folder.mkdir(parents=True)
    torch.save(random_lineart_state(0), folder / "sk_model.pth")
    return tmp_path / "models"


def test_the_generator_equals_an_independent_forward(models: Path) -> None:
    image = _picture(3, (64, 96))
    ours = lineart.lines(image, models / annotators.OWN_FOLDER / lineart.REALISTIC)
    reference = _reference(image, random_lineart_state(0))
    assert ours.shape == (64, 96)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
    assert 10 < ours.mean() < 245


def test_lineart_realistic_and_coarse_each_from_its_file(models: Path) -> None:
    roots = annotators.roots(models)
    image = _picture(4)
    out = preprocessors.detect("lineart_realistic", image, 96, roots=roots)
    padded, height, width = _padded(image, 96)
    expected = 255 - _reference(padded, random_lineart_state(0))[:height, :width]
    assert out.shape == (height, width, 3)
    assert np.abs(out[:, :, 1].astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(preprocessors.detect("lineart", image, 96, roots=roots), out)
    assert "lineart" in preprocessors.module_list(roots=roots)
    assert "lineart_coarse" not in preprocessors.module_list(roots=roots)  # sk_model2.pth is not there
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("lineart_coarse", image, 96, roots=roots)
    assert "sk_model2.pth" in refused.value.message
    torch.save(random_lineart_state(1), models / annotators.OWN_FOLDER / lineart.COARSE)
    coarse = preprocessors.detect("lineart_coarse", image, 96, roots=roots)
    assert coarse.shape == out.shape
    assert not np.array_equal(coarse, out)  # its own weights
