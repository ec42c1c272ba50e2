"""ControlNet and T2I-Adapter units applied to a sampling pass, with sd-webui-controlnet's semantics
(``scripts/hook.py``, ``UnetHook.hook.forward``; ``scripts/controlnet.py``, ``controlnet_main_entry``).

Per UNet call, for every unit inside its guidance window and allowed in this pass by its ``hr_option``:

- a ControlNet runs on the same input as the UNet (``x`` after c_in, the timestep, the prompt context of each
  batch entry) and its 13 residuals (12 skip connections + the middle; 10 for SDXL) are scaled and summed
  over units; an adapter's 4 features (computed once per pass: they depend on the hint only) likewise;
- scales: ``weight`` for every output; with "My prompt is more important" or "ControlNet is more
  important" (soft injection) ``weight · 0.825^(12 − i)`` for ControlNet output ``i`` and ``weight · (0.25,
  0.62, 0.825, 1.0)`` for an adapter's features; in the hires pass a canny or mlsd unit gets the soft scales
  too; ``advanced_weighting`` replaces them all;
- "ControlNet is more important" (CFG injection) zeroes the residuals of the negative prompt's batch
  entries, so only the prompt's pass is guided.

The guidance window uses A1111's step counter as the extension reads it: ``sampling_step / total``, where
``sampling_step`` is the index of the last *finished* sampler step (0 before the first, so step 1's
model calls still see 0) and ``total`` the pass's step count; a unit acts while ``start ≤ fraction ≤ end``.
A unit outside its window, disabled for the pass, or of weight 0 adds nothing: with no active unit the
UNet is called exactly as without ControlNet.

``tile_colorfix`` / ``tile_colorfix+sharp`` units also steer the colours (the extension's "post-processing
for color fix", :class:`ColorFix`): the UNet's output read as ε gives a predicted x0, whose local mean (a
box blur of radius ``k`` = the unit's Variation, doubled in the hires pass unless the unit is off there) is
replaced by that of the hint's VAE latent; ε is recomputed from it and blended in by ``min(weight, 1)``.
As there, this acts in every step and pass, outside the guidance window and ``hr_option`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from PIL import Image, ImageOps

from latentstudio.control import hint, preprocessors
from latentstudio.control.networks import ControlKind, ControlNetwork
from latentstudio.control.units import RESIZE_ALIASES, ControlMode, ControlResize, ControlUnit, HiresOption
from latentstudio.models.families import Family
from latentstudio.pipeline import inpaint
from latentstudio.pipeline.params import GenerationParams, ResizeMode
from latentstudio.pipeline.resize import resize_image
from latentstudio.samplers.wrappers import UNetFn

Stage = Literal["single", "low", "high"]
_SOFT_ADAPTER = (0.25, 0.62, 0.825, 1.0)
_HIRES_SOFT_MODULES = ("canny", "mlsd")  # the extension forces soft injection for these in the hires pass
_RESIZE_MODE = {  # a unit's resize mode as A1111's resize_image numbers it
    ControlResize.JUST_RESIZE: ResizeMode.JUST_RESIZE,
    ControlResize.CROP_AND_RESIZE: ResizeMode.CROP_AND_RESIZE,
    ControlResize.RESIZE_AND_FILL: ResizeMode.RESIZE_AND_FILL,
}


@dataclass(frozen=True)
class Detected:
    """A unit's detected map (``[H', W', 3]`` uint8, before fitting) and how it is fitted."""

    unit: ControlUnit
    network: ControlNetwork
    detected: np.ndarray
    resize: ControlResize


@dataclass(frozen=True)
class ColorFix:
    """A colour-fix unit's part of a pass: the hint's VAE latent ``[1, 4, h, w]``, the blur radius ``k`` in
    latent pixels, the ``+sharp`` detail weight (``threshold_b / 100``; None without sharpening) and the
    blend weight ``min(max(weight, 0), 1)``."""

    latent: torch.Tensor
    k: int
    sharp: float | None
    weight: float


@dataclass(frozen=True)
class PassUnit:
    """One unit ready for one pass: its hint ``[1, C, H, W]`` (on the network's device and dtype), the
    scale of each control output, whether only the prompt's batch entries get them, and whether each
    output is averaged over space (a shuffle ControlNet: the extension's ``global_average_pooling``)."""

    unit: ControlUnit
    network: ControlNetwork
    hint: torch.Tensor
    scales: tuple[float, ...]
    cond_only: bool
    pooled: bool = False
    guides: bool = True  # whether its network acts in this pass (a colour fix acts even where it does not)
    colorfix: ColorFix | None = None


