"""LoRA files of every common trainer → one normalized list of module patches.

Key layouts read (each key is ``<module key><suffix>``; the module key is resolved later by
:class:`~latentstudio.models.lora.keys.ModuleIndex`):

- kohya LoRA / LoCon: ``.lora_up.weight`` ``[out, r(,1,1)]``, ``.lora_down.weight`` ``[r, in(,k,k)]``,
  optional ``.lora_mid.weight`` ``[r, r, k, k]`` (LoCon's Tucker core) and ``.alpha`` (a scalar);
- LyCORIS LoHa: ``.hada_w1_a`` ``[out, r]``, ``.hada_w1_b`` ``[r, in·k·k]``, ``.hada_w2_a``, ``.hada_w2_b``,
  optional Tucker cores ``.hada_t1``/``.hada_t2`` ``[r, r, k, k]`` (then ``w_a`` is ``[r, out]``, ``w_b``
  ``[r, in]``);
- LyCORIS LoKr: ``.lokr_w1`` or ``.lokr_w1_a``/``.lokr_w1_b``, ``.lokr_w2`` or ``.lokr_w2_a``/
  ``.lokr_w2_b``, optional ``.lokr_t2``;
- DoRA (kohya / LyCORIS): any of the above plus ``.dora_scale`` (``[1, in, …]`` or ``[out, 1, …]``);
- diffusers / PEFT: ``.lora_A.weight`` (down), ``.lora_B.weight`` (up), optional ``.alpha`` and DoRA's
  ``.lora_magnitude_vector`` ``[out]``; older diffusers ``.lora.down.weight``, ``.lora_linear_layer.down.
  weight`` and attention processors ``.processor.to_q_lora.down.weight``; a PEFT ``base_model.model.``
  prefix is dropped;
- full-weight differences: ``.diff`` (same shape as the weight) and ``.diff_b`` (bias); LyCORIS norm
  layers ``.w_norm``/``.b_norm`` read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch


class LoraFormatError(ValueError):
    """A LoRA file whose keys or values cannot be used; the message names the key."""


class PatchKind(StrEnum):
    """How a module patch builds its weight difference."""

    LORA = "lora"  # up @ down (LoRA, LoCon, diffusers/PEFT), optional Tucker core
    LOHA = "loha"  # (w1a @ w1b) ⊙ (w2a @ w2b)
    LOKR = "lokr"  # w1 ⊗ w2
    FULL = "full"  # the difference itself


@dataclass(frozen=True)
class ModulePatch:
    """The update one file makes to one module, before any strength is applied.

    ``key`` is the module key as the file spells it (normalized: suffix and PEFT prefix removed);
    ``tensors`` maps roles (``up``, ``down``, ``mid``, ``hada_w1_a``, …, ``diff``, ``diff_b``) to tensors
    as stored; ``alpha`` is the file's alpha (None: scale 1); ``dora_scale`` is the DoRA magnitude, if any.
    """

    key: str
    kind: PatchKind
    tensors: Mapping[str, torch.Tensor]
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None


@dataclass(frozen=True)
class LoraWeights:
    """A parsed LoRA file: its patches and the formats found (e.g. ``("lora",)`` or ``("loha", "full")``)."""

    patches: tuple[ModulePatch, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The patch kinds present, in a fixed order."""
        present = {p.kind for p in self.patches}
        return tuple(kind.value for kind in PatchKind if kind in present)


