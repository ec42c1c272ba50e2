"""The normal_bae annotator from a scannet.pt the user placed, in the released layout (a checkpoint whose
``model`` entry holds the ``module.``-prefixed weights of EfficientNet-B5 and the decoder, full size): the
network against an independent functional forward written here from the extension's description, the
preprocessor end to end against it (resize, pad to 64, crop), its registry entry, and a wrong file refused
naming it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import normal_bae
from latentstudio.control.preprocessor_types import Settings
from latentstudio.models.files import ModelFileError

# B5 stages: (separable, repeats, kernel, stride, expansion, channels)
B5 = ((1, 3, 3, 1, 1, 24), (0, 5, 3, 2, 6, 40), (0, 5, 5, 2, 6, 64), (0, 7, 3, 2, 6, 128),
      (0, 7, 5, 1, 6, 176), (0, 9, 5, 2, 6, 304), (0, 3, 3, 1, 6, 512))  # fmt: skip
UPS = ((2048 + 176, 1024), (1024 + 64, 512), (512 + 40, 256), (256 + 24, 128))
MLPS = (("out_conv_res4", 516), ("out_conv_res2", 260), ("out_conv_res1", 132))
ENC = "encoder.original_model"
Shapes = dict[str, tuple[int, ...]]
State = dict[str, torch.Tensor]


def _bn(shapes: Shapes, key: str, channels: int) -> None:
    for part in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{key}.{part}"] = (channels,)
    shapes[f"{key}.num_batches_tracked"] = ()


def _blocks() -> Iterator[tuple[str, bool, int, int, int, int, int]]:
    """(key, separable, in, out, kernel, stride, expansion) of the 39 blocks."""
    channels = 48
    for s, (separable, repeats, kernel, stride, expansion, width) in enumerate(B5):
        for i in range(repeats):
            yield (
                f"{ENC}.blocks.{s}.{i}",
                bool(separable),
                channels,
                width,
                kernel,
                stride if i == 0 else 1,
                expansion,
            )
            channels = width


def _shapes() -> Shapes:
    """The NNET's tensors, named as in the released file (without ``module.``)."""
    shapes: Shapes = {f"{ENC}.conv_stem.weight": (48, 3, 3, 3)}
    _bn(shapes, f"{ENC}.bn1", 48)
    for key, separable, cin, cout, kernel, _, expansion in _blocks():
        hidden = cin * expansion
        if not separable:
            shapes[f"{key}.conv_pw.weight"] = (hidden, cin, 1, 1)
        shapes[f"{key}.conv_dw.weight"] = (hidden, 1, kernel, kernel)
        shapes[f"{key}.se.conv_reduce.weight"] = (cin // 4, hidden, 1, 1)
        shapes[f"{key}.se.conv_reduce.bias"] = (cin // 4,)
        shapes[f"{key}.se.conv_expand.weight"] = (hidden, cin // 4, 1, 1)
        shapes[f"{key}.se.conv_expand.bias"] = (hidden,)
        shapes[f"{key}.{'conv_pw' if separable else 'conv_pwl'}.weight"] = (cout, hidden, 1, 1)
        norms = ((1, hidden), (2, cout)) if separable else ((1, hidden), (2, hidden), (3, cout))
        for n, channels in norms:
            _bn(shapes, f"{key}.bn{n}", channels)
    shapes[f"{ENC}.conv_head.weight"] = (2048, 512, 1, 1)
    _bn(shapes, f"{ENC}.bn2", 2048)
    shapes |= {"decoder.conv2.weight": (2048, 2048, 1, 1), "decoder.conv2.bias": (2048,)}
    for i, (cin, cout) in enumerate(UPS, start=1):
        for j, c in ((0, cin), (3, cout)):
            shapes |= {
                f"decoder.up{i}._net.{j}.weight": (cout, c, 3, 3),
                f"decoder.up{i}._net.{j}.bias": (cout,),
            }
            _bn(shapes, f"decoder.up{i}._net.{j + 1}", cout)
    shapes |= {"decoder.out_conv_res8.weight": (4, 512, 3, 3), "decoder.out_conv_res8.bias": (4,)}
    for name, cin in MLPS:
        for j, (c, cout) in enumerate(((cin, 128), (128, 128), (128, 128), (128, 4))):
            shapes |= {
                f"decoder.{name}.{2 * j}.weight": (cout, c, 1),
                f"decoder.{name}.{2 * j}.bias": (cout,),
            }
    return shapes


def random_state(seed: int = 0) -> State:
    """Random float16 weights (He-scaled; batch norms near identity), drawn in half precision to keep the
    72.6 million quick to make and the file small."""
    g = torch.Generator().manual_seed(seed)
    shapes = _shapes()
    state: State = {}
    for key, shape in shapes.items():
        prefix, _, part = key.rpartition(".")
        if not shape:
            state[key] = torch.tensor(0)
            continue
        tensor = torch.empty(shape, dtype=torch.float16)
        if part == "running_var":
            tensor.uniform_(1.0, 1.2, generator=g)
        elif part == "weight" and f"{prefix}.running_var" in shapes:  # a batch norm's scale
            tensor.normal_(1.0, 0.1, generator=g)
        elif len(shape) == 1:  # biases, batch-norm shifts and means
            tensor.normal_(0.0, 0.1, generator=g)
        else:
            tensor.normal_(0.0, (2.0 / math.prod(shape[1:])) ** 0.5, generator=g)
        state[key] = tensor
    return state


def _norm(x: torch.Tensor, s: State, key: str, eps: float) -> torch.Tensor:
    return F.batch_norm(x, s[f"{key}.running_mean"], s[f"{key}.running_var"], s[f"{key}.weight"],
                        s[f"{key}.bias"], eps=eps)  # fmt: skip


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    """A convolution with TensorFlow "same" padding (the extra row and column after)."""
    k = w.shape[-1]
    if stride == 1:
        return F.conv2d(x, w, None, 1, k // 2, 1, groups)
    pads = [max((math.ceil(n / stride) - 1) * stride + k - n, 0) for n in (x.shape[3], x.shape[2])]
    x = F.pad(x, [pads[0] // 2, pads[0] - pads[0] // 2, pads[1] // 2, pads[1] - pads[1] // 2])
    return F.conv2d(x, w, None, stride, 0, 1, groups)


def _encoder(x: torch.Tensor, s: State) -> list[torch.Tensor]:
    h = F.silu(_norm(_conv(x, s[f"{ENC}.conv_stem.weight"], 2), s, f"{ENC}.bn1", 1e-3))
    taps = []
    for key, separable, cin, cout, _, stride, _ in _blocks():
        y = h if separable else F.silu(_norm(_conv(h, s[f"{key}.conv_pw.weight"]), s, f"{key}.bn1", 1e-3))
        dw = "bn1" if separable else "bn2"
        y = F.silu(_norm(_conv(y, s[f"{key}.conv_dw.weight"], stride, y.shape[1]), s, f"{key}.{dw}", 1e-3))
        se = F.silu(F.conv2d(y.mean((2, 3), keepdim=True), s[f"{key}.se.conv_reduce.weight"],
                             s[f"{key}.se.conv_reduce.bias"]))  # fmt: skip
        y = y * torch.sigmoid(
            F.conv2d(se, s[f"{key}.se.conv_expand.weight"], s[f"{key}.se.conv_expand.bias"])
        )
        last = ("conv_pw", "bn2") if separable else ("conv_pwl", "bn3")
        y = _norm(_conv(y, s[f"{key}.{last[0]}.weight"]), s, f"{key}.{last[1]}", 1e-3)
        h = y + h if stride == 1 and cin == cout else y
        if key.endswith(("blocks.0.2", "blocks.1.4", "blocks.2.4", "blocks.4.6")):
            taps.append(h)
    return [*taps, _conv(h, s[f"{ENC}.conv_head.weight"])]


def _unit(raw: torch.Tensor) -> torch.Tensor:
    length = raw[:, :3].pow(2).sum(1, keepdim=True).sqrt() + 1e-10
    return torch.cat([raw[:, :3] / length, F.elu(raw[:, 3:]) + 1.01], dim=1)


def _mlp(x: torch.Tensor, s: State, name: str) -> torch.Tensor:
    for j in range(4):
        x = F.conv1d(x, s[f"decoder.{name}.{2 * j}.weight"], s[f"decoder.{name}.{2 * j}.bias"])
        x = F.relu(x) if j < 3 else x
    return x


def reference_normals(x: torch.Tensor, s: State) -> torch.Tensor:
    """NNET in test mode, written out: ``[1, 3, H, W]`` normalised → ``[1, 4, H, W]``."""
    *skips, deep = _encoder(x, s)
    d = F.conv2d(deep, s["decoder.conv2.weight"], s["decoder.conv2.bias"])
    outs = []
    for i, skip in enumerate(reversed(skips), start=1):
        d = torch.cat([F.interpolate(d, size=skip.shape[2:], mode="bilinear", align_corners=True), skip], 1)
        for j in (0, 3):
            d = F.conv2d(d, s[f"decoder.up{i}._net.{j}.weight"], s[f"decoder.up{i}._net.{j}.bias"], padding=1)
            d = F.leaky_relu(_norm(d, s, f"decoder.up{i}._net.{j + 1}", 1e-5), 0.01)
        outs.append(d)
    out = _unit(
        F.conv2d(outs[1], s["decoder.out_conv_res8.weight"], s["decoder.out_conv_res8.bias"], padding=1)
    )
    for (name, _), features in zip(MLPS, outs[1:], strict=True):
        both = torch.cat([F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=True)
                          for t in (features, out)], 1)  # fmt: skip
        out = _unit(_mlp(both.flatten(2), s, name)).reshape(1, 4, *both.shape[2:])
    return out


def _input(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).float().div(255.0).permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    return (x - mean) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def reference_map(image: np.ndarray, resolution: int, s: State) -> np.ndarray:
    """The extension's normal_bae: resize with pad to 64, the map, the padding cut off."""
    k = resolution / min(image.shape[:2])
    height, width = round(image.shape[0] * k), round(image.shape[1] * k)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -height % 64], [0, -width % 64], [0, 0]], mode="edge")
    with torch.no_grad():
        n = reference_normals(_input(padded), s)[0, :3].permute(1, 2, 0).numpy()
    return (((n + 1) * 0.5).clip(0, 1) * 255.0).clip(0, 255).astype(np.uint8)[:height, :width]


def _picture(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = np.stack([x * 3, y * 2, 255 - x - y], axis=2).clip(0, 255).astype(np.uint8)
    pixels[size[0] // 4 : size[0] // 2, size[1] // 3 :] = rng.integers(0, 255, 3)
    return (pixels // 2 + rng.integers(0, 60, pixels.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def state() -> State:
    return random_state()


@pytest.fixture(scope="module")
def weights(state: State) -> State:
    """The state as the network holds it (float32)."""
    return {k: v.float() for k, v in state.items()}


@pytest.fixture(scope="module")
def path(state: State, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/normal_bae/scannet.pt`` as released: ``{"model": {"module.<key>": tensor}}``."""
    folder = tmp_path_factory.mktemp("annotators") / "ControlNetPreprocessor" / "normal_bae"
    folder.mkdir(parents=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, folder / "scannet.pt")
    return folder / "scannet.pt"


def test_network_equals_an_independent_forward(weights: State, path: Path, one_thread: None) -> None:
    image = _picture(1, (64, 96))
    model = normal_bae.network(path)
    assert sum(t.numel() for t in model.state_dict().values()) > 72_000_000  # the full-size layout
    ours = normal_bae.normals(image, model)
    with torch.no_grad():
        reference = reference_normals(_input(image), weights)[0]
    assert ours.shape == (3, 64, 96)
    torch.testing.assert_close(ours, reference[:3], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=0), torch.ones(64, 96))
    assert ours.std(dim=(1, 2)).min() > 0.05  # the random network gives a varied map, not one colour


def test_preprocessor_end_to_end(weights: State, path: Path, one_thread: None) -> None:
    image = _picture(2, (50, 70))
    for resolution, shape in ((64, (64, 90)), (80, (80, 112))):
        out = normal_bae.ENTRIES[0].run(image, Settings(resolution, 0.0, 0.0, None, weights=(path,)))
        assert out.shape == (*shape, 3)
        assert out.dtype == np.uint8
        expected = reference_map(image, resolution, weights)
        assert np.abs(out.astype(int) - expected).max() <= 1
        assert (out == expected).mean() > 0.999
        assert len(np.unique(out.reshape(-1, 3), axis=0)) > 500


def test_registry_entry() -> None:
    (entry,) = normal_bae.ENTRIES
    assert (entry.name, entry.label, entry.priority, entry.tags) == (
        "normal_bae",
        "normal_bae",
        100,
        ("NormalMap",),
    )
    assert entry.files == ("normal_bae/scannet.pt",)
    assert entry.module_detail() == {
        "model_free": False,
        "sliders": [{"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8}],
    }


def test_a_file_with_other_tensors_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "scannet.pt"
    torch.save({"model": {"module.decoder.conv3.weight": torch.zeros(4, 128, 3, 3)}}, path)
    with pytest.raises(ModelFileError) as refused:
        normal_bae.network(path)
    assert str(path) in str(refused.value)
    assert "not the Bae et al. surface-normal network" in str(refused.value)
