"""The UniFormer segmentation annotator (segmentation / seg_ufade20k) from an upernet_global_small.pth the
user placed: the network against an independent forward written here from the extension's description, the
test pipeline (the rescale, the reversed channels, the two bilinear resizes, the arg-max) and the ADE20K
colours at the preprocessor resolution, and the file: the released layout (auxiliary head included) and the
refusals.

The released head is 512 wide (~30M of the file's 51.5M weights) and the pipeline brings the short side to
512, ~20 s a picture here on CPU; so the random files have a 32-wide head (the same keys, every shape but the
head's width the released one) and the pipeline's scale is lowered to a 64 short side. The full-width layout
is checked key by key without running it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import annotators, preprocessors, uniformer
from latentstudio.control.preprocessor_types import RESOLUTION, Settings
from latentstudio.core import FieldError
from latentstudio.models.files import ModelFileError
from tests.test_control_hed import _padded, _picture

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = (64, 128, 320, 512)
DEPTHS = (3, 4, 8, 3)
HEAD = 32  # the test files' head width (the released one: 512)
SCALE = (256, 64)  # the test pipeline's scale here (the extension's: (2048, 512))
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def _layout(head: int = HEAD) -> dict[str, tuple[int, ...]]:
    """Every tensor of the released file (``head``: 512 there) with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def norm(name: str, c: int, batch: bool = False) -> None:
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,)})
        if batch:
            shapes.update({f"{name}.running_mean": (c,), f"{name}.running_var": (c,)})
            shapes[f"{name}.num_batches_tracked"] = ()

    def linear(name: str, cout: int, cin: int) -> None:
        shapes.update({f"{name}.weight": (cout, cin), f"{name}.bias": (cout,)})

    def conv_module(name: str, cout: int, cin: int, k: int) -> None:
        conv(f"{name}.conv", cout, cin, k, bias=False)
        norm(f"{name}.bn", cout, batch=True)

    cin = 3
    for i, (c, depth) in enumerate(zip(WIDTHS, DEPTHS, strict=True), start=1):
        conv(f"backbone.patch_embed{i}.proj", c, cin, 4 if i == 1 else 2)
        norm(f"backbone.patch_embed{i}.norm", c)
        for j in range(depth):
            b = f"backbone.blocks{i}.{j}"
            conv(f"{b}.pos_embed", c, 1, 3)
            norm(f"{b}.norm1", c, batch=i <= 2)
            norm(f"{b}.norm2", c, batch=i <= 2)
            if i <= 2:
                conv(f"{b}.conv1", c, c, 1)
                conv(f"{b}.attn", c, 1, 5)
                conv(f"{b}.conv2", c, c, 1)
                conv(f"{b}.mlp.fc1", 4 * c, c, 1)
                conv(f"{b}.mlp.fc2", c, 4 * c, 1)
            else:
                linear(f"{b}.attn.qkv", 3 * c, c)
                linear(f"{b}.attn.proj", c, c)
                linear(f"{b}.mlp.fc1", 4 * c, c)
                linear(f"{b}.mlp.fc2", c, 4 * c)
        norm(f"backbone.norm{i}", c)
        cin = c
    for n in range(4):
        conv_module(f"decode_head.psp_modules.{n}.1", head, 512, 1)
    conv_module("decode_head.bottleneck", head, 512 + 4 * head, 3)
    for n, c in enumerate(WIDTHS[:3]):
        conv_module(f"decode_head.lateral_convs.{n}", head, c, 1)
        conv_module(f"decode_head.fpn_convs.{n}", head, head, 3)
    conv_module("decode_head.fpn_bottleneck", head, 4 * head, 3)
    conv("decode_head.conv_seg", 150, head, 1)
    conv_module("auxiliary_head.convs.0", 256, 320, 3)
    conv("auxiliary_head.conv_seg", 150, 256, 1)
    return shapes


