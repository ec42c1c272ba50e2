"""The Depth Anything annotators (depth_anything, depth_anything_v2) from the files the user placed,
computed as sd-webui-controlnet does (``annotator/depth_anything.py``, ``annotator/depth_anything_v2.py``
over the ``depth_anything`` and ``depth_anything_v2`` packages it installs;
``scripts/preprocessor/legacy/processor.py``: ``depth_anything``, ``depth_anything_v2``, both registered
with ``colored=False``).

The network is DPT over DINOv2 (ViT-L/14 in the released files: 24 blocks of width 1024, 16 heads, layer
scale, a 37×37 position grid for 518 px): four blocks' tokens, each put through the final LayerNorm, are
reassembled at 4×, 2×, 1× and ½× the patch grid, fused by four refinenet stages, and read out by two
convolutions around a bilinear resize to the input size, ending in a ReLU (relative inverse depth). Version 1
taps the last four blocks, version 2 blocks 4, 11, 17 and 23 (the table below, by depth); the two files
otherwise share one layout. It runs as transformers' ``DepthAnythingForDepthEstimation`` with a
``Dinov2Backbone``, built from a config read off the file's shapes (width, depth, head count at DINOv2's 64
per head, MLP width, position grid, neck and head channels; nothing downloads). One difference is undone
here: transformers resizes the position grid to the token grid by size, while DINOv2 resizes it bicubically
by the scale factor ``(n + 0.1) / 37`` (no antialias), which samples other points, so :func:`prediction`
builds the tokens itself and then calls the layers, the neck and the head in order. The released keys are
renamed onto it (transformers' conversion script's mapping), the fused ``qkv`` split in three.

The map: the padded picture with its channels reversed (the extension's ``COLOR_BGR2RGB`` on an RGB
picture), / 255, resized with ``INTER_CUBIC`` (float64) so that each side is a multiple of 14 and both are at
least 518 (aspect kept), ImageNet-normalised; the prediction resized bilinearly to the padded size; shifted
to 0, divided by its range, × 255 and truncated (grey); then cut to the picture.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from latentstudio.control import midas
from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings
from latentstudio.models.files import ModelFileError, read_tensor_file

if TYPE_CHECKING:  # transformers loads when the network first does, not with the registry
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

FILE = "depth_anything/depth_anything_vitl14.pth"  # under the annotator downloads folder
FILE_V2 = "depth_anything_v2/depth_anything_v2_vitl.safetensors"
SIDE = 518  # the input's shorter side at least (each side a multiple of the patch)
MEAN = (0.485, 0.456, 0.406)  # ImageNet, applied to the reversed channels as the extension does
STD = (0.229, 0.224, 0.225)
HEAD_DIM = 64  # every DINOv2 size has 64 channels per attention head
GRID_OFFSET = 0.1  # DINOv2's ``interpolate_offset``
V2_TAPS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}  # version 2's blocks, by depth

_V = "pretrained\\."
_H = "depth_head\\."
_RC = "neck.fusion_stage.layers"
# released key → transformers key; a ``*`` in the target is the query / key / value split of ``qkv``
_RULES: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (_V + r"(cls|mask)_token", lambda m: f"backbone.embeddings.{m[1]}_token"),
    (_V + r"pos_embed", lambda m: "backbone.embeddings.position_embeddings"),
    (_V + r"patch_embed\.proj\.(\w+)", lambda m: f"backbone.embeddings.patch_embeddings.projection.{m[1]}"),
    (
        _V + r"blocks\.(\d+)\.(norm[12]|mlp\.fc[12])\.(\w+)",
        lambda m: f"backbone.encoder.layer.{m[1]}.{m[2]}.{m[3]}",
    ),
    (
        _V + r"blocks\.(\d+)\.ls([12])\.gamma",
        lambda m: f"backbone.encoder.layer.{m[1]}.layer_scale{m[2]}.lambda1",
    ),
    (
        _V + r"blocks\.(\d+)\.attn\.qkv\.(\w+)",
        lambda m: f"backbone.encoder.layer.{m[1]}.attention.*_proj.{m[2]}",
    ),
    (
        _V + r"blocks\.(\d+)\.attn\.proj\.(\w+)",
        lambda m: f"backbone.encoder.layer.{m[1]}.attention.o_proj.{m[2]}",
    ),
    (_V + r"norm\.(\w+)", lambda m: f"backbone.layernorm.{m[1]}"),
    (_H + r"projects\.([0-3])\.(\w+)", lambda m: f"neck.reassemble_stage.layers.{m[1]}.projection.{m[2]}"),
    (_H + r"resize_layers\.([013])\.(\w+)", lambda m: f"neck.reassemble_stage.layers.{m[1]}.resize.{m[2]}"),
    (_H + r"scratch\.layer([1-4])_rn\.weight", lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (
        _H + r"scratch\.refinenet([1-4])\.out_conv\.(\w+)",
        lambda m: f"{_RC}.{4 - int(m[1])}.projection.{m[2]}",
    ),
    (
        _H + r"scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(\w+)",
        lambda m: f"{_RC}.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}",
    ),
    (_H + r"scratch\.output_conv1\.(\w+)", lambda m: f"head.conv1.{m[1]}"),
    (_H + r"scratch\.output_conv2\.([02])\.(\w+)", lambda m: f"head.conv{2 + int(m[1]) // 2}.{m[2]}"),
)


@dataclass(frozen=True)
class Layout:
    """The sizes a released state describes: ViT ``width``, ``depth`` (blocks), ``heads``, ``mlp`` (hidden
    width), ``patch`` (pixels), ``grid`` (position grid side), the neck's four ``neck`` channel counts, the
    ``fusion`` channels and the head's ``hidden`` channels."""

    width: int
    depth: int
    heads: int
    mlp: int
    patch: int
    grid: int
    neck: tuple[int, int, int, int]
    fusion: int
    hidden: int


