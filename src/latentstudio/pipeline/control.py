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

Each unit's map is detected once per job (:mod:`latentstudio.pipeline.control_input`). Colour-fix
(``tile_colorfix``), ``inpaint_only`` and other inpaint units also steer the prediction itself
(:mod:`latentstudio.pipeline.control_fix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from latentstudio.control import hint, preprocessors
from latentstudio.control.networks import ControlKind, ControlNetwork
from latentstudio.control.units import ControlMode, ControlUnit, HiresOption
from latentstudio.models.families import Family
from latentstudio.pipeline import control_fix as fix
from latentstudio.pipeline.control_input import Detected, detect_units, detected_maps
from latentstudio.samplers.wrappers import UNetFn

__all__ = ["Detected", "PassUnit", "controlled", "detect_units", "detected_maps", "pass_units"]

Stage = Literal["single", "low", "high"]
_SOFT_ADAPTER = (0.25, 0.62, 0.825, 1.0)
_HIRES_SOFT_MODULES = ("canny", "mlsd")  # the extension forces soft injection for these in the hires pass


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
    guides: bool = True  # whether its network acts in this pass (the steering below acts even where not)
    colorfix: fix.ColorFix | None = None
    restore: fix.Restore | None = None
    conditioning: torch.Tensor | None = None  # ``[1, 5, h, w]``: an inpainting checkpoint's extra input
    noise: torch.Tensor | None = None  # ``[1, 4, h, w]``: inpaint_only+lama's start (fix.ShiftedNoise)


def pass_units(
    detected: Sequence[Detected],
    size: tuple[int, int],
    stage: Stage,
    encode: fix.Encode | None = None,
    *,
    inpainting: bool = False,
) -> list[PassUnit]:
    """The units that act in a pass of ``size`` ``(height, width)`` with their hints fitted to it and
    their scales. ``stage``: "single" (no hires fix: every unit acts, whatever its ``hr_option``), "low"
    or "high" (the hires fix's first and second pass). ``encode``: the pass's VAE encoder (images
    ``[B, 3, H, W]`` in [-1, 1] → latents), which colour-fix and inpaint units need; ``inpainting``: the
    pass's checkpoint is an inpainting one (9 input channels)."""
    out = []
    hires = stage == "high"
    for d in detected:
        unit, net = d.unit, d.network
        option = unit.hr_option if stage != "single" else HiresOption.BOTH
        skipped = (option is HiresOption.LOW_RES_ONLY and hires) or (
            option is HiresOption.HIGH_RES_ONLY and stage == "low"
        )
        name = preprocessors.find(unit.module).name
        masked = d.detected.ndim == 3 and d.detected.shape[2] == 4
        steers = unit.weight > 0 and ("colorfix" in name or "inpaint_only" in name or (masked and inpainting))
        guides = not skipped and (unit.weight != 0 or unit.advanced_weighting is not None)
        if not guides and not steers:
            continue
        fitted = hint.to_tensor(hint.fit(d.detected, d.resize, size[0], size[1]))
        steering = _steering(unit, name, fitted, (hires, skipped), encode, inpainting) if steers else {}
        if masked:
            fitted = fix.masked_hint(fitted)
        if net.info.kind is ControlKind.T2I_ADAPTER and net.info.hint_channels == 1:
            fitted = fitted[:, :1]
        param = next(net.module.parameters())
        soft = unit.control_mode is not ControlMode.BALANCED or (
            hires and any(soft_module in unit.module for soft_module in _HIRES_SOFT_MODULES)
        )
        pooled = _pooled(net)
        out.append(PassUnit(unit, net, fitted.to(param.device, param.dtype), _scales(unit, net, soft),
                            unit.control_mode is ControlMode.CONTROL or pooled, pooled, guides,
                            **steering))  # fmt: skip
    return out


def _steering(  # noqa: PLR0917 - a unit's state in one pass
    unit: ControlUnit,
    name: str,
    fitted: torch.Tensor,
    pass_state: tuple[bool, bool],
    encode: fix.Encode | None,
    inpainting: bool,
) -> dict[str, Any]:
    """The :class:`PassUnit` fields of a unit that steers the prediction (see :mod:`control_fix`), from its
    map fitted to the pass ``[1, C, H, W]`` in [0, 1]; ``pass_state``: (the hires pass, the unit is off in
    it by its ``hr_option``)."""
    hires, skipped = pass_state
    if encode is None:
        raise ValueError(f"a {name} unit needs the pass's VAE encoder")
    if "colorfix" in name:
        settings = preprocessors.find(name).settings(unit.processor_res, unit.threshold_a, unit.threshold_b)
        k = int(settings.a) * (2 if hires and not skipped else 1)
        sharp = settings.b * 0.01 if "+sharp" in name else None
        return {"colorfix": fix.color_fix(fitted, k, sharp, unit.weight, encode)}
    out: dict[str, Any] = {}
    if "inpaint_only" in name:
        out["restore"] = fix.restore(fitted, unit.weight, encode)
        if "+lama" in name and not hires:
            out["noise"] = out["restore"].latent
    if inpainting and fitted.shape[1] == 4:
        out["conditioning"] = fix.image_conditioning(fitted, encode)
    return out


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
    alphas_cumprod: torch.Tensor | None = None  # ``[1000]``: the ᾱ a colour fix (restore) reads ε by
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
        conditioning = [u.conditioning for u in self.units if u.conditioning is not None]
        if conditioning:  # the last inpaint unit's, as the extension replaces x_t's extra channels in turn
            cond["image_conditioning"] = conditioning[-1]
        out = self._guided(active, mark, x, t, cond) if active else self.unet(x, t, **cond)
        for u in self.units:
            if u.colorfix is not None:
                out = fix.apply_color_fix(u.colorfix, x, t, out, mark, self._alphas())
        for u in self.units:
            if u.restore is not None:
                out = fix.apply_restore(u.restore, x, t, out, self._alphas())
        return out

    def _alphas(self) -> torch.Tensor:
        if self.alphas_cumprod is None:
            raise ValueError("colour-fix and inpaint_only units need the model's alphas_cumprod")
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
    model's training σ (ᾱ = 1 / (1 + σ²)), which colour-fix and inpaint_only units need."""
    if not units:
        return None
    alphas = None if model_sigmas is None else 1.0 / (1.0 + model_sigmas.double() ** 2)
    return ControlledUNet(unet, units, total, alphas)
