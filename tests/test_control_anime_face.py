"""The anime face segmentation annotator (anime_face_segment, shown as seg_anime_face) from a UNet.pth the
user placed: the U-Net against an independent forward written here (MobileNetV2 encoder, upsampling
decoder) from the extension's description, the picture brought to a 512 short side as torchvision's
``Resize(512)`` does, the coloured class map cropped as the extension crops it, the entry's sliders and
tags, and a wrong file refused naming it."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torchvision import transforms

from latentstudio.control import anime_face
from latentstudio.control.preprocessor_types import RESOLUTION, Settings
from latentstudio.models.files import ModelFileError
from tests.test_control_teed import _padded

# the extension's class colours by name, in its class order
COLOURS = {
    "background": (255, 255, 0), "hair": (0, 0, 255), "eye": (255, 0, 0), "mouth": (255, 255, 255),
    "face": (0, 255, 0), "skin": (0, 255, 255), "clothes": (255, 0, 255),
}  # fmt: skip
# MobileNetV2's inverted residual rows (expansion, channels, blocks, first stride); blocks 1–16 are used
ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))
STAGE_OF_BLOCK = [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4]  # features index → en_block
STAGE_START = (0, 2, 4, 7, 14)


def _blocks() -> list[tuple[str, int, int, int, int]]:
    """``(key prefix, in, out, stride, expansion)`` of MobileNetV2 features 1–16 under ``en_blockK.J``."""
    out, channels, index = [], 32, 1
    for expansion, width, count, stride in ROWS:
        for i in range(count):
            stage = STAGE_OF_BLOCK[index]
            name = f"en_block{stage}.{index - STAGE_START[stage]}"
            out.append((name, channels, width, stride if i == 0 else 1, expansion))
            channels, index = width, index + 1
    return out


def random_anime_face_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random U-Net state keyed as the released file, batch norms with random statistics (a new dict
    of the same tensors on each call)."""
    return dict(_random_state(seed))


@functools.cache
def _random_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int, *, bias: bool = False, gain: float = 1.0) -> None:
        state[f"{name}.weight"] = (
            torch.randn(cout, cin, k, k, generator=g) * gain * (2.0 / (cin * k * k)) ** 0.5
        )
        if bias:
            state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.1

    def bn(name: str, channels: int) -> None:
        state[f"{name}.weight"] = 1 + 0.2 * torch.randn(channels, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=g)
        state[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=g)
        state[f"{name}.num_batches_tracked"] = torch.tensor(3)

    conv("en_block0.0.0", 32, 3, 3)
    bn("en_block0.0.1", 32)
    for name, cin, cout, _, expansion in _blocks():
        hidden, layer = cin * expansion, 0
        if expansion != 1:
            conv(f"{name}.conv.0.0", hidden, cin, 1)
            bn(f"{name}.conv.0.1", hidden)
            layer = 1
        conv(f"{name}.conv.{layer}.0", hidden, 1, 3)
        bn(f"{name}.conv.{layer}.1", hidden)
        conv(f"{name}.conv.{layer + 1}", cout, hidden, 1)
        bn(f"{name}.conv.{layer + 2}", cout)
    for stage, (cin, cout) in zip((4, 3, 2, 1), ((160, 96), (192, 32), (64, 24), (48, 16)), strict=True):
        conv(f"de_block{stage}.1", cout, cin, 3, bias=True)
    conv("de_block0.1", 7, 32, 3, bias=True, gain=4.0)  # spread logits: several classes win somewhere
    return state


def _forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """The U-Net written out with functional ops: ``[1, 3, H, W]`` → probabilities ``[1, 7, H', W']``."""

    def bn(h: torch.Tensor, name: str, relu6: bool = True) -> torch.Tensor:
        h = F.batch_norm(h, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                         s[f"{name}.bias"], training=False, eps=1e-5)  # fmt: skip
        return F.relu6(h) if relu6 else h

    def conv(h: torch.Tensor, name: str, **kw: int) -> torch.Tensor:
        return F.conv2d(h, s[f"{name}.weight"], s.get(f"{name}.bias"), **kw)

    feats = [bn(conv(x, "en_block0.0.0", stride=2, padding=1), "en_block0.0.1")]
    for name, cin, cout, stride, expansion in _blocks():
        h, layer = feats[-1], 0
        if expansion != 1:
            h, layer = bn(conv(h, f"{name}.conv.0.0"), f"{name}.conv.0.1"), 1
        h = conv(h, f"{name}.conv.{layer}.0", stride=stride, padding=1, groups=cin * expansion)
        h = bn(
            conv(bn(h, f"{name}.conv.{layer}.1"), f"{name}.conv.{layer + 1}"),
            f"{name}.conv.{layer + 2}",
            False,
        )
        feats.append(feats[-1] + h if stride == 1 and cin == cout else h)
    skips = [feats[i] for i in (1, 3, 6, 13, 16)]  # the ends of en_block0 … en_block4
    h = skips.pop()
    for stage in (4, 3, 2, 1):
        skip = skips.pop()
        h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"de_block{stage}.1", padding=1)
        h = F.leaky_relu(F.instance_norm(h), 0.1)
        h = torch.cat([F.interpolate(h, size=skip.shape[2:], mode="bilinear", align_corners=True), skip], 1)
    h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), "de_block0.1", padding=1)
    return torch.softmax(h, dim=1)