def random_uniformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state in the released layout (with the test head): weights ~ N(0, 1/fan-in), norm scales
    near 1, batch-norm statistics of a trained network."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in _layout().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) > 1:
            state[key] = torch.randn(shape, generator=g) * float(np.prod(shape[1:])) ** -0.5
        elif key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def _forward(x: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """UniFormer-S and the UPerNet head with functional ops: ``[1, 3, H, W]`` → ``[1, 150, H/4, W/4]``."""

    def ln(t: torch.Tensor, name: str, eps: float = 1e-6) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], eps)

    def bn(t: torch.Tensor, n: str) -> torch.Tensor:
        stats = (s[f"{n}.running_mean"], s[f"{n}.running_var"], s[f"{n}.weight"], s[f"{n}.bias"])
        return F.batch_norm(t, *stats, False, 0.0, 1e-5)

    def conv(t: torch.Tensor, name: str, stride: int = 1, groups: int = 1) -> torch.Tensor:
        w = s[f"{name}.weight"]
        return F.conv2d(
            t, w, s.get(f"{name}.bias"), stride, w.shape[-1] // 2 if stride == 1 else 0, 1, groups
        )

    def lin(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(t, s[f"{name}.weight"], s[f"{name}.bias"])

    def cbr(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.relu(bn(conv(t, f"{name}.conv"), f"{name}.bn"))

    def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=like.shape[2:], mode="bilinear", align_corners=False)

    feats = []
    for i, (c, depth) in enumerate(zip(WIDTHS, DEPTHS, strict=True), start=1):
        x = conv(x, f"backbone.patch_embed{i}.proj", stride=4 if i == 1 else 2)
        x = ln(x.permute(0, 2, 3, 1), f"backbone.patch_embed{i}.norm", 1e-5).permute(0, 3, 1, 2)
        for j in range(depth):
            b = f"backbone.blocks{i}.{j}"
            x = x + conv(x, f"{b}.pos_embed", groups=c)
            if i <= 2:
                h = conv(conv(conv(bn(x, f"{b}.norm1"), f"{b}.conv1"), f"{b}.attn", groups=c), f"{b}.conv2")
                x = x + h
                x = x + conv(F.gelu(conv(bn(x, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
                continue
            t = x.flatten(2).transpose(1, 2)
            q, k, v = lin(ln(t, f"{b}.norm1"), f"{b}.attn.qkv").unflatten(-1, (3, c // 64, 64)).unbind(2)
            heads = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            t = t + lin(heads.transpose(1, 2).flatten(2), f"{b}.attn.proj")
            t = t + lin(F.gelu(lin(ln(t, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
            x = t.transpose(1, 2).unflatten(2, x.shape[2:])
        feats.append(ln(x.permute(0, 2, 3, 1), f"backbone.norm{i}").permute(0, 3, 1, 2))
    top = feats[3]
    pooled = [
        up(cbr(F.adaptive_avg_pool2d(top, k), f"decode_head.psp_modules.{n}.1"), top)
        for n, k in enumerate((1, 2, 3, 6))
    ]
    levels = [cbr(feats[n], f"decode_head.lateral_convs.{n}") for n in range(3)]
    levels.append(cbr(torch.cat([top, *pooled], 1), "decode_head.bottleneck"))
    for n in (3, 2, 1):
        levels[n - 1] = levels[n - 1] + up(levels[n], levels[n - 1])
    outs = [cbr(levels[n], f"decode_head.fpn_convs.{n}") for n in range(3)] + [levels[3]]
    fused = cbr(torch.cat([outs[0], *(up(o, outs[0]) for o in outs[1:])], 1), "decode_head.fpn_bottleneck")
    return conv(fused, "decode_head.conv_seg")


def _classes(padded: np.ndarray, s: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The test pipeline at :data:`SCALE`: the classes ``[H, W]`` and the top-two logit margin there."""
    height, width = padded.shape[:2]
    factor = min(SCALE[0] / max(height, width), SCALE[1] / min(height, width))
    size = (int(width * factor + 0.5), int(height * factor + 0.5))
    x = (cv2.resize(padded, size, interpolation=cv2.INTER_LINEAR)[:, :, ::-1] - MEAN) / STD
    with torch.no_grad():
        logits = _forward(torch.from_numpy(x.astype(np.float32).transpose(2, 0, 1).copy())[None], s)
        logits = F.interpolate(logits, size=size[::-1], mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0]
    top2 = logits.topk(2, dim=0).values
    return logits.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


@pytest.fixture(autouse=True)
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module builds the test files' head and runs the pipeline at the test scale."""
    monkeypatch.setattr(uniformer, "CHANNELS", HEAD)
    monkeypatch.setattr(uniformer, "SCALE", SCALE)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``<root>/ControlNetPreprocessor/uniformer/upernet_global_small.pth`` as mmcv saves it (``meta`` and
    ``state_dict``) with a random state, and that state."""
    path = tmp_path_factory.mktemp("uniformer") / annotators.OWN_FOLDER / uniformer.FILE
    path.parent.mkdir(parents=True)
    state = random_uniformer_state(0)
    meta = {"CLASSES": tuple(f"class{i}" for i in range(150)), "PALETTE": [[0, 0, 0]] * 150}
    torch.save({"meta": meta, "state_dict": state}, path)
    return path, state


def test_the_released_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uniformer, "CHANNELS", 512)
    with torch.device("meta"):
        released = uniformer.SegmentationNetwork()
    found = {k: tuple(t.shape) for k, t in released.state_dict().items()}
    assert found == _layout(512)
    weights = sum(np.prod(s) for k, s in found.items() if "running" not in k and "batches" not in k)
    assert weights == 51_521_132  # the extension's mmseg model, as built from its config


def test_the_rescale_and_the_palette(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uniformer, "SCALE", (2048, 512))
    assert uniformer.rescaled_size(512, 768) == (512, 768)
    assert uniformer.rescaled_size(128, 192) == (512, 768)  # enlarged to a 512 short side
    assert uniformer.rescaled_size(1024, 576) == (910, 512)  # 1024 × 0.888… = 910.2
    assert uniformer.rescaled_size(64, 640) == (205, 2048)  # the long side holds it to 3.2×
    palette = uniformer.ADE20K_PALETTE
    assert palette.shape == (150, 3)
    assert palette.dtype == np.uint8
    assert palette[[0, 1, 2, 12, 149]].tolist() == [
        [120, 120, 120], [180, 120, 120], [6, 230, 230], [150, 5, 61], [92, 0, 255]
    ]  # fmt: skip
    assert np.array_equal(uniformer.colored(np.array([[0, 149]])), palette[None, [0, 149]])


def test_the_network_equals_an_independent_forward(weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = weights
    model = uniformer.network(path)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, reference = model(x), _forward(x, state)
    assert ours.shape == (1, 150, 16, 24)
    assert torch.allclose(ours, reference, atol=1e-4)
    assert float(ours.std()) > 0.3


def test_segmentation_at_the_preprocessor_resolution(weights: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = weights
    image = _picture(5, (90, 130))  # at 96: 96×139, padded 128×192, rescaled 64×96 for the network
    (entry,) = uniformer.ENTRIES
    out = entry.run(image, Settings(96, 0.0, 0.0, None, weights=(path,)))
    padded, height, width = _padded(image, 96)
    classes, margin = _classes(padded, state)
    expected = uniformer.ADE20K_PALETTE[classes[:height, :width]]
    assert out.shape == expected.shape == (96, 139, 3)
    clear = margin[:height, :width] > 1e-4  # where rounding cannot swap the two best classes
    assert clear.mean() > 0.99
    assert np.array_equal(out[clear], expected[clear])
    assert len(np.unique(out.reshape(-1, 3), axis=0)) >= 3
    assert np.array_equal(uniformer.seg_ufade20k(image, 96, path), out)
    colours = {tuple(c) for c in uniformer.ADE20K_PALETTE.tolist()}
    assert {tuple(c) for c in np.unique(out.reshape(-1, 3), axis=0).tolist()} <= colours


def test_the_entry_and_its_file(weights: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    path, state = weights
    (entry,) = uniformer.ENTRIES
    assert (entry.name, entry.label, entry.priority, entry.tags) == (
        "segmentation", "seg_ufade20k", 0, ("Segmentation",)
    )  # fmt: skip
    assert entry.sliders == (RESOLUTION,)
    assert entry.uses_resolution
    assert entry.files == ("uniformer/upernet_global_small.pth",)
    root = path.parents[2]
    assert annotators.locate(entry.files, annotators.roots(root)) == (path,)
    assert "upernet_global_small.pth" in annotators.missing(entry.label, entry.files)
    bare = tmp_path / "bare" / "models"
    for name in ("segmentation", "seg_ufade20k"):
        with pytest.raises(FieldError) as refused:
            preprocessors.detect(name, _picture(), 64, roots=annotators.roots(bare))
        assert refused.value.field == "module"
        assert "upernet_global_small.pth" in refused.value.message
    trimmed = {k: t for k, t in state.items() if not k.startswith("auxiliary_head.")}
    wrong = tmp_path / "wrong" / "upernet_global_small.pth"  # the exact check wants the auxiliary head too
    wrong.parent.mkdir()
    torch.save({"state_dict": trimmed}, wrong)
    with pytest.raises(ModelFileError, match="UniFormer segmentation"):
        uniformer.network(wrong)
