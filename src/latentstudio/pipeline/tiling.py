"""Seamless tiling (A1111 ``tiling``): the job's convolutions pad circularly, so the picture wraps around.

A1111 v1.10.1: ``process_images_inner`` (modules/processing.py) resolves ``p.tiling`` (None → the ``tiling``
option) and calls ``model_hijack.apply_circular(p.tiling)`` (modules/sd_hijack.py), which sets
``padding_mode = "circular"`` on every module of type exactly ``torch.nn.Conv2d`` of the loaded model: the
UNet and the VAE's encoder and decoder (the CLIP text encoders have no convolution). The ControlNet
extension's networks are not part of that model, so they keep zero padding; so do they here. Convolutions
without padding (1×1 projections, the VAE encoder's stride-2 convolutions, which pad ``(0, 1, 0, 1)`` with
zeros themselves) are unaffected, as there.

:func:`seamless` does the same for one job and undoes it on the way out, also when the job fails or is
interrupted (models are cached and shared between jobs). It also takes the axes (our ``tiling_axes``
option): ``X`` wraps left/right and pads top/bottom with zeros, ``Y`` the other way round (the "Asymmetric
tiling" extension's Tile X / Tile Y). The hires fix's own checkpoint pads circularly too: in A1111 the
swap (``reload_model_weights`` → ``undo_hijack`` → ``apply_circular(False)``) drops the circular padding
for the second pass, which we take for an accident (its infotext says "Tiling" for the whole job).

Tiled VAE decode (ours; A1111 has none) cannot wrap inside a tile: a tile's convolutions only see the tile.
:func:`decode` therefore gives a latent that has to be decoded in tiles a border of its own opposite edge
(:data:`WRAP_MARGIN` latent pixels, cut off again after decoding), so the tiles at the picture's edges see
what lies across the seam. Latents that decode whole are decoded exactly as A1111 decodes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention

from latentstudio.models.loader import Components
from latentstudio.pipeline import vae
from latentstudio.pipeline.hires import HiresModel
from latentstudio.pipeline.params import TilingMode
from latentstudio.postprocess import tiled_vae

ConvForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
WRAP_MARGIN = 16  # latent pixels: more than a decoder tile's receptive field at latent resolution (~13)


def wraps(mode: TilingMode) -> tuple[bool, bool]:
    """``(x, y)``: whether ``mode`` wraps the left/right and the top/bottom edges."""
    return mode in (TilingMode.BOTH, TilingMode.X), mode in (TilingMode.BOTH, TilingMode.Y)


def padded_forward(conv: torch.nn.Conv2d, mode: TilingMode) -> ConvForward:
    """A ``_conv_forward`` for ``conv`` that pads its input ``[B, C, H, W]`` itself, circularly along the
    axes ``mode`` wraps and with zeros along the others, then convolves without padding."""
    left, right, top, bottom = (int(p) for p in conv._reversed_padding_repeated_twice)
    wrap_x, wrap_y = wraps(mode)
    stride, dilation, groups = conv.stride, conv.dilation, conv.groups

    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = F.pad(x, (left, right, 0, 0), mode="circular" if wrap_x else "constant")
        x = F.pad(x, (0, 0, top, bottom), mode="circular" if wrap_y else "constant")
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    return forward


@contextmanager
def circular(modules: list[torch.nn.Module], mode: TilingMode) -> Iterator[int]:
    """Within the block, every padded zero-padding ``Conv2d`` in ``modules`` pads as ``mode`` says; yields
    how many were changed. Each gets its own ``_conv_forward`` (an instance attribute) that is removed
    on exit, whatever happens inside, so the modules are exactly as before. ``NONE`` changes nothing."""
    layers: dict[int, torch.nn.Conv2d] = {}
    if mode is not TilingMode.NONE:
        for module in modules:
            for layer in module.modules():
                if not isinstance(layer, torch.nn.Conv2d) or "_conv_forward" in vars(layer):
                    continue
                if layer.padding_mode == "zeros" and any(layer._reversed_padding_repeated_twice):
                    layers[id(layer)] = layer
    try:
        for layer in layers.values():
            layer._conv_forward = padded_forward(layer, mode)  # type: ignore[method-assign,assignment]
        yield len(layers)
    finally:
        for layer in layers.values():
            vars(layer).pop("_conv_forward", None)


@contextmanager
def seamless(
    mode: TilingMode, components: Components, hires_model: HiresModel | None = None
) -> Iterator[None]:
    """A job's tiling: the UNet and VAE of its checkpoint (and of the hires fix's) pad as ``mode`` says
    while the block runs (see the module docstring)."""
    models: list[torch.nn.Module] = [components.unet, components.vae]
    if hires_model is not None:
        models += [hires_model.components.unet, hires_model.components.vae]
    with circular(models, mode):
        yield


def decode(components: Components, latents: torch.Tensor, mode: TilingMode) -> torch.Tensor:
    """:func:`~latentstudio.pipeline.vae.decode` of ``latents [B, C, h, w]`` → ``[B, 3, 8h, 8w]`` under
    tiling ``mode`` (inside :func:`seamless`): a latent that will be decoded in tiles first gets
    :data:`WRAP_MARGIN` latent pixels of its opposite edge on each wrapped side, cut off after decoding."""
    wrap_x, wrap_y = wraps(mode)
    if not (wrap_x or wrap_y) or not _tiled(components, latents):
        return vae.decode(components, latents)
    mx = min(WRAP_MARGIN, latents.shape[-1]) if wrap_x else 0
    my = min(WRAP_MARGIN, latents.shape[-2]) if wrap_y else 0
    padded = F.pad(latents, (mx, mx, my, my), mode="circular")
    images = vae.decode(components, padded)
    height, width = images.shape[-2:]
    factor = height // padded.shape[-2]
    return images[..., my * factor : height - my * factor, mx * factor : width - mx * factor]


def _tiled(components: Components, latents: torch.Tensor) -> bool:
    """Whether :func:`~latentstudio.pipeline.vae.decode` would decode ``latents`` in tiles (its budget)."""
    budget = vae.free_memory(components.device) // 2 // max(latents.shape[0], 1)
    try:
        tile = tiled_vae.auto_tile(components.vae, tuple(latents.shape), budget, dtype=components.dtype)
    except ValueError:  # vae.decode then tiles at the smallest size
        return True
    return tile is not None