def _extension_input(image: np.ndarray, short: int = 512) -> torch.Tensor:
    """torchvision's ``Resize(short)`` (bicubic, on a PIL image) then ``ToTensor``, batched."""
    steps = [transforms.Resize(short, transforms.InterpolationMode.BICUBIC), transforms.ToTensor()]
    out: torch.Tensor = transforms.Compose(steps)(transforms.functional.to_pil_image(image))[None]
    return out


def _reference(
    image: np.ndarray, resolution: int, state: dict[str, torch.Tensor], short: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The extension's steps: the padded image through :func:`_extension_input`, the class of the largest
    probability coloured, ``[:height, :width]``. Also gives where the two likeliest classes are within 1e-5
    (a tie that rounding may break either way)."""
    padded, height, width = _padded(image, resolution)
    with torch.no_grad():
        p = _forward(_extension_input(padded, short), state)[0]
    top = torch.topk(p, 2, dim=0).values
    coloured = np.array(list(COLOURS.values()), np.uint8)[p.argmax(0).numpy()]
    return coloured[:height, :width], (top[0] - top[1] < 1e-5).numpy()[:height, :width]


def _picture(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.full((*size, 3), 230, np.uint8)
    for _ in range(5):
        centre = (int(rng.integers(0, size[1])), int(rng.integers(0, size[0])))
        cv2.circle(
            pixels, centre, int(rng.integers(6, 24)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1
        )
    return pixels


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file under our annotator folder (``anime_face_segment/UNet.pth``); not to be changed."""
    path = tmp_path_factory.mktemp("af") / "ControlNetPreprocessor" / anime_face.FILE
    path.parent.mkdir(parents=True)
    torch.save(random_anime_face_state(0), path)
    return path


def test_the_network_equals_an_independent_forward(weights: Path, one_thread: None) -> None:
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(2))  # sides not multiples of 32
    with torch.no_grad():
        ours = anime_face.network(weights)(x)
        reference = _forward(x, random_anime_face_state(0))
    assert ours.shape == (1, 7, 70, 90)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert len(torch.unique(reference.argmax(1))) >= 4  # the classes are not all one
    odd = anime_face.network(weights)(torch.rand(1, 3, 33, 47))
    assert odd.shape == (1, 7, 34, 48)  # each side rounded up to even, as the extension's


@pytest.mark.parametrize("size", [(64, 128), (128, 64), (512, 576), (704, 512), (100, 100)])
def test_the_network_input_is_torchvision_resize_512(size: tuple[int, int]) -> None:
    image = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    expected = _extension_input(image)
    ours = anime_face.network_input(image)
    assert ours.shape == expected.shape
    assert ours.is_contiguous()
    assert torch.equal(ours, expected)


@pytest.mark.parametrize(
    ("resolution", "shape"), [(128, (128, 160, 3)), (64, (64, 80, 3)), (192, (128, 170, 3))]
)
def test_seg_anime_face_coloured_and_cropped_as_the_extension(
    weights: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None, resolution: int, shape: tuple[int, ...]
) -> None:
    """With the network's short side at 128 instead of 512 (the forward at 512 is too slow for a unit test;
    the 512 resize itself is checked above): at resolution 128 the map is the picture's; at 64 it is the
    top-left of a larger map, at 192 the whole smaller map, as the extension crops it."""
    monkeypatch.setattr(anime_face, "SHORT_SIDE", 128)
    image = _picture(resolution, (48, 60))
    out = anime_face.ENTRIES[0].run(image, Settings(resolution, 0.0, 0.0, None, weights=(weights,)))
    expected, tied = _reference(image, resolution, random_anime_face_state(0), 128)
    assert out.shape == expected.shape == shape
    assert out.dtype == np.uint8
    assert tied.mean() < 1e-3
    assert np.array_equal(out[~tied], expected[~tied])
    found = {tuple(c) for c in np.unique(out.reshape(-1, 3), axis=0)}
    assert found <= set(COLOURS.values())
    assert len(found) >= 3


def test_a_data_parallel_file_gives_the_same_map(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.setattr(anime_face, "SHORT_SIDE", 64)
    image = _picture(7, (40, 40))
    direct = anime_face.anime_face_segment(image, 64, weights)
    assert direct.shape == (64, 64, 3)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({f"module.{k}": v for k, v in random_anime_face_state(0).items()}, wrapped)
    assert np.array_equal(anime_face.anime_face_segment(image, 64, wrapped), direct)


def test_the_entry_as_the_extension_lists_it() -> None:
    (entry,) = anime_face.ENTRIES
    assert anime_face.SHORT_SIDE == 512  # the network's input (the tests above shrink it)
    assert (entry.name, entry.label, entry.aliases) == (
        "anime_face_segment",
        "seg_anime_face",
        ("seg_anime_face",),
    )
    assert entry.resolution == RESOLUTION
    assert entry.module_detail()["sliders"] == [{"name": "Resolution", "value": 512, "min": 64, "max": 2048,
                                                  "step": 8}]  # fmt: skip
    assert (entry.priority, entry.tags, entry.files) == (
        0,
        ("Segmentation",),
        ("anime_face_segment/UNet.pth",),
    )


def test_a_wrong_file_is_refused_naming_it(tmp_path: Path) -> None:
    weights = tmp_path / "UNet.pth"
    state = random_anime_face_state(0)
    del state["de_block0.1.bias"]
    torch.save(state, weights)
    with pytest.raises(ModelFileError) as refused:
        anime_face.ENTRIES[0].run(_picture(0, (64, 64)), Settings(64, 0.0, 0.0, None, weights=(weights,)))
    assert str(weights) in str(refused.value)
    assert "anime face segmentation" in str(refused.value)
