"""The depth and normal-map annotators that need ``dpt_hybrid-midas-501f0c75.pt`` (depth_midas, normal_midas),
computed as sd-webui-controlnet does (``annotator/midas``: ``apply_midas`` with the "dpt_hybrid" MiDaS v3
model; ``scripts/preprocessor/legacy/processor.py``: ``midas``, ``midas_normal``).

The network is DPT-Hybrid: timm's ``vit_base_resnet50_384`` (a ResNetV2 stem of weight-standardised
convolutions with TF "same" padding and group norm, three stages of 3, 4 and 9 bottlenecks, then ViT-B/16
over the 1/16 feature map, its 24×24 position embeddings resized bilinearly to the picture's grid), the
"project" readout of blocks 8 and 11, and the refinenet head, ending in a ReLU (relative inverse depth). It
runs here as transformers' ``DPTForDepthEstimation`` built from a config written below (nothing downloads):
its hybrid (BiT) embeddings, ViT layers, neck and head are the same operations, with timm's LayerNorm eps
(1e-6). Its own ``forward`` only takes 384×384 square inputs, so :func:`prediction` calls its parts in
order, at any size that is a multiple of 32. The released keys (the extension's ``DPTDepthModel``) are
renamed onto it, the fused ``qkv`` split in three; the ViT's ImageNet classifier in the file is not used.

The maps (``apply_midas``): the padded picture in [-1, 1] (no other resizing or normalisation); the depth
shifted to 0 and divided by its maximum, × 255; the normal map from the raw depth's 3×3 Sobel gradients
(x, y; zeroed where the normalised depth is under the background threshold) and a constant z of 2π, made
unit length, × 127.5 + 127.5, channels reversed (z, y, x). Both are cut to the picture after the network
(and after the Sobel filter, so the border sees the padding as the extension's does).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from latentstudio.control import preprocess_ops as ops
from latentstudio.control.preprocessor_types import Preprocessor, Settings, Slider
from latentstudio.models.files import ModelFileError, read_tensor_file

if TYPE_CHECKING:  # transformers loads when the network first does, not with the registry
    from transformers import DPTConfig, DPTForDepthEstimation

FILE = "midas/dpt_hybrid-midas-501f0c75.pt"  # under the annotator downloads folder
NORMAL_Z = 2.0 * math.pi  # ``apply_midas``' ``a``: the legacy processor never passes another
CLASSIFIER = ("pretrained.model.head.weight", "pretrained.model.head.bias")  # in the file, unused
HIDDEN = 768  # ViT-B width
PATCH = 16  # ViT tokens per side: the ResNet's 1/16 feature map, 1×1 patches
TAPS = (8, 11)  # the ViT blocks whose outputs the neck reads (after the ResNet's first two stages)

_BIT = "dpt.embeddings.backbone.bit."
_VIT = "pretrained\\.model\\."
# released key → transformers key; a group ``n`` named ``shift`` is mapped by the rule's function
_RULES: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (_VIT + r"cls_token", lambda m: "dpt.embeddings.cls_token"),
    (_VIT + r"pos_embed", lambda m: "dpt.embeddings.position_embeddings"),
    (_VIT + r"patch_embed\.proj\.(\w+)", lambda m: f"dpt.embeddings.projection.{m[1]}"),
    (_VIT + r"patch_embed\.backbone\.stem\.conv\.weight", lambda m: _BIT + "embedder.convolution.weight"),
    (_VIT + r"patch_embed\.backbone\.stem\.norm\.(\w+)", lambda m: _BIT + f"embedder.norm.{m[1]}"),
    (
        _VIT
        + r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.((?:downsample\.)?(?:conv|norm)\d?\.\w+)",
        lambda m: _BIT + f"encoder.stages.{m[1]}.layers.{m[2]}.{m[3]}",
    ),
    (_VIT + r"blocks\.(\d+)\.norm1\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.layernorm_before.{m[2]}"),
    (_VIT + r"blocks\.(\d+)\.norm2\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.layernorm_after.{m[2]}"),
    (
        _VIT + r"blocks\.(\d+)\.attn\.qkv\.(\w+)",
        lambda m: f"dpt.encoder.layer.{m[1]}.attention.attention.*.{m[2]}",
    ),
    (
        _VIT + r"blocks\.(\d+)\.attn\.proj\.(\w+)",
        lambda m: f"dpt.encoder.layer.{m[1]}.attention.output.dense.{m[2]}",
    ),
    (
        _VIT + r"blocks\.(\d+)\.mlp\.fc1\.(\w+)",
        lambda m: f"dpt.encoder.layer.{m[1]}.intermediate.dense.{m[2]}",
    ),
    (_VIT + r"blocks\.(\d+)\.mlp\.fc2\.(\w+)", lambda m: f"dpt.encoder.layer.{m[1]}.output.dense.{m[2]}"),
    (_VIT + r"norm\.(\w+)", lambda m: f"dpt.layernorm.{m[1]}"),
    (
        r"pretrained\.act_postprocess([34])\.0\.project\.0\.(\w+)",
        lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0.{m[2]}",
    ),
    (
        r"pretrained\.act_postprocess([34])\.3\.(\w+)",
        lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection.{m[2]}",
    ),
    (r"pretrained\.act_postprocess4\.4\.(\w+)", lambda m: f"neck.reassemble_stage.layers.3.resize.{m[1]}"),
    (r"scratch\.layer([1-4])_rn\.weight", lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (
        r"scratch\.refinenet([1-4])\.out_conv\.(\w+)",
        lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection.{m[2]}",
    ),
    (
        r"scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(\w+)",
        lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}",
    ),
    (r"scratch\.output_conv\.([024])\.(\w+)", lambda m: f"head.head.{m[1]}.{m[2]}"),
)


def config() -> DPTConfig:
    """DPT-Hybrid as MiDaS v3 builds it (timm's ``vit_base_resnet50_384``, readout "project", blocks 8 and
    11 tapped after the ResNet's first two stages, 256 fusion features)."""
    from transformers import BitConfig, DPTConfig

    backbone = BitConfig(
        global_padding="same",
        layer_type="bottleneck",
        depths=[3, 4, 9],
        embedding_dynamic_padding=True,
    )
    backbone.set_output_features_output_indices(out_features=["stage1", "stage2", "stage3"], out_indices=None)
    return DPTConfig(
        is_hybrid=True,
        backbone_config=backbone,
        hidden_size=HIDDEN,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=4 * HIDDEN,
        layer_norm_eps=1e-6,  # timm's ViT
        image_size=384,
        patch_size=PATCH,
        backbone_out_indices=[0, 1, *TAPS],  # the first two are the ResNet stages
        readout_type="project",
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[256, 512, HIDDEN, HIDDEN],
        backbone_featmap_shape=[1, 1024, 24, 24],
        fusion_hidden_size=256,
    )


def renamed(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The released tensors under transformers' names (``qkv`` ``[3·768, …]`` split into query, key and
    value), and the released keys no rule knows. The classifier head is left out."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key in CLASSIFIER:
            continue
        name = next((rename(m) for pattern, rename in _RULES if (m := re.fullmatch(pattern, key))), None)
        if name is None:
            unknown.append(key)
        elif "*" in name and tensor.shape[0] == 3 * HIDDEN:
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3), strict=True):
                out[name.replace("*", part)] = chunk
        else:
            out[name] = tensor
    return out, unknown


