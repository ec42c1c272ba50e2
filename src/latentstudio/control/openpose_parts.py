"""The three OpenPose networks of sd-webui-controlnet's ``annotator/openpose`` (CMU's body, hand and face
models as converted by pytorch-openpose), laid out so that their ``state_dict`` keys are the released files'
own (``conv1_1.weight``, ``Mconv7_stage6_L2.bias`` …): every convolution is a direct child named as in the
file, so :func:`latentstudio.control.weights.load_network` checks and loads them as they are (the extension
builds nested ``Sequential`` blocks and maps the keys by dropping their first component).

All three share a VGG-19-like trunk at 1/8 of the input (3×3 convolutions with ReLU, 2×2 max-pools after
``conv1_2``, ``conv2_2``, ``conv3_4``) and then refine their maps in five more stages of five 7×7 and two
1×1 convolutions, each stage reading the previous maps concatenated with the trunk's 128 features:

- body (``body_pose_model.pth``): two branches per stage, ``L1`` the 38 part-affinity fields and ``L2`` the
  19 part heatmaps (18 joints and the background). The extension's list of layers without ReLU names
  ``Mconv7_stage6_L1`` twice and never ``Mconv7_stage6_L2``, so the final heatmaps pass through a ReLU; kept.
- hand (``hand_pose_model.pth``): one branch of 22 heatmaps (21 joints and the background).
- face (``facenet.pth``): one branch of 71 heatmaps (70 landmarks and the background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

Layer = tuple[str, int, int, int, bool]  # name, channels in, channels out, kernel, ReLU after it
POOL: Layer = ("pool", 0, 0, 2, False)  # a 2×2 max-pool in a layer list
# (name, in, out) of the 3×3 convolutions with ReLU every trunk starts with, and where it pools
_VGG = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), None, ("conv2_1", 64, 128), ("conv2_2", 128, 128), None,
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), None,
    ("conv4_1", 256, 512), ("conv4_2", 512, 512),
)  # fmt: skip


def _trunk(tail: Sequence[tuple[str, int, int]]) -> list[Layer]:
    """The VGG layers then ``tail``; all 3×3 with ReLU."""
    return [POOL if spec is None else (*spec, 3, True) for spec in (*_VGG, *tail)]


def _stage(suffix: str, channels_in: int, parts: int, last_relu: bool = False) -> list[Layer]:
    """One refinement stage: ``Mconv1``–``Mconv5`` (7×7, 128 channels), ``Mconv6`` (1×1), ``Mconv7`` (1×1 to
    ``parts``, linear unless ``last_relu``); ``suffix`` as ``stage3_L1``."""
    layers: list[Layer] = [
        (f"Mconv{i}_{suffix}", channels_in if i == 1 else 128, 128, 7, True) for i in range(1, 6)
    ]
    return [*layers, (f"Mconv6_{suffix}", 128, 128, 1, True), (f"Mconv7_{suffix}", 128, parts, 1, last_relu)]


def _first(branch: int, parts: int) -> list[Layer]:
    """The body's first stage of branch ``L<branch>``: three 3×3 and two 1×1 convolutions, the last linear."""
    layers: list[Layer] = [(f"conv5_{i}_CPM_L{branch}", 128, 128, 3, True) for i in range(1, 4)]
    return [
        *layers,
        (f"conv5_4_CPM_L{branch}", 128, 512, 1, True),
        (f"conv5_5_CPM_L{branch}", 512, parts, 1, False),
    ]


class _Layers(nn.Module):
    """Convolutions registered under their file names, run as named lists of layers."""

    def _add(self, layers: Sequence[Layer]) -> list[Layer]:
        for layer in layers:
            name, channels_in, channels_out, kernel, _ = layer
            if layer != POOL:
                self.add_module(name, nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2))
        return list(layers)

    def _run(self, layers: Sequence[Layer], x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if layer == POOL:
                x = F.max_pool2d(x, 2, 2)
                continue
            x = getattr(self, layer[0])(x)
            if layer[4]:
                x = F.relu(x)
        return x


class BodyNetwork(_Layers):
    """``bodypose_model``: ``[1, 3, H, W]`` BGR in [-0.5, 0.5) → (PAFs ``[1, 38, H/8, W/8]``, heatmaps
    ``[1, 19, H/8, W/8]``), ``H`` and ``W`` multiples of 8."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = self._add(_trunk((("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, 128))))
        self.stages = [(self._add(_first(1, 38)), self._add(_first(2, 19)))]
        for s in range(2, 7):
            pafs = self._add(_stage(f"stage{s}_L1", 185, 38))
            heat = self._add(_stage(f"stage{s}_L2", 185, 19, last_relu=s == 6))
            self.stages.append((pafs, heat))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._run(self.trunk, x)
        h = features
        pafs, heat = h, h
        for i, (paf_layers, heat_layers) in enumerate(self.stages):
            pafs, heat = self._run(paf_layers, h), self._run(heat_layers, h)
            if i < len(self.stages) - 1:
                h = torch.cat([pafs, heat, features], 1)
        return pafs, heat


class _SingleBranch(_Layers):
    """The hand and face networks: ``[1, 3, H, W]`` BGR in [-0.5, 0.5) → ``[1, parts, H/8, W/8]``."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        tail = (("conv4_3", 512, 512), ("conv4_4", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
                ("conv5_3_CPM", 512, 128))  # fmt: skip
        self.trunk = self._add(_trunk(tail))
        first: list[Layer] = [("conv6_1_CPM", 128, 512, 1, True), ("conv6_2_CPM", 512, parts, 1, False)]
        self.stages = [
            self._add(first),
            *(self._add(_stage(f"stage{s}", 128 + parts, parts)) for s in range(2, 7)),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self._run(self.trunk, x)
        h = self._run(self.stages[0], features)
        for layers in self.stages[1:]:
            h = self._run(layers, torch.cat([h, features], 1))
        return h


class HandNetwork(_SingleBranch):
    """``handpose_model``: 22 heatmaps (21 hand joints, then the background)."""

    def __init__(self) -> None:
        super().__init__(22)


class FaceNetwork(_SingleBranch):
    """``FaceNet``'s last stage: 71 heatmaps (70 landmarks, then the background)."""

    def __init__(self) -> None:
        super().__init__(71)
