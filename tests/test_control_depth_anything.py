"""The Depth Anything annotators (depth_anything, depth_anything_v2) from the files the user placed: the
released key layout (read generically: ViT-L/14 by shape, and reduced random states in the same layout)
mapped exactly onto the network, its prediction against an independent functional forward of DINOv2 + DPT
written here from the original model's description, the resize back and the uint8 map against numpy, and the
file looked for, listed only when present, refused by name when missing or wrong."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from safetensors.torch import save_file
from transformers import DepthAnythingForDepthEstimation

from latentstudio.control import annotators, depth_anything, preprocessors
from latentstudio.control import preprocess_ops as ops
from latentstudio.core import FieldError

NECK = (16, 32, 64, 64)  # reduced neck channels (ViT-L: 256, 512, 1024, 1024)
SMALL = {1: (6, 128), 2: (12, 128)}  # version → (blocks, width): 2 heads of 64
FILES = {1: depth_anything.FILE, 2: depth_anything.FILE_V2}
MODULES = {1: "depth_anything", 2: "depth_anything_v2"}


def released_shapes(
    depth: int, width: int, neck: tuple[int, ...], fusion: int, hidden: int
) -> dict[str, tuple]:
    """The original ``DPT_DINOv2`` / ``DepthAnythingV2`` state: keys and shapes (37×37 position grid)."""
    v, s = "pretrained.", "depth_head.scratch."
    shapes: dict[str, tuple[int, ...]] = {
        v + "cls_token": (1, 1, width),
        v + "mask_token": (1, width),
        v + "pos_embed": (1, 1 + 37 * 37, width),
        v + "patch_embed.proj.weight": (width, 3, 14, 14),
        v + "patch_embed.proj.bias": (width,),
        v + "norm.weight": (width,),
        v + "norm.bias": (width,),
    }
    mlp = 4 * width
    layers = {"norm1": (width,), "norm2": (width,), "attn.qkv": (3 * width, width),
              "attn.proj": (width, width), "mlp.fc1": (mlp, width), "mlp.fc2": (width, mlp)}  # fmt: skip
    for i in range(depth):
        for name, shape in layers.items():
            shapes[f"{v}blocks.{i}.{name}.weight"], shapes[f"{v}blocks.{i}.{name}.bias"] = shape, shape[:1]
        shapes[f"{v}blocks.{i}.ls1.gamma"] = shapes[f"{v}blocks.{i}.ls2.gamma"] = (width,)
    convs = {f"depth_head.projects.{i}": (c, width, 1, 1) for i, c in enumerate(neck)}
    convs |= {
        "depth_head.resize_layers.0": (neck[0], neck[0], 4, 4),
        "depth_head.resize_layers.1": (neck[1], neck[1], 2, 2),
        "depth_head.resize_layers.3": (neck[3], neck[3], 3, 3),
        s + "output_conv1": (fusion // 2, fusion, 3, 3),
        s + "output_conv2.0": (hidden, fusion // 2, 3, 3),
        s + "output_conv2.2": (1, hidden, 1, 1),
    }
    for n in range(1, 5):
        shapes[f"{s}layer{n}_rn.weight"] = (fusion, neck[n - 1], 3, 3)
        convs[f"{s}refinenet{n}.out_conv"] = (fusion, fusion, 1, 1)
        for unit in (1, 2):
            for c in (1, 2):
                convs[f"{s}refinenet{n}.resConfUnit{unit}.conv{c}"] = (fusion, fusion, 3, 3)
    for name, shape in convs.items():
        shapes[name + ".weight"], shapes[name + ".bias"] = shape, shape[:1]
    return shapes


def random_state(version: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(version)
    state = {}
    for key, shape in released_shapes(*SMALL[version], NECK, 32, 16).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        if key.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")):
            t = 0.5 + torch.rand(shape, generator=g)
        state[key] = t.contiguous()
    last = "depth_head.scratch.output_conv2.2"  # positive: the ReLU'd output stays alive and varies
    state[last + ".weight"], state[last + ".bias"] = state[last + ".weight"].abs(), torch.tensor([0.1])
    return state


@pytest.fixture(scope="module")
def states() -> dict[int, dict[str, torch.Tensor]]:
    return {version: random_state(version) for version in (1, 2)}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, states: dict[int, dict[str, torch.Tensor]]) -> Path:
    """A models folder holding both files: v1 as the original's ``torch.save``, v2 as safetensors."""
    root = tmp_path_factory.mktemp("depth_anything") / "models"
    for version, name in FILES.items():
        path = root / annotators.OWN_FOLDER / name
        path.parent.mkdir(parents=True)
        if version == 1:
            torch.save(states[1], path)
        else:
            save_file(states[2], str(path))
    return root