def layout(state: dict[str, torch.Tensor], path: Path) -> Layout:
    """The sizes read off the tensors' shapes; :class:`ModelFileError` naming ``path`` where a tensor they
    come from is missing or the sizes do not fit DINOv2."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ModelFileError(path, f"not a Depth Anything network (no {key})")
        return tuple(state[key].shape)

    width = shape("pretrained.cls_token")[-1]
    depth = len({k.split(".")[2] for k in state if k.startswith("pretrained.blocks.")})
    positions = shape("pretrained.pos_embed")[1] - 1
    grid = math.isqrt(positions)
    if width % HEAD_DIM or grid * grid != positions or depth < 4:
        raise ModelFileError(path, f"not a Depth Anything network (width {width}, {depth} blocks)")
    neck = tuple(shape(f"depth_head.projects.{i}.weight")[0] for i in range(4))
    return Layout(
        width=width,
        depth=depth,
        heads=width // HEAD_DIM,
        mlp=shape("pretrained.blocks.0.mlp.fc1.weight")[0],
        patch=shape("pretrained.patch_embed.proj.weight")[-1],
        grid=grid,
        neck=(neck[0], neck[1], neck[2], neck[3]),
        fusion=shape("depth_head.scratch.layer1_rn.weight")[0],
        hidden=shape("depth_head.scratch.output_conv2.0.weight")[0],
    )


def taps(version: int, depth: int) -> tuple[int, ...]:
    """The blocks whose tokens the neck reads: version 1's last four, version 2's by depth (a depth it was
    not released at is ``KeyError``)."""
    return tuple(range(depth - 4, depth)) if version == 1 else V2_TAPS[depth]


def config(sizes: Layout, tapped: tuple[int, ...]) -> DepthAnythingConfig:
    """DINOv2 (layer scale, LayerNorm eps 1e-6, exact GELU, final norm on the tapped tokens, patch tokens
    only) under the DPT neck and head the sizes give, reading the ``tapped`` blocks."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=sizes.width,
        num_hidden_layers=sizes.depth,
        num_attention_heads=sizes.heads,
        mlp_ratio=sizes.mlp // sizes.width,
        patch_size=sizes.patch,
        image_size=sizes.grid * sizes.patch,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    backbone.set_output_features_output_indices(out_features=None, out_indices=[i + 1 for i in tapped])
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=sizes.width,
        patch_size=sizes.patch,
        neck_hidden_sizes=list(sizes.neck),
        fusion_hidden_size=sizes.fusion,
        head_hidden_size=sizes.hidden,
    )


def renamed(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The released tensors under transformers' names (``qkv`` ``[3·D, …]`` split into query, key and
    value), and the released keys no rule knows."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        name = next((rename(m) for pattern, rename in _RULES if (m := re.fullmatch(pattern, key))), None)
        if name is None:
            unknown.append(key)
        elif "*" in name:
            if tensor.shape[0] % 3:
                unknown.append(key)
                continue
            for part, chunk in zip("qkv", tensor.chunk(3), strict=True):
                out[name.replace("*", part)] = chunk
        else:
            out[name] = tensor
    return out, unknown


def _load(path: Path, size: int, mtime_ns: int, version: int) -> DepthAnythingForDepthEstimation:
    """The network with ``path``'s weights, fp32, eval, no gradients (``size``, ``mtime_ns``: the cache
    key; ``version``: which blocks its config taps)."""
    from transformers import DepthAnythingForDepthEstimation

    del size, mtime_ns
    state = dict(read_tensor_file(path).tensors)
    sizes = layout(state, path)
    if version == 2 and sizes.depth not in V2_TAPS:
        raise ModelFileError(path, f"not a Depth Anything V2 network ({sizes.depth} blocks)")
    tensors, wrong = renamed(state)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config(sizes, taps(version, sizes.depth)))
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    found = {k: tuple(t.shape) for k, t in tensors.items()}
    wrong += sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
    if wrong:
        raise ModelFileError(path, f"not a Depth Anything network (keys or shapes differ: {wrong[:3]})")
    model.load_state_dict({k: t.to(torch.float32, copy=True) for k, t in tensors.items()}, assign=True)
    torch.nn.Module.eval(model).requires_grad_(False)
    return model