def detect_units(
    units: Sequence[ControlUnit],
    networks: Sequence[ControlNetwork],
    params: GenerationParams,
    seed: int,
    subseed: int,
    *,
    roots: Sequence[Path] = (),
) -> list[Detected]:
    """Run each unit's preprocessor once per job (the extension's ``get_control``) on the unit's image, or
    on the img2img init image fitted by the job's img2img resize mode; pixel-perfect resolution for the
    first pass's size; the numpy seed of the job's first image for shuffle (:func:`numpy_seed`); with
    "only masked" inpainting, cropped as the job's picture is (:func:`masked_crop`); ``roots``: where
    weight-needing preprocessors find their files."""
    out = []
    numpy_seed = preprocessors.numpy_seed(seed, subseed)
    for unit, network in zip(units, networks, strict=True):
        if unit.image is not None:
            mask = None if unit.mask is None else hint.array(unit.mask)
            picture, resize = hint.input_image(hint.array(unit.image), mask), unit.resize_mode
        elif params.init_image is not None:
            picture = np.asarray(params.init_image.convert("RGB"))
            resize = RESIZE_ALIASES.get(int(params.resize_mode), ControlResize.JUST_RESIZE)
        else:  # the door refuses this
            raise ValueError("controlnet is enabled but no input image is given")
        if params.inpaint is not None and params.inpaint.only_masked and unit.inpaint_crop_input_image:
            picture = masked_crop(picture, resize, params)
        detected = hint.detect_map(
            unit, picture, resize, (params.height, params.width), numpy_seed, roots=roots
        )
        out.append(Detected(unit, network, detected, resize))
    return out


def masked_crop(picture: np.ndarray, resize: ControlResize, params: GenerationParams) -> np.ndarray:
    """The extension's ``try_crop_image_with_a1111_mask`` for "only masked" inpainting: ``picture``
    (``[H, W, 3]`` uint8) fitted to the inpainting mask's size by ``resize``, cropped to the region A1111
    inpaints (the mask inverted and blurred as the job's; its bounding box grown by the padding and to the
    job's aspect ratio), then resized and filled to the job's size. A blank mask crops nothing (A1111 then
    inpaints the whole picture)."""
    spec = params.inpaint
    assert spec is not None
    mask = spec.mask.convert("L")
    mask = ImageOps.invert(mask) if spec.invert else mask
    mask = inpaint.blur_mask(mask, spec.blur, spec.blur)
    region = inpaint.crop_region(mask, spec.padding)
    if region is None:
        return picture
    region = inpaint.expand_crop_region(region, params.width, params.height, mask.width, mask.height)
    fitted = resize_image(Image.fromarray(picture), mask.width, mask.height, _RESIZE_MODE[resize])
    cropped = resize_image(fitted.crop(region), params.width, params.height, ResizeMode.RESIZE_AND_FILL)
    return np.asarray(cropped)


def detected_maps(detected: Sequence[Detected], sizes: Sequence[tuple[int, int]]) -> list[Image.Image]:
    """The detected maps a job returns, as the extension collects them: per unit that saves its map, the
    map fitted to each pass's ``(height, width)`` in ``sizes`` (the hires pass's first, as there)."""
    return [
        Image.fromarray(hint.fit(d.detected, d.resize, height, width))
        for d in detected
        if d.unit.save_detected_map
        for height, width in sizes
    ]


