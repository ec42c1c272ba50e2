"""The MiDaS annotators (depth_midas, normal_midas) from a dpt_hybrid-midas-501f0c75.pt the user placed: the
released key layout mapped exactly onto the network, its prediction against an independent functional
forward of DPT-Hybrid written here from the extension's description, the depth and normal maps against
numpy versions of the extension's formulas, and the file looked for, listed only when present, refused by
name when missing or wrong."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import DPTForDepthEstimation

from latentstudio.control import annotators, midas, preprocessors
from latentstudio.control import preprocess_ops as ops
from latentstudio.core import FieldError

STAGES = ((3, 256, 1), (4, 512, 2), (9, 1024, 2))  # ResNetV2 bottlenecks, channels, first stride
WIDTH = 768


def released_shapes() -> dict[str, tuple[int, ...]]:
    """The extension's ``DPTDepthModel(backbone="vitb_rn50_384")`` state: keys and shapes."""
    vit, res = "pretrained.model.", "pretrained.model.patch_embed.backbone."
    shapes: dict[str, tuple[int, ...]] = {
        vit + "cls_token": (1, 1, WIDTH),
        vit + "pos_embed": (1, 577, WIDTH),
    }

    def conv_norm(prefix: str, conv: str, norm: str, shape: tuple[int, ...]) -> None:
        shapes[f"{prefix}{conv}.weight"] = shape
        shapes[f"{prefix}{norm}.weight"] = shapes[f"{prefix}{norm}.bias"] = shape[:1]

    conv_norm(res, "stem.conv", "stem.norm", (64, 3, 7, 7))
    channels = 64
    for s, (depth, out, _) in enumerate(STAGES):
        for b in range(depth):
            p = f"{res}stages.{s}.blocks.{b}."
            if b == 0:
                conv_norm(p, "downsample.conv", "downsample.norm", (out, channels, 1, 1))
            conv_norm(p, "conv1", "norm1", (out // 4, out if b else channels, 1, 1))
            conv_norm(p, "conv2", "norm2", (out // 4, out // 4, 3, 3))
            conv_norm(p, "conv3", "norm3", (out, out // 4, 1, 1))
        channels = out
    linears = {"patch_embed.proj": (WIDTH, 1024, 1, 1), "norm": (WIDTH,), "head": (1000, WIDTH)}
    for i in range(12):
        b = f"blocks.{i}."
        linears |= {b + "norm1": (WIDTH,), b + "norm2": (WIDTH,), b + "attn.qkv": (3 * WIDTH, WIDTH),
                    b + "attn.proj": (WIDTH, WIDTH), b + "mlp.fc1": (4 * WIDTH, WIDTH),
                    b + "mlp.fc2": (WIDTH, 4 * WIDTH)}  # fmt: skip
    layers = {vit + k: v for k, v in linears.items()}
    for n in (3, 4):
        layers[f"pretrained.act_postprocess{n}.0.project.0"] = (WIDTH, 2 * WIDTH)
        layers[f"pretrained.act_postprocess{n}.3"] = (WIDTH, WIDTH, 1, 1)
    layers["pretrained.act_postprocess4.4"] = (WIDTH, WIDTH, 3, 3)
    for n in range(1, 5):
        p = f"scratch.refinenet{n}."
        layers[p + "out_conv"] = (256, 256, 1, 1)
        layers |= {f"{p}resConfUnit{u}.conv{c}": (256, 256, 3, 3) for u in (1, 2) for c in (1, 2)}
    layers |= {"scratch.output_conv.0": (128, 256, 3, 3), "scratch.output_conv.2": (32, 128, 3, 3),
               "scratch.output_conv.4": (1, 32, 1, 1)}  # fmt: skip
    for name, shape in layers.items():
        shapes[name + ".weight"], shapes[name + ".bias"] = shape, shape[:1]
    for n, cin in enumerate((256, 512, WIDTH, WIDTH), start=1):
        shapes[f"scratch.layer{n}_rn.weight"] = (256, cin, 3, 3)
    return shapes


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp16 weights in the released layout, scaled so that the depth varies: slices of one random
    pool, which is much quicker than drawing 120M numbers."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(6_000_000, generator=g)
    state = {}
    for key, shape in released_shapes().items():
        n = math.prod(shape)
        start = int(torch.randint(0, pool.numel() - n, (1,), generator=g))
        t = pool[start : start + n].reshape(shape)
        if len(shape) == 1 and "norm" in key and key.endswith("weight"):
            t = 1 + 0.125 * t
        elif len(shape) == 1 or key.endswith(("cls_token", "pos_embed")):
            t = 0.0625 * t
        else:
            t = t / math.prod(shape[1:]) ** 0.5
        state[key] = t.half()
    state["scratch.output_conv.4.bias"] = torch.tensor(
        [3.0], dtype=torch.float16
    )  # most of the depth above the final ReLU
    return state


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    """An A1111-style ``models/`` with the MiDaS file in our folder."""
    root = tmp_path_factory.mktemp("midas") / "models"
    folder = root / annotators.OWN_FOLDER / "midas"
    folder.mkdir(parents=True)
    torch.save(state, folder / Path(midas.FILE).name)
    return root


# --- an independent DPT-Hybrid forward, from the released tensors ----------------------------------------


def _same_pad(x: torch.Tensor, k: int, stride: int, value: float = 0.0) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (max((math.ceil(n / stride) - 1) * stride + k - n, 0) for n in (h, w))
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


def _std_conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
    w = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(
        w.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-8
    )
    return F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride)


def _resnet(x: torch.Tensor, s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    p = "pretrained.model.patch_embed.backbone."

    def gn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.group_norm(h, 32, s[p + name + ".weight"], s[p + name + ".bias"], 1e-5)

    x = F.relu(gn(_std_conv(x, s[p + "stem.conv.weight"], 2), "stem.norm"))
    x = F.max_pool2d(_same_pad(x, 3, 2, float("-inf")), 3, 2)
    outs = []
    for i, (depth, _, first_stride) in enumerate(STAGES):
        for b in range(depth):
            q, stride = f"stages.{i}.blocks.{b}.", first_stride if b == 0 else 1
            skip = (
                gn(_std_conv(x, s[f"{p}{q}downsample.conv.weight"], stride), q + "downsample.norm")
                if b == 0
                else x
            )
            h = F.relu(gn(_std_conv(x, s[f"{p}{q}conv1.weight"]), q + "norm1"))
            h = F.relu(gn(_std_conv(h, s[f"{p}{q}conv2.weight"], stride), q + "norm2"))
            x = F.relu(gn(_std_conv(h, s[f"{p}{q}conv3.weight"]), q + "norm3") + skip)
        outs.append(x)
    return outs


def _vit(feature: torch.Tensor, s: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    v = "pretrained.model."
    grid = feature.shape[-2:]
    tokens = F.conv2d(feature, s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"])
    pos = s[v + "pos_embed"]
    table = pos[:, 1:].reshape(1, 24, 24, WIDTH).permute(0, 3, 1, 2)
    resized = F.interpolate(table, size=tuple(grid), mode="bilinear", align_corners=False)
    x = torch.cat([s[v + "cls_token"], tokens.flatten(2).transpose(1, 2)], 1)
    x = x + torch.cat([pos[:, :1], resized.flatten(2).transpose(1, 2)], 1)
    taps = []
    for i in range(12):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (WIDTH,), s[b + "norm1.weight"], s[b + "norm1.bias"], 1e-6)
        q, k, val = F.linear(h, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"]).reshape(
            1, -1, 3, 12, 64).permute(2, 0, 3, 1, 4)  # fmt: skip
        attended = (
            (torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ val).transpose(1, 2).reshape(1, -1, WIDTH)
        )
        x = x + F.linear(attended, s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        h = F.layer_norm(x, (WIDTH,), s[b + "norm2.weight"], s[b + "norm2.bias"], 1e-6)
        h = F.gelu(F.linear(h, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"]))
        x = x + F.linear(h, s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
        if i in (8, 11):
            p = f"pretrained.act_postprocess{3 if i == 8 else 4}."
            readout = x[:, :1].expand(-1, x.shape[1] - 1, -1)
            r = F.gelu(F.linear(torch.cat([x[:, 1:], readout], -1), s[p + "0.project.0.weight"],
                                s[p + "0.project.0.bias"]))  # fmt: skip
            r = F.conv2d(r.transpose(1, 2).reshape(1, WIDTH, *grid), s[p + "3.weight"], s[p + "3.bias"])
            taps.append(r if i == 8 else F.conv2d(r, s[p + "4.weight"], s[p + "4.bias"], stride=2, padding=1))
    return taps


def _fuse(
    x: torch.Tensor, s: dict[str, torch.Tensor], n: int, skip: torch.Tensor | None = None
) -> torch.Tensor:
    p = f"scratch.refinenet{n}."

    def unit(h: torch.Tensor, u: int) -> torch.Tensor:
        c = f"{p}resConfUnit{u}."
        out = F.conv2d(F.relu(h), s[c + "conv1.weight"], s[c + "conv1.bias"], padding=1)
        return h + F.conv2d(F.relu(out), s[c + "conv2.weight"], s[c + "conv2.bias"], padding=1)

    x = unit(x if skip is None else x + unit(skip, 1), 2)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.conv2d(x, s[p + "out_conv.weight"], s[p + "out_conv.bias"])


def reference_depth(image: np.ndarray, s: dict[str, torch.Tensor]) -> np.ndarray:
    """``[H, W, 3]`` uint8 → ``[H, W]`` float32 depth, written out with torch.nn.functional."""
    s = {k: t.float() for k, t in s.items()}
    with torch.no_grad():
        x = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        quarter, eighth, sixteenth = _resnet(x, s)
        features = [quarter, eighth, *_vit(sixteenth, s)]
        layers = [F.conv2d(f, s[f"scratch.layer{n}_rn.weight"], padding=1) for n, f in enumerate(features, 1)]
        path = _fuse(layers[3], s, 4)
        for n in (3, 2, 1):
            path = _fuse(path, s, n, layers[n - 1])
        o = "scratch.output_conv."
        h = F.conv2d(path, s[o + "0.weight"], s[o + "0.bias"], padding=1)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
        h = F.relu(F.conv2d(h, s[o + "2.weight"], s[o + "2.bias"], padding=1))
        depth: np.ndarray = F.relu(F.conv2d(h, s[o + "4.weight"], s[o + "4.bias"]))[0, 0].numpy()
    return depth


# --- the maps, as numpy formulas ----------------------------------------------------------------------


def _sobel(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3×3 Sobel (x, y) with cv2's default border (reflect without repeating the edge)."""
    p = np.pad(d.astype(np.float64), 1, mode="reflect")
    h, w = d.shape
    at = {(i, j): p[1 + i : 1 + i + h, 1 + j : 1 + j + w] for i in (-1, 0, 1) for j in (-1, 0, 1)}
    gx = sum(at[i, 1] * k - at[i, -1] * k for i, k in ((-1, 1), (0, 2), (1, 1)))
    gy = sum(at[1, j] * k - at[-1, j] * k for j, k in ((-1, 1), (0, 2), (1, 1)))
    return np.asarray(gx), np.asarray(gy)


def numpy_maps(d: np.ndarray, background: float) -> tuple[np.ndarray, np.ndarray]:
    """The extension's depth image and normal image (z, y, x) of a float depth ``[H, W]``."""
    rel = (d - d.min()) / (d.max() - d.min())
    gx, gy = _sobel(d)
    gx[rel < background] = 0
    gy[rel < background] = 0
    n = np.stack([gx, gy, np.full_like(gx, 2 * np.pi)], axis=2)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    return (rel * 255).astype(np.uint8), (n * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]


def _picture(seed: int = 0, size: tuple[int, int] = (80, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = np.stack([x * 255 // size[1], y * 255 // size[0], np.full_like(x, 90)], axis=2).astype(np.uint8)
    pixels[20:60, 15:55] = rng.integers(100, 255, 3)
    return pixels


# --- tests ----------------------------------------------------------------------------------------------


def test_the_released_layout_maps_onto_every_weight_exactly() -> None:
    released = {k: torch.empty(shape, device="meta") for k, shape in released_shapes().items()}
    tensors, unknown = midas.renamed(released)
    with torch.device("meta"):
        model = DPTForDepthEstimation(midas.config())
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    assert unknown == []
    assert {k: tuple(t.shape) for k, t in tensors.items()} == expected
    assert midas.renamed({**released, "pretrained.model.extra": torch.zeros(1)})[1] == [
        "pretrained.model.extra"
    ]


def test_the_loaded_weights_are_the_files(models: Path, state: dict[str, torch.Tensor]) -> None:
    model = midas.network(models / annotators.OWN_FOLDER / midas.FILE)
    params = list(model.state_dict().values())
    used = [t for k, t in state.items() if k not in midas.CLASSIFIER]
    assert sum(p.numel() for p in params) == sum(t.numel() for t in used)
    squares = [sum(float(t.float().square().sum()) for t in tensors) for tensors in (params, used)]
    assert squares[0] == pytest.approx(squares[1], rel=1e-6)
    qkv = state["pretrained.model.blocks.5.attn.qkv.weight"]
    assert torch.equal(
        model.dpt.encoder.layer[5].attention.attention.key.weight, qkv[WIDTH : 2 * WIDTH].float()
    )


@pytest.fixture(scope="module")
def padded(state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The picture of the detect tests at resolution 64 (64 × 77, padded to 64 × 128: not square) and the
    independent forward's depth of it."""
    image = ops.resize_with_pad(_picture(1), 64)[0]
    return image, reference_depth(image, state)


def test_the_prediction_equals_an_independent_forward(
    models: Path, padded: tuple[np.ndarray, np.ndarray]
) -> None:
    image, reference = padded
    ours = midas.depth(image, models / annotators.OWN_FOLDER / midas.FILE)
    assert ours.shape == reference.shape == (64, 128)
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()
    assert reference.std() > 0.1 * reference.max()  # the depth varies: the comparison means something


def test_the_maps_follow_the_extensions_formulas() -> None:
    y, x = np.mgrid[0:40, 0:56].astype(np.float32)
    d = (0.002 * (x - 20) ** 2 + 0.05 * y + 0.3 * np.sin(x / 5)).astype(np.float32)
    for background in (0.0, 0.4, 0.9):
        depth_ref, normal_ref = numpy_maps(d, background)
        assert np.abs(midas.depth_map(d).astype(int) - depth_ref).max() <= 1
        normal = midas.normal_map(d, background)
        assert normal.shape == (40, 56, 3)
        assert np.abs(normal.astype(int) - normal_ref).max() <= 1
    flat = midas.normal_map(d, 0.9)[midas.normalised(d) < 0.9]
    assert (flat == [255, 127, 127]).all()  # background: the normal is (0, 0, 1), channels reversed
    assert (midas.depth_map(np.full((4, 4), 2.5, np.float32)) == 0).all()  # flat depth: no 0/0


def test_detect_at_the_preprocessor_resolution(models: Path, padded: tuple[np.ndarray, np.ndarray]) -> None:
    roots = annotators.roots(models)
    image = _picture(1)
    depth_ref, normal_ref = (m[:64, :77] for m in numpy_maps(padded[1], 0.4))
    out = preprocessors.detect("depth_midas", image, 64, roots=roots)
    assert out.shape == (64, 77, 3)  # short side 64, the long one scaled, the padding cut off
    assert out.dtype == np.uint8
    assert np.abs(out[:, :, 0].astype(int) - depth_ref).max() <= 1
    assert (out[:, :, 0] == out[:, :, 2]).all()
    normal = preprocessors.detect("normal_midas", image, 64, roots=roots)  # threshold_a: the default 0.4
    assert normal.shape == (64, 77, 3)
    assert normal.dtype == np.uint8
    assert np.abs(normal.astype(int) - normal_ref).mean() < 0.05
    assert (normal != [255, 127, 127]).any(axis=2).mean() > 0.1  # not all background
    everywhere = preprocessors.detect("normal_map", image, 64, threshold_a=1.0, roots=roots)
    assert (everywhere == [255, 127, 127]).all(axis=2).mean() > 0.99  # all background but the farthest


def test_listed_only_where_the_file_is(models: Path, tmp_path: Path) -> None:
    roots = annotators.roots(models)
    assert {"depth", "normal_map"} <= set(preprocessors.module_list(roots=roots))
    detail = preprocessors.module_detail(True, roots)
    assert [s["name"] for s in detail["depth_midas"]["sliders"]] == ["Resolution"]  # type: ignore[index]
    assert detail["normal_midas"]["sliders"][1] == {  # type: ignore[index]
        "name": "Normal Background Threshold", "value": 0.4, "min": 0.0, "max": 1.0, "step": 0.01,
    }  # fmt: skip
    types = preprocessors.control_types([], roots)
    assert types["Depth"]["module_list"] == ["none", "depth_midas"]
    assert types["NormalMap"]["module_list"] == ["none", "normal_midas"]
    bare = annotators.roots(tmp_path / "models")
    assert not {"depth", "normal_map"} & set(preprocessors.module_list(roots=bare))
    assert preprocessors.unavailable(bare)["normal_midas"] == [f"{annotators.DOWNLOADS}/{midas.FILE}"]
    for name in ("depth", "depth_midas", "normal_map", "normal_midas"):
        assert preprocessors.find(name).files == (midas.FILE,)


@pytest.mark.parametrize("module", ["depth_midas", "normal_map"])
def test_a_missing_file_is_refused_naming_it(tmp_path: Path, module: str) -> None:
    with pytest.raises(FieldError) as refused:
        preprocessors.detect(module, _picture(), 64, roots=annotators.roots(tmp_path / "models"))
    assert refused.value.field == "module"
    assert "dpt_hybrid-midas-501f0c75.pt" in refused.value.message
    assert f"{annotators.DOWNLOADS}/midas/" in refused.value.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"norm": torch.zeros(1, 3, 1, 1)}, "not the MiDaS DPT-Hybrid network"),
        ({k: torch.zeros(1) for k in released_shapes()}, "not the MiDaS DPT-Hybrid network"),
        (b"PK\x03\x04 truncated", "corrupt"),
    ],
)
def test_a_wrong_file_is_refused_naming_it(tmp_path: Path, content: object, words: str) -> None:
    path = tmp_path / "models" / annotators.OWN_FOLDER / midas.FILE
    path.parent.mkdir(parents=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("depth_midas", _picture(), 64, roots=annotators.roots(tmp_path / "models"))
    assert refused.value.field == "module"
    assert str(path) in refused.value.message
    assert words in refused.value.message
    assert "\n" not in refused.value.message