_ROLES: dict[str, str] = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    ".lora_B.weight": "up", ".lora_A.weight": "down",
    ".lora.up.weight": "up", ".lora.down.weight": "down",
    ".lora_linear_layer.up.weight": "up", ".lora_linear_layer.down.weight": "down",
    "_lora.up.weight": "up", "_lora.down.weight": "down",
    ".alpha": "alpha", ".dora_scale": "dora_scale",
    ".lora_magnitude_vector": "dora_scale", ".lora_magnitude_vector.weight": "dora_scale",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b", ".hada_w2_a": "hada_w2_a",
    ".hada_w2_b": "hada_w2_b", ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b", ".lokr_t2": "lokr_t2",
    ".diff": "diff", ".diff_b": "diff_b", ".w_norm": "diff", ".b_norm": "diff_b",
}  # fmt: skip
_SUFFIXES = sorted(_ROLES, key=len, reverse=True)  # longest first: ".lora_up.weight" before ".up.weight"
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")  # old diffusers attention processors


def split_key(key: str) -> tuple[str, str] | None:
    """``(module key, role)`` of one file key, or None for a key of no known format."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            module = key[: -len(suffix)].removeprefix("base_model.model.")
            module = _PROCESSOR.sub(
                lambda m: "." + m.group(1) + (".0" if m.group(1) == "to_out" else ""), module
            )
            return module, _ROLES[suffix]
    return None


def _kind(key: str, roles: Mapping[str, torch.Tensor]) -> PatchKind:
    """The patch kind a set of roles makes, or a clear error for an incomplete set."""
    if "up" in roles or "down" in roles:
        if "up" in roles and "down" in roles:
            return PatchKind.LORA
        raise LoraFormatError(f"{key}: has lora_{'up' if 'up' in roles else 'down'} without its pair")
    if any(r.startswith("hada_") for r in roles):
        needed = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        if all(r in roles for r in needed):
            return PatchKind.LOHA
        raise LoraFormatError(f"{key}: incomplete LoHa (needs {', '.join(needed)})")
    if any(r.startswith("lokr_") for r in roles):
        has_1 = "lokr_w1" in roles or ("lokr_w1_a" in roles and "lokr_w1_b" in roles)
        has_2 = "lokr_w2" in roles or ("lokr_w2_a" in roles and "lokr_w2_b" in roles)
        if has_1 and has_2:
            return PatchKind.LOKR
        raise LoraFormatError(
            f"{key}: incomplete LoKr (needs lokr_w1 or w1_a/w1_b, and lokr_w2 or w2_a/w2_b)"
        )
    if "diff" in roles or "diff_b" in roles:
        return PatchKind.FULL
    raise LoraFormatError(f"{key}: only {', '.join(sorted(roles))}, no weights")


def _alpha(key: str, value: torch.Tensor | None) -> float | None:
    if value is None:
        return None
    if value.numel() != 1:
        raise LoraFormatError(f"{key}.alpha: expected a scalar, got shape {tuple(value.shape)}")
    return float(value.float().item())


def parse_lora(tensors: Mapping[str, torch.Tensor]) -> LoraWeights:
    """Group a LoRA state dict into per-module patches (tensors in fp32), checking every value is finite.

    Raises:
        LoraFormatError: keys of no known format (up to 3 named), an incomplete module, a non-scalar
            alpha, a non-floating or non-finite tensor, or no patches at all.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for name, tensor in tensors.items():
        split = split_key(name)
        if split is None:
            unknown.append(name)
            continue
        if not tensor.is_floating_point():
            raise LoraFormatError(f"{name}: tensor of dtype {tensor.dtype}, expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            raise LoraFormatError(f"{name}: contains NaN or infinite values")
        groups.setdefault(split[0], {})[split[1]] = tensor.float()  # converted once, merged many times
    if unknown:
        shown = ", ".join(sorted(unknown)[:3])
        raise LoraFormatError(f"{len(unknown)} key(s) of no known LoRA format, e.g. {shown}")
    patches = []
    for key, roles in groups.items():
        kind = _kind(key, roles)
        alpha = _alpha(key, roles.pop("alpha", None))
        dora = roles.pop("dora_scale", None)
        patches.append(ModulePatch(key, kind, roles, alpha, dora))
    if not patches:
        raise LoraFormatError("no LoRA weights in the file")
    return LoraWeights(tuple(patches))