def pass_units(
    detected: Sequence[Detected],
    size: tuple[int, int],
    stage: Stage,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[PassUnit]:
    """The units that act in a pass of ``size`` ``(height, width)`` with their hints fitted to it and
    their scales. ``stage``: "single" (no hires fix: every unit acts, whatever its ``hr_option``), "low"
    or "high" (the hires fix's first and second pass). ``encode``: the pass's VAE encoder (images
    ``[B, 3, H, W]`` in [-1, 1] → latents), which colour-fix units need."""
    out = []
    hires = stage == "high"
    for d in detected:
        unit, net = d.unit, d.network
        option = unit.hr_option if stage != "single" else HiresOption.BOTH
        skipped = (option is HiresOption.LOW_RES_ONLY and hires) or (
            option is HiresOption.HIGH_RES_ONLY and stage == "low"
        )
        fix = "colorfix" in preprocessors.find(unit.module).name and unit.weight > 0
        if (skipped or (unit.weight == 0 and unit.advanced_weighting is None)) and not fix:
            continue
        fitted = hint.to_tensor(hint.fit(d.detected, d.resize, size[0], size[1]))
        colorfix = _color_fix(unit, fitted, hires and not skipped, encode) if fix else None
        if net.info.kind is ControlKind.T2I_ADAPTER and net.info.hint_channels == 1:
            fitted = fitted[:, :1]
        param = next(net.module.parameters())
        soft = unit.control_mode is not ControlMode.BALANCED or (
            hires and any(name in unit.module for name in _HIRES_SOFT_MODULES)
        )
        pooled = _pooled(net)
        guides = not skipped and (unit.weight != 0 or unit.advanced_weighting is not None)
        out.append(PassUnit(unit, net, fitted.to(param.device, param.dtype), _scales(unit, net, soft),
                            unit.control_mode is ControlMode.CONTROL or pooled, pooled, guides,
                            colorfix))  # fmt: skip
    return out


def _color_fix(
    unit: ControlUnit,
    fitted: torch.Tensor,
    doubled: bool,
    encode: Callable[[torch.Tensor], torch.Tensor] | None,
) -> ColorFix:
    """The colour fix of ``unit`` from its hint fitted to the pass ``[1, C, H, W]`` in [0, 1]."""
    if encode is None:
        raise ValueError("a colour-fix unit needs the pass's VAE encoder")
    module = preprocessors.find(unit.module)
    settings = module.settings(unit.processor_res, unit.threshold_a, unit.threshold_b)
    k = int(settings.a) * (2 if doubled else 1)
    sharp = settings.b * 0.01 if "+sharp" in module.name else None
    latent = encode(fitted[:, :3] * 2.0 - 1.0)
    return ColorFix(latent, k, sharp, min(max(float(unit.weight), 0.0), 1.0))


def _pooled(network: ControlNetwork) -> bool:
    """A ControlNet whose outputs are averaged over space: a diffusers config that says so, or, as the
    extension decides for original SD1/SD2 files, "shuffle" in the file name (its one name rule)."""
    if network.info.kind is not ControlKind.CONTROLNET:
        return False
    if bool(network.module.config.get("global_pool_conditions", False)):
        return True
    original = network.info.layout.startswith("cldm") and network.info.family in (Family.SD1, Family.SD2)
    return original and "shuffle" in network.path.stem.lower()


def _scales(unit: ControlUnit, network: ControlNetwork, soft: bool) -> tuple[float, ...]:
    if unit.advanced_weighting is not None:
        return unit.advanced_weighting
    w = float(unit.weight)
    if network.info.kind is ControlKind.T2I_ADAPTER:
        return tuple(w * s for s in _SOFT_ADAPTER) if soft else (w,) * 4
    if soft:
        return tuple(w * 0.825 ** float(12 - i) for i in range(13))
    return (w,) * 13


@dataclass
class ControlledUNet:
    """The UNet function of one pass of one batch with its units' residuals added (mutable: it follows
    the sampler's steps through :meth:`observe`). Called as the UNet: ``(x [B, 4, h, w], t [B], **cond)``
    with ``cond_mark`` (one bool per batch entry: True for the prompt's entries) among ``cond``."""

    unet: UNetFn
    units: Sequence[PassUnit]
    total: int
    alphas_cumprod: torch.Tensor | None = None  # ``[1000]``: the ᾱ a colour fix reads ε against
    sampling_step: int = 0
    _features: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def observe(self, step: int) -> None:
        """The sampler finished step ``step`` (0-based): A1111's ``state.sampling_step``."""
        self.sampling_step = step

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        marks: list[bool] = cond.pop("cond_mark")
        fraction = self.sampling_step / max(self.total, 1)
        active = [
            (i, u) for i, u in enumerate(self.units)
            if u.guides and u.unit.guidance_start <= fraction <= u.unit.guidance_end
        ]  # fmt: skip
        mark = torch.tensor(marks, device=x.device, dtype=x.dtype)[:, None, None, None]
        out = self._guided(active, mark, x, t, cond) if active else self.unet(x, t, **cond)
        for u in self.units:
            if u.colorfix is not None:
                out = _apply_color_fix(u.colorfix, x, t, out, mark, self._alphas())
        return out

    def _alphas(self) -> torch.Tensor:
        if self.alphas_cumprod is None:
            raise ValueError("a colour-fix unit needs the model's alphas_cumprod")
        return self.alphas_cumprod

    def _guided(
        self,
        active: Sequence[tuple[int, PassUnit]],
        mark: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, Any],
    ) -> torch.Tensor:
        """The UNet with the residuals of the ``active`` units (index, unit) added."""
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        adapter: list[torch.Tensor] | None = None
        for i, u in active:
            if u.network.info.kind is ControlKind.T2I_ADAPTER:
                outs = self._adapter_features(i, u)
                adapter = _add(adapter, _scaled(outs, u, mark))
                continue
            down_res, mid_res = u.network.module(
                x, t, encoder_hidden_states=cond["encoder_hidden_states"],
                controlnet_cond=u.hint.expand(x.shape[0], -1, -1, -1),
                added_cond_kwargs=cond.get("added_cond_kwargs"), return_dict=False,
            )  # fmt: skip
            scaled = _scaled([*down_res, mid_res], u, mark)
            down, mid = _add(down, scaled[:-1]), scaled[-1] if mid is None else mid + scaled[-1]
        extra: dict[str, Any] = {}
        if down is not None:
            extra.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if adapter is not None:
            extra["down_intrablock_additional_residuals"] = _aligned(adapter, x)
        return self.unet(x, t, **cond, **extra)

    def _adapter_features(self, index: int, unit: PassUnit) -> list[torch.Tensor]:
        """An adapter's features ``[1, C_k, h_k, w_k]``, computed once per pass."""
        if index not in self._features:
            self._features[index] = list(unit.network.module(unit.hint))
        return self._features[index]


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """A box mean over ``(2k+1)²`` with the edges replicated, size kept: ``[B, C, h, w]``."""
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    return F.avg_pool2d(padded, (2 * k + 1, 2 * k + 1), stride=(1, 1))


