"""The anime line-art annotator (lineart_anime) from a netG.pth the user placed: the U-Net against an
independent forward written here from the extension's description, the stretch to multiples of 256 and
back, the inverted map at the preprocessor resolution, and the file: found in its folder, refused when it is
not this network.

The full network (64 to 512 channels, ~54M weights) takes ~20 s here on CPU, so the random files are the
released layout at an eighth of its width (8 to 64 channels): all eight levels, the same keys, the same
2×2 bottom before the innermost halving, the same stretch to 256; the full-width layout is checked key by
key against the released one without running it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, lineart_anime
from latentstudio.control.preprocessor_types import RESOLUTION, Settings
from latentstudio.models.files import ModelFileError
from tests.test_control_hed import _padded, _picture

LEVELS = 8
WIDTH = 8  # the test files' width (the released one: 64)


def _prefix(depth: int) -> str:
    """The key prefix of U-Net level ``depth`` (0: outermost): each level's ``model`` sequence holds the
    next level at index 1 (outermost) or 3."""
    prefix = "module.model.model"
    for d in range(depth):
        prefix += ".1.model" if d == 0 else ".3.model"
    return prefix


def _channels(depth: int, width: int) -> tuple[int, int]:
    """(channels into the level's down convolution, channels it makes); the up convolution goes back to
    the first (1 at the outermost level)."""
    return (3, width) if depth == 0 else (width * 2 ** min(depth - 1, 3), width * 2 ** min(depth, 3))


def _convs(width: int = WIDTH) -> list[tuple[str, int, int, bool]]:
    """Every convolution of the released file at ``width`` (64 there): (key, in, out, transposed)."""
    convs = []
    for depth in range(LEVELS):
        cin, inner = _channels(depth, width)
        outer = 1 if depth == 0 else cin
        down, up = (".0", ".3") if depth == 0 else (".1", ".3" if depth == LEVELS - 1 else ".5")
        convs.append((_prefix(depth) + down, cin, inner, False))
        convs.append((_prefix(depth) + up, inner if depth == LEVELS - 1 else 2 * inner, outer, True))
    return convs


def random_lineart_anime_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random UnetGenerator(3, 1, 8, WIDTH) state keyed as the released file (``module.`` first, biases
    on every convolution, no norm parameters)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, cin, cout, transposed in _convs():
        shape = (cin, cout, 4, 4) if transposed else (cout, cin, 4, 4)
        fan_in = cin * 4 if transposed else cin * 16  # a stride-2 transposed 4×4 reads 2×2 taps per input
        state[f"{key}.weight"] = torch.randn(*shape, generator=g) * fan_in**-0.5
        state[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.1
    return state


def _unet(x: torch.Tensor, s: dict[str, torch.Tensor], depth: int = 0) -> torch.Tensor:
    """The U-Net written out with functional ops, from level ``depth`` down."""
    p = _prefix(depth)

    def conv(h: torch.Tensor, key: str) -> torch.Tensor:
        return F.conv2d(h, s[f"{p}{key}.weight"], s[f"{p}{key}.bias"], stride=2, padding=1)

    def up(h: torch.Tensor, key: str) -> torch.Tensor:
        return F.conv_transpose2d(F.relu(h), s[f"{p}{key}.weight"], s[f"{p}{key}.bias"], 2, 1)

    if depth == 0:
        return torch.tanh(up(_unet(conv(x, ".0"), s, 1), ".3"))
    h = conv(F.leaky_relu(x, 0.2), ".1")
    if depth == LEVELS - 1:
        return torch.cat([x, F.instance_norm(up(h, ".3"))], dim=1)
    h = _unet(F.instance_norm(h), s, depth + 1)
    return torch.cat([x, F.instance_norm(up(h, ".5"))], dim=1)


def _reference(image: np.ndarray, s: dict[str, torch.Tensor]) -> np.ndarray:
    """LineartAnimeDetector: stretched (cubic) to multiples of 256, the U-Net, back: ``[H, W]`` uint8."""
    height, width = image.shape[:2]
    big = cv2.resize(image, (-(-width // 256) * 256, -(-height // 256) * 256), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(big.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        line = (_unet(x, s)[0, 0] * 127.5 + 127.5).numpy()
    return cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module builds the test files' width."""
    monkeypatch.setattr(lineart_anime, "WIDTH", WIDTH)


def test_the_released_layout() -> None:
    with torch.device("meta"):
        released = lineart_anime.LineartAnimeNetwork()
    found = {f"module.{k}": tuple(t.shape) for k, t in released.state_dict().items()}
    expected = {}
    for key, cin, cout, transposed in _convs(64):
        expected[f"{key}.weight"] = (cin, cout, 4, 4) if transposed else (cout, cin, 4, 4)
        expected[f"{key}.bias"] = (cout,)
    assert found == expected
    assert sum(t.numel() for t in released.state_dict().values()) > 54_000_000


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``<root>/ControlNetPreprocessor/lineart_anime/netG.pth`` with a random state, and that state."""
    root = tmp_path_factory.mktemp("lineart_anime")
    path = root / annotators.OWN_FOLDER / lineart_anime.FILE
    path.parent.mkdir(parents=True)
    state = random_lineart_anime_state(0)
    torch.save(state, path)
    return path, state


def test_the_unet_equals_an_independent_forward(weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = weights
    model = lineart_anime.network(path)
    x = torch.from_numpy(_picture(2, (256, 256)).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        ours, reference = model(x), _unet(x, state)
    assert ours.shape == (1, 1, 256, 256)
    assert torch.allclose(ours, reference, atol=1e-4)
    assert float(ours.std()) > 0.1
    assert float((ours.abs() > 0.99).float().mean()) < 0.05


def test_lineart_anime_at_the_preprocessor_resolution(weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = weights
    image = _picture(3, (80, 300))  # at 80: 80×300, padded 128×320, stretched 256×512 for the network
    (entry,) = lineart_anime.ENTRIES
    out = entry.run(image, Settings(80, 0.0, 0.0, None, weights=(path,)))
    padded, height, width = _padded(image, 80)
    expected = 255 - _reference(padded, state)[:height, :width]
    assert out.shape == (height, width, 3) == (80, 300, 3)
    assert (out[:, :, 0] == out[:, :, 2]).all()
    assert np.abs(out[:, :, 1].astype(int) - expected.astype(int)).max() <= 1
    assert 10 < out.mean() < 245
    direct = lineart_anime.lineart_anime(image, 80, path)
    assert np.array_equal(direct, out)


def test_the_entry_and_its_file(weights: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    path, state = weights
    (entry,) = lineart_anime.ENTRIES
    assert (entry.name, entry.label, entry.priority, entry.tags) == ("lineart_anime",) * 2 + (0, ("Lineart",))
    assert entry.sliders == (RESOLUTION,)
    assert entry.files == ("lineart_anime/netG.pth",)
    root = path.parents[2]
    assert annotators.locate(entry.files, annotators.roots(root)) == (path,)
    assert annotators.locate(entry.files, annotators.roots(tmp_path)) is None
    assert "netG.pth" in annotators.missing(entry.name, entry.files)
    bare = tmp_path / "bare" / "netG.pth"  # the keys without DataParallel's prefix load as well
    bare.parent.mkdir()
    torch.save({k.removeprefix("module."): t for k, t in state.items()}, bare)
    model = lineart_anime.network(bare)
    assert torch.equal(model.state_dict()["model.model.0.weight"], state["module.model.model.0.weight"])
    short = {k: t for k, t in state.items() if ".3.model.3.model.3.model.3.model.3.model" not in k}
    wrong = tmp_path / "wrong" / "netG.pth"  # a seven-level U-Net is not this network
    wrong.parent.mkdir()
    torch.save(short, wrong)
    with pytest.raises(ModelFileError, match="anime line-art"):
        lineart_anime.network(wrong)