def _load(path: Path, size: int, mtime_ns: int) -> DPTForDepthEstimation:
    """The network with ``path``'s weights, fp32, eval, no gradients (``size``, ``mtime_ns``: the cache
    key)."""
    from transformers import DPTForDepthEstimation

    del size, mtime_ns
    state = dict(read_tensor_file(path).tensors)
    tensors, unknown = renamed(state)
    with torch.device("meta"):
        model = DPTForDepthEstimation(config())
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    found = {k: tuple(t.shape) for k, t in tensors.items()}
    wrong = unknown + [k for k in CLASSIFIER if k not in state]
    wrong += sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
    if wrong:
        raise ModelFileError(path, f"not the MiDaS DPT-Hybrid network (keys or shapes differ: {wrong[:3]})")
    model.load_state_dict({k: t.to(torch.float32, copy=True) for k, t in tensors.items()}, assign=True)
    torch.nn.Module.eval(model).requires_grad_(False)
    return model


_cached = functools.lru_cache(maxsize=1)(_load)  # the extension keeps its MiDaS loaded once used


def network(path: Path) -> DPTForDepthEstimation:
    """The network with ``path``'s weights, kept while the file is unchanged. A file whose tensors are not
    exactly the released ones is :class:`ModelFileError` naming it."""
    stat = path.stat()
    return _cached(path, stat.st_size, stat.st_mtime_ns)