def _apply_color_fix(  # noqa: PLR0917 - one UNet call's state
    fix: ColorFix,
    x: torch.Tensor,
    t: torch.Tensor,
    out: torch.Tensor,
    mark: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """The UNet output ``out`` ``[B, 4, h, w]`` (read as ε) steered so that the predicted x0 has the hint
    latent's local mean: x0 = x0 − blur(x0) + blur(hint); with sharpening the negative prompt's entries
    (``mark`` 0) get ``d · blur(x0) + (1 − d) · x0`` instead. ``x``: the UNet input (x_t), ``t`` ``[B]``
    its timesteps (rounded, as the extension indexes ᾱ)."""
    xt = x[:, :4]
    index = torch.round(t.float()).long().clamp(0, alphas_cumprod.numel() - 1)
    alpha = alphas_cumprod.to(xt.device, torch.float64)[index][:, None, None, None]
    recip = (1.0 / alpha).sqrt().to(xt.dtype)
    recip_m1 = (1.0 / alpha - 1.0).sqrt().to(xt.dtype)
    x0 = recip * xt - recip_m1 * out
    x0 = x0 - _blur(x0, fix.k) + _blur(fix.latent.to(x0), fix.k)
    if fix.sharp is not None:
        softened = fix.sharp * _blur(x0, fix.k) + (1 - fix.sharp) * x0
        x0 = mark * x0 + (1 - mark) * softened
    eps = (recip * xt - x0) / recip_m1
    return eps * fix.weight + out * (1 - fix.weight)


def _scaled(outs: Sequence[torch.Tensor], unit: PassUnit, mark: torch.Tensor) -> list[torch.Tensor]:
    """Each output times its scale (and times the prompt mask with CFG injection)."""
    scaled = [o * s for o, s in zip(outs, unit.scales, strict=False)]
    if len(scaled) < len(outs):  # advanced weighting with fewer weights: the extension's zip drops the rest
        scaled += [torch.zeros_like(o) for o in outs[len(scaled) :]]
    if unit.cond_only:
        scaled = [o * mark for o in scaled]
    if unit.pooled:
        scaled = [o.mean(dim=(2, 3), keepdim=True) for o in scaled]
    return scaled


def _add(total: list[torch.Tensor] | None, more: list[torch.Tensor]) -> list[torch.Tensor]:
    return more if total is None else [a + b for a, b in zip(total, more, strict=True)]


def _aligned(features: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Adapter features at the UNet's block sizes, broadcast to the batch. A feature ``r`` times smaller
    than the latent belongs after the block at that scale, of size ``ceil(h / r)``; where the picture is
    not a multiple of 64 the adapter's pooling rounds down instead, and the feature is resized (nearest,
    the extension's ``aligned_adding``)."""
    out = []
    h, w = x.shape[-2:]
    for feature in features:
        r = max(1, round(h / feature.shape[-2]))
        size = (-(-h // r), -(-w // r))
        fitted = (
            feature
            if tuple(feature.shape[-2:]) == size
            else F.interpolate(feature, size=size, mode="nearest")
        )
        out.append(fitted.expand(x.shape[0], -1, -1, -1).contiguous())
    return out


def controlled(
    unet: UNetFn, units: Sequence[PassUnit], total: int, model_sigmas: torch.Tensor | None = None
) -> ControlledUNet | None:
    """The pass's controlled UNet, or None when no unit acts in it. ``model_sigmas`` ``[1000]``: the
    model's training σ (ᾱ = 1 / (1 + σ²)), which colour-fix units need."""
    if not units:
        return None
    alphas = None if model_sigmas is None else 1.0 / (1.0 + model_sigmas.double() ** 2)
    return ControlledUNet(unet, units, total, alphas)