def reference_prediction(x: torch.Tensor, s: dict[str, torch.Tensor], taps: list[int]) -> torch.Tensor:
    """DINOv2 + DPT head written out from the original code: ``[1, 3, h, w]`` → ``[h, w]``."""
    width = s["pretrained.cls_token"].shape[-1]
    heads = width // 64
    t = F.conv2d(x, s["pretrained.patch_embed.proj.weight"], s["pretrained.patch_embed.proj.bias"], stride=14)
    gh, gw = t.shape[2:]
    grid = s["pretrained.pos_embed"][:, 1:].reshape(1, 37, 37, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / 37, (gw + 0.1) / 37), mode="bicubic")
    pos = torch.cat([s["pretrained.pos_embed"][:, :1], grid.flatten(2).transpose(1, 2)], 1)
    h = torch.cat([s["pretrained.cls_token"], t.flatten(2).transpose(1, 2)], 1) + pos
    n = h.shape[1]

    def norm(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(y, (width,), s[name + ".weight"], s[name + ".bias"], 1e-6)

    def lin(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(y, s[name + ".weight"], s[name + ".bias"])

    outs = []
    for i in range(max(taps) + 1):
        b = f"pretrained.blocks.{i}."
        q, k, v = lin(norm(h, b + "norm1"), b + "attn.qkv").reshape(1, n, 3, heads, 64).permute(2, 0, 3, 1, 4)
        a = (torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v).transpose(1, 2).reshape(1, n, width)
        h = h + s[b + "ls1.gamma"] * lin(a, b + "attn.proj")
        h = h + s[b + "ls2.gamma"] * lin(F.gelu(lin(norm(h, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
        if i in taps:
            outs.append(norm(h, "pretrained.norm")[:, 1:].transpose(1, 2).reshape(1, width, gh, gw))

    def conv(y: torch.Tensor, name: str, **kw: int) -> torch.Tensor:
        return F.conv2d(y, s[name + ".weight"], s.get(name + ".bias"), **kw)

    feats = []
    for i, o in enumerate(outs):
        f = conv(o, f"depth_head.projects.{i}")
        r = f"depth_head.resize_layers.{i}"
        f = F.conv_transpose2d(f, s[r + ".weight"], s[r + ".bias"], stride=4 // 2**i) if i < 2 else f
        f = conv(f, r, stride=2, padding=1) if i == 3 else f
        feats.append(conv(f, f"depth_head.scratch.layer{i + 1}_rn", padding=1))

    def unit(y: torch.Tensor, p: str) -> torch.Tensor:
        return y + conv(F.relu(conv(F.relu(y), p + ".conv1", padding=1)), p + ".conv2", padding=1)

    path = None
    for n_ref in (4, 3, 2, 1):
        p = f"depth_head.scratch.refinenet{n_ref}"
        y = feats[3] if path is None else path + unit(feats[n_ref - 1], p + ".resConfUnit1")
        y = unit(y, p + ".resConfUnit2")
        size = feats[n_ref - 2].shape[2:] if n_ref > 1 else (y.shape[2] * 2, y.shape[3] * 2)
        path = conv(F.interpolate(y, size=size, mode="bilinear", align_corners=True), p + ".out_conv")
    out = conv(path, "depth_head.scratch.output_conv1", padding=1)
    out = F.interpolate(out, (gh * 14, gw * 14), mode="bilinear", align_corners=True)
    out = F.relu(
        conv(
            F.relu(conv(out, "depth_head.scratch.output_conv2.0", padding=1)),
            "depth_head.scratch.output_conv2.2",
        )
    )
    return out[0, 0]


def bilinear(d: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel bilinear resize (edges clamped), written out in numpy."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    (y0, y1, fy), (x0, x1, fx) = axis(d.shape[0], height), axis(d.shape[1], width)
    rows = d[y0] * (1 - fy)[:, None] + d[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def _picture(seed: int = 0, size: tuple[int, int] = (80, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = np.stack([x * 255 // size[1], y * 255 // size[0], np.full_like(x, 90)], axis=2).astype(np.uint8)
    pixels[20:60, 15:55] = rng.integers(100, 255, 3)
    return pixels


def network_input(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Reversed channels, / 255, cubic resize to ``height`` × ``width``, normalised: ``[1, 3, h, w]``."""
    import cv2

    scaled = cv2.resize(image[:, :, ::-1] / 255.0, (width, height), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(((scaled - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32))
    return x.permute(2, 0, 1)[None].contiguous()


TAPS = {1: [2, 3, 4, 5], 2: [2, 5, 8, 11]}
SMALL_PICTURE = _picture(2, (64, 66))  # → 518 × 532 (a 37 × 38 token grid: the positions are resized)


@pytest.fixture(scope="module")
def references(states: dict[int, dict[str, torch.Tensor]]) -> dict[int, np.ndarray]:
    """Per version, the reference float depth of the 64 × 66 picture, resized back to it."""
    x = network_input(SMALL_PICTURE, 518, 532)
    with torch.no_grad():
        return {v: bilinear(reference_prediction(x, states[v], TAPS[v]).numpy(), 64, 66) for v in (1, 2)}


# --- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_the_released_vitl_layout_maps_onto_every_weight_exactly(version: int) -> None:
    released = {
        k: torch.empty(v, device="meta")
        for k, v in released_shapes(24, 1024, (256, 512, 1024, 1024), 256, 32).items()
    }
    sizes = depth_anything.layout(released, Path("x"))
    assert (sizes.width, sizes.depth, sizes.heads, sizes.mlp, sizes.grid) == (1024, 24, 16, 4096, 37)
    tensors, unknown = depth_anything.renamed(released)
    taps = depth_anything.taps(version, 24)
    assert taps == ((20, 21, 22, 23) if version == 1 else (4, 11, 17, 23))
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(depth_anything.config(sizes, taps))
    assert unknown == []
    assert {k: tuple(t.shape) for k, t in tensors.items()} == {
        k: tuple(t.shape) for k, t in model.state_dict().items()
    }
    assert sum(t.numel() for t in tensors.values()) == sum(t.numel() for t in released.values())
    assert depth_anything.renamed({**released, "pretrained.extra": torch.zeros(1)})[1] == ["pretrained.extra"]


def test_the_loaded_weights_are_the_files(models: Path, states: dict[int, dict[str, torch.Tensor]]) -> None:
    for version in (1, 2):
        model = depth_anything.network(models / annotators.OWN_FOLDER / FILES[version], version)
        params = list(model.state_dict().values())
        assert sum(p.numel() for p in params) == sum(t.numel() for t in states[version].values())
        squares = [sum(float(t.square().sum()) for t in ts) for ts in (params, states[version].values())]
        assert squares[0] == pytest.approx(squares[1], rel=1e-6)
        qkv = states[version]["pretrained.blocks.3.attn.qkv.weight"]
        assert torch.equal(model.backbone.encoder.layer[3].attention.k_proj.weight, qkv[128:256])


def test_the_input_size_and_the_position_grid() -> None:
    assert depth_anything.input_size(64, 128) == (518, 1036)
    assert depth_anything.input_size(100, 150) == (518, 784)  # 777 / 14 = 55.5 → 56 (half to even)
    assert depth_anything.input_size(300, 200) == (784, 518)
    assert depth_anything.input_size(600, 1000) == (518, 868)  # 863.3 → 62 × 14
    table = torch.randn(1, 1 + 37 * 37, 8)
    assert depth_anything.positions(table, 37, 37) is table
    wide = depth_anything.positions(table, 37, 74)
    assert wide.shape == (1, 1 + 37 * 74, 8)
    by_size = F.interpolate(
        table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2), size=(37, 74), mode="bicubic"
    )
    assert not torch.allclose(wide[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-3)


@pytest.mark.parametrize("version", [1, 2])
def test_the_prediction_equals_an_independent_forward(
    models: Path, references: dict[int, np.ndarray], version: int
) -> None:
    ours = depth_anything.depth(SMALL_PICTURE, models / annotators.OWN_FOLDER / FILES[version], version)
    reference = references[version]
    assert ours.shape == reference.shape == (64, 66)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()
    assert reference.min() >= 0
    assert reference.std() > 0.01 * reference.max()  # it varies: the comparison means something


def test_detect_at_the_preprocessor_resolution(
    models: Path, states: dict[int, dict[str, torch.Tensor]]
) -> None:
    out = preprocessors.detect("depth_anything_v2", _picture(1), 64, roots=annotators.roots(models))
    assert out.shape == (64, 77, 3)  # short side 64, the long one scaled, the padding cut off
    assert out.dtype == np.uint8
    assert (out[:, :, 0] == out[:, :, 1]).all()  # grey
    assert (out[:, :, 0] == out[:, :, 2]).all()
    padded = ops.resize_with_pad(_picture(1), 64)[0]  # 64 × 128 (the network path is checked above)
    d = depth_anything.depth(padded, annotators.roots(models)[0] / FILES[2], 2).astype(np.float64)
    expected = ((d - d.min()) / (d.max() - d.min()) * 255.0).astype(np.uint8)[:64, :77]
    assert np.abs(out[:, :, 0].astype(int) - expected).max() <= 1
    assert out.max() > out.min()
    assert preprocessors.find("depth_anything").run is depth_anything.run_v1


def test_listed_only_where_the_file_is(models: Path, tmp_path: Path) -> None:
    roots = annotators.roots(models)
    assert set(MODULES.values()) <= set(preprocessors.module_list(roots=roots))
    detail = preprocessors.module_detail(True, roots)
    assert [s["name"] for s in detail["depth_anything_v2"]["sliders"]] == ["Resolution"]  # type: ignore[index]
    bare = annotators.roots(tmp_path / "models")
    assert not set(MODULES.values()) & set(preprocessors.module_list(roots=bare))
    for version, module in MODULES.items():
        assert preprocessors.unavailable(bare)[module] == [f"{annotators.DOWNLOADS}/{FILES[version]}"]
        assert preprocessors.find(module).files == (FILES[version],)
        assert module not in annotators.BY_MODULE


@pytest.mark.parametrize("version", [1, 2])
def test_a_missing_file_is_refused_naming_it(tmp_path: Path, version: int) -> None:
    with pytest.raises(FieldError) as refused:
        preprocessors.detect(MODULES[version], _picture(), 64, roots=annotators.roots(tmp_path / "models"))
    assert refused.value.field == "module"
    folder, name = FILES[version].split("/")
    assert name in refused.value.message
    assert f"{annotators.DOWNLOADS}/{folder}/" in refused.value.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"depth_head.projects.0.weight": torch.zeros(2, 2)}, "no pretrained.cls_token"),
        ("drop", "keys or shapes differ"),
        ("ten", "V2 network (10 blocks)"),
    ],
)
def test_a_wrong_file_is_refused_naming_it(
    tmp_path: Path, states: dict[int, dict[str, torch.Tensor]], content: object, words: str
) -> None:
    state = dict(states[2])
    if content == "drop":
        del state["depth_head.scratch.refinenet2.resConfUnit1.conv2.bias"]
    elif content == "ten":  # a depth Depth Anything V2 was not released at
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith("pretrained.blocks.") or int(k.split(".")[2]) < 10
        }
    elif isinstance(content, dict):
        state = content
    path = tmp_path / "models" / annotators.OWN_FOLDER / depth_anything.FILE_V2
    path.parent.mkdir(parents=True)
    save_file(state, str(path))
    with pytest.raises(FieldError) as refused:
        preprocessors.detect("depth_anything_v2", _picture(), 64, roots=annotators.roots(tmp_path / "models"))
    assert refused.value.field == "module"
    assert depth_anything.FILE_V2 in refused.value.message
    assert words in refused.value.message