def prediction(model: DPTForDepthEstimation, x: torch.Tensor) -> torch.Tensor:
    """``DPTDepthModel.forward``: ``[1, 3, H, W]`` in [-1, 1] (``H``, ``W`` multiples of 32) → ``[1, H, W]``
    relative inverse depth (≥ 0)."""
    height, width = x.shape[2:]
    embedded = model.dpt.embeddings(x, interpolate_pos_encoding=True)
    hidden = embedded.last_hidden_states
    features = list(embedded.intermediate_activations)  # the ResNet's 1/4 and 1/8 stages
    for i, layer in enumerate(model.dpt.encoder.layer):
        hidden = layer(hidden)
        if i in TAPS:
            features.append(hidden)
    fused = model.neck(features, height // PATCH, width // PATCH)
    depth: torch.Tensor = model.head(fused)
    return depth


def depth(image: np.ndarray, path: Path) -> np.ndarray:
    """``apply_midas``' network call: ``[H, W, 3]`` uint8 (``H``, ``W`` multiples of 64) → ``[H, W]``
    float32 relative inverse depth."""
    with torch.no_grad():
        x = torch.from_numpy(image.copy()).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]
        out: np.ndarray = prediction(network(path), x)[0].numpy()
    return out


def normalised(raw: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32 shifted to a minimum of 0 and divided by its maximum (all 0 where it is flat: the
    extension's 0/0 gives NaN there, which casts to 0)."""
    shifted = raw - raw.min()
    top = shifted.max()
    out: np.ndarray = shifted / top if top > 0 else np.zeros_like(shifted)
    return out


def depth_map(raw: np.ndarray) -> np.ndarray:
    """``[H, W]`` float32 depth → ``[H, W]`` uint8, nearest 0, farthest 255 (truncated)."""
    out: np.ndarray = (normalised(raw) * 255.0).clip(0, 255).astype(np.uint8)
    return out


def normal_map(raw: np.ndarray, background: float, z: float = NORMAL_Z) -> np.ndarray:
    """``[H, W]`` float32 depth → ``[H, W, 3]`` uint8 normals (z, y, x) from the 3×3 Sobel gradients, flat
    (x = y = 0) where the normalised depth is under ``background``."""
    import cv2

    x = cv2.Sobel(raw, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(raw, cv2.CV_32F, 0, 1, ksize=3)
    flat = normalised(raw) < background
    x[flat] = 0
    y[flat] = 0
    normal = np.stack([x, y, np.full_like(x, z)], axis=2)
    normal = normal / np.sum(normal**2.0, axis=2, keepdims=True) ** 0.5
    out: np.ndarray = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]
    return np.ascontiguousarray(out)


def run_depth(image: np.ndarray, s: Settings) -> np.ndarray:
    """depth_midas: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 depth at the preprocessor resolution (padded
    to 64 for the network, the padding cut off); ``s.weights[0]``: the located file."""
    padded, height, width = ops.resize_with_pad(image, s.resolution)
    return ops.gray_to_rgb(depth_map(depth(padded, s.weights[0]))[:height, :width])


def run_normal(image: np.ndarray, s: Settings) -> np.ndarray:
    """normal_midas: ``[H, W, 3]`` uint8 → ``[h, w, 3]`` uint8 normal map at the preprocessor resolution
    (``s.a``: the background threshold on the normalised depth)."""
    padded, height, width = ops.resize_with_pad(image, s.resolution)
    return np.ascontiguousarray(normal_map(depth(padded, s.weights[0]), s.a)[:height, :width])


ENTRIES: tuple[Preprocessor, ...] = (
    Preprocessor("depth", run_depth, aliases=("depth_midas",), priority=100, tags=("Depth",), files=(FILE,)),
    Preprocessor(
        "normal_map",
        run_normal,
        aliases=("normal_midas",),
        threshold_a=Slider("Normal Background Threshold", 0.0, 1.0, 0.4, 0.01),
        tags=("NormalMap",),
        files=(FILE,),
    ),
)
