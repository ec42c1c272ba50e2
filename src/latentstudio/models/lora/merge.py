"""Merging patches into weights without ever writing into the base weights.

For each patched parameter a new tensor ``W' = W + Σ m·ΔW`` is computed in fp32 and stored in the model's
dtype; applying swaps it in (``param.data = W'``) and removing swaps the untouched base tensor back, so the
base weights come back bit for bit and the merged set can be kept for the next job with the same LoRAs.
All plain LoRAs of one parameter are merged by a single ``addmm`` with their factors concatenated
(``W + [m₁s₁up₁ | m₂s₂up₂ | …] @ [down₁; down₂; …]``): one pass over the weight, whatever their number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentstudio.models.lora.deltas import F32, bias_delta, delta, lora_factors
from latentstudio.models.lora.formats import ModulePatch
from latentstudio.models.lora.keys import Target

_SAFE_UPDATE = 1e30
"""An update bounded by this cannot overflow an fp32 weight (max 3.4e38); NaN bounds compare False."""


@dataclass(frozen=True)
class Contribution:
    """One patch of one LoRA on one module, at strength ``multiplier``; ``owner`` numbers the LoRA."""

    target: Target
    patch: ModulePatch
    multiplier: float
    dyn: int | None
    owner: int


@dataclass(frozen=True, eq=False)
class Swap:
    """A parameter, its base tensor and the merged tensor that replaces it while the LoRAs are applied."""

    param: torch.nn.Parameter
    base: torch.Tensor
    merged: torch.Tensor

    def apply(self) -> None:
        """Make the parameter use the merged tensor."""
        self.param.data = self.merged

    def remove(self) -> bool:
        """Give the parameter its base tensor back; False (and nothing done) if something else replaced the
        merged tensor in the meantime (then the base tensor is not ours to restore)."""
        if self.param.data_ptr() != self.merged.data_ptr():
            return False
        self.param.data = self.base
        return True

    def current(self) -> bool:
        """Whether the parameter still holds the base tensor this merge was computed from."""
        return self.param.data_ptr() == self.base.data_ptr()


def _merge_weight(param: torch.nn.Parameter, group: Sequence[Contribution]) -> tuple[torch.Tensor, float]:
    """``W + Σ m·ΔW`` in fp32 (plain LoRAs in one ``addmm``), cast to the parameter's dtype, and a bound on
    ``|Σ m·ΔW|`` (for plain LoRAs from the factors alone: ``Σ_k max|U[:, k]|·max|D[k, :]|``)."""
    base = param.detach()
    base32 = base.to(F32)
    factors = [(c, lora_factors(c.patch, base32, c.dyn)) for c in group]
    plain = [(c, f) for c, f in factors if f is not None]
    bound = 0.0
    if plain:
        ups = torch.cat([f[0] * c.multiplier for c, f in plain], dim=1)
        downs = torch.cat([f[1] for _, f in plain], dim=0)
        bound = float((ups.abs().amax(dim=0) * downs.abs().amax(dim=1)).sum())
        acc = torch.addmm(base32.reshape(base.shape[0], -1), ups, downs).reshape(base.shape)
    else:
        acc = base.to(F32, copy=True)
    for c, f in factors:
        if f is None:
            diff = delta(c.patch, base32, c.dyn)
            bound += abs(c.multiplier) * float(diff.abs().amax())
            acc.add_(diff, alpha=c.multiplier)
    return acc.to(base.dtype), bound


def _merge_bias(param: torch.nn.Parameter, group: Sequence[Contribution]) -> tuple[torch.Tensor, float]:
    base = param.detach()
    acc = base.to(F32, copy=True)
    for c in group:
        diff = bias_delta(c.patch, base)
        if diff is not None:
            acc.add_(diff, alpha=c.multiplier)
    return acc.to(base.dtype), math.inf  # small: always checked


def merge(contributions: Sequence[Contribution]) -> tuple[list[Swap], set[int]]:
    """The swaps that apply ``contributions``, and the owners whose merge gave non-finite weights.

    When that set is not empty, the swaps are incomplete and must not be used: drop those owners and merge
    again. Raises torch's RuntimeError for inconsistent patch tensors (validate them first on ``meta``).
    """
    groups: dict[tuple[int, str], list[Contribution]] = {}
    for c in contributions:
        if c.multiplier == 0:
            continue
        groups.setdefault((id(c.target.module), "weight"), []).append(c)
        if "diff_b" in c.patch.tensors:
            groups.setdefault((id(c.target.module), "bias"), []).append(c)
    swaps: list[Swap] = []
    bad: set[int] = set()
    with torch.no_grad():
        for (_, attr), group in groups.items():
            param = getattr(group[0].target.module, attr)
            merged, bound = _merge_weight(param, group) if attr == "weight" else _merge_bias(param, group)
            # an fp32 weight plus an update bounded far below fp32's range stays finite: no pass needed
            certain = merged.dtype == F32 and bound < _SAFE_UPDATE
            if not certain and not bool(torch.isfinite(merged).all()):
                bad.update(c.owner for c in group)
                continue
            swaps.append(Swap(param, param.detach(), merged))
    return swaps, bad


def check_fits(contribution: Contribution) -> None:
    """Check on the ``meta`` device (no computation) that the patch's update fits its module.

    Raises:
        LoraFormatError: the update does not fit (shape named).
        RuntimeError: the patch's own tensors have inconsistent shapes.
    """
    module = contribution.target.module
    meta = ModulePatch(
        contribution.patch.key,
        contribution.patch.kind,
        {role: torch.empty(t.shape, device="meta") for role, t in contribution.patch.tensors.items()},
        contribution.patch.alpha,
        None if contribution.patch.dora_scale is None else contribution.patch.dora_scale.to("meta"),
    )
    weight = torch.empty(_shape(module, "weight"), device="meta")
    delta(meta, weight, contribution.dyn)
    bias = getattr(module, "bias", None)
    bias_delta(meta, None if bias is None else torch.empty(_shape(module, "bias"), device="meta"))


def _shape(module: torch.nn.Module, name: str) -> tuple[int, ...]:
    tensor = getattr(module, name)
    assert isinstance(tensor, torch.Tensor)
    return tuple(tensor.shape)