_cached = functools.lru_cache(maxsize=2)(_load)  # the extension keeps each version loaded once used


def network(path: Path, version: int) -> DepthAnythingForDepthEstimation:
    """The network with ``path``'s weights, kept while the file is unchanged. A file whose tensors are not
    exactly a released Depth Anything layout is :class:`ModelFileError` naming it."""
    stat = path.stat()
    return _cached(path, stat.st_size, stat.st_mtime_ns, version)


def positions(table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """DINOv2's position embeddings for a ``rows`` × ``cols`` token grid: ``table`` ``[1, 1 + g², D]`` →
    ``[1, 1 + rows·cols, D]``, the ``g × g`` grid resized bicubically by the factors ``(n + 0.1) / g`` (kept
    as it is for the square grid it was trained at)."""
    grid = math.isqrt(table.shape[1] - 1)
    if rows == cols == grid:
        return table
    width = table.shape[2]
    patches = table[:, 1:].float().reshape(1, grid, grid, width).permute(0, 3, 1, 2)
    scale = ((rows + GRID_OFFSET) / grid, (cols + GRID_OFFSET) / grid)
    resized = torch.nn.functional.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    return torch.cat([table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, rows * cols, width)], dim=1)


def _patch(model: DepthAnythingForDepthEstimation) -> int:
    """The network's patch side in pixels."""
    return int(model.head.patch_size)


def prediction(model: DepthAnythingForDepthEstimation, x: torch.Tensor) -> torch.Tensor:
    """``DepthAnything.forward``: ``[1, 3, H, W]`` normalised (``H``, ``W`` multiples of the patch) →
    ``[1, H, W]`` relative inverse depth (≥ 0), reading the blocks ``model``'s config taps."""
    backbone = model.backbone
    embeddings = backbone.embeddings
    rows, cols = x.shape[2] // _patch(model), x.shape[3] // _patch(model)
    tokens = embeddings.patch_embeddings(x)
    hidden = torch.cat([embeddings.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    hidden = hidden + positions(embeddings.position_embeddings, rows, cols)
    tapped = [i - 1 for i in backbone.config.out_indices]
    features = []
    for i, layer in enumerate(backbone.encoder.layer):
        hidden = layer(hidden)
        if i in tapped:
            features.append(backbone.layernorm(hidden))
    fused = model.neck(features, rows, cols)
    depth: torch.Tensor = model.head(fused, rows, cols)
    return torch.relu(depth)


def input_size(height: int, width: int, patch: int = 14) -> tuple[int, int]:
    """The network's input ``(height, width)`` for a ``height`` × ``width`` picture: one scale for both
    sides so that the nearer one reaches :data:`SIDE`, each rounded (half to even) to a multiple of
    ``patch``, rounded up where that falls under :data:`SIDE`."""
    scale_h, scale_w = SIDE / height, SIDE / width
    scale = scale_w if scale_w > scale_h else scale_h

    def side(x: float) -> int:
        n = int(np.round(x / patch)) * patch
        return n if n >= SIDE else math.ceil(x / patch) * patch

    return side(scale * height), side(scale * width)


def network_input(image: np.ndarray, patch: int = 14) -> torch.Tensor:
    """``[H, W, 3]`` uint8 → ``[1, 3, h, w]`` float32: channels reversed, / 255, cubic resize to
    :func:`input_size` (float64), ImageNet-normalised."""
    import cv2

    height, width = input_size(image.shape[0], image.shape[1], patch)
    scaled = image[:, :, ::-1] / 255.0
    resized = cv2.resize(scaled, (width, height), interpolation=cv2.INTER_CUBIC)
    normalised = (resized - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)).astype(np.float32))[None]


def depth(image: np.ndarray, path: Path, version: int) -> np.ndarray:
    """The extension's detector up to its normalisation: ``[H, W, 3]`` uint8 → ``[H, W]`` float32
    relative inverse depth, the prediction resized bilinearly to the picture."""
    model = network(path, version)
    with torch.no_grad():
        x = network_input(image, _patch(model))
        raw = prediction(model, x)[None]
        resized = torch.nn.functional.interpolate(raw, image.shape[:2], mode="bilinear", align_corners=False)
    out: np.ndarray = resized[0, 0].numpy()
    return out


def _run(image: np.ndarray, s: Settings, version: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 grey depth at the preprocessor resolution (padded to 64
    for the network, the padding cut off); ``s.weights[0]``: the located file."""
    padded, height, width = ops.resize_with_pad(image, s.resolution)
    return ops.gray_to_rgb(midas.depth_map(depth(padded, s.weights[0], version))[:height, :width])


def run_v1(image: np.ndarray, s: Settings) -> np.ndarray:
    """depth_anything: see :func:`_run`."""
    return _run(image, s, 1)


def run_v2(image: np.ndarray, s: Settings) -> np.ndarray:
    """depth_anything_v2: see :func:`_run`."""
    return _run(image, s, 2)


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor("depth_anything", run_v1, tags=("Depth",), files=(FILE,)),
    Preprocessor("depth_anything_v2", run_v2, tags=("Depth",), files=(FILE_V2,)),
)
