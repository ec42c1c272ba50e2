"""The weight difference each patch kind makes: ``W' = W + m·ΔW``, computed in fp32.

The formulas are those of the trainers' own merge code (kohya sd-scripts, LyCORIS, PEFT) and of A1111's
Lora extension, with ``s = α/r`` (1 when the file has no alpha):

- LoRA / LoCon: ``ΔW = s · up @ down`` (flattened to 2-D, reshaped to the weight); with a Tucker core
  ``ΔW[i,j,k,l] = s · Σ mid[n,m,k,l]·up[i,n]·down[m,j]``; ``dyn`` keeps the first ``dyn`` ranks (s
  unchanged);
- LoHa: ``ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b)``, r = rows of ``w1b``; with Tucker cores each factor is
  ``w[p, q, …] = Σ t[i, j, …]·wa[i, p]·wb[j, q]``;
- LoKr: ``ΔW = s · w1 ⊗ w2`` (Kronecker product), r = rows of the decomposed factor's ``b`` (s = 1 when
  neither factor is decomposed);
- full: ``ΔW = diff`` and ``Δb = diff_b``;
- DoRA (any of the above with a magnitude): ``V = W + s·ΔW``, ``W_dora = magnitude · V / ‖V‖`` with the norm
  over each output row (PEFT ``lora_magnitude_vector [out]``, LyCORIS ``[out, 1, …]``) or each input column
  (kohya / LyCORIS ``dora_scale [1, in, …]``), and ``ΔW = W_dora − W``. The strength multiplies this whole
  difference, as in A1111 (so strength 0 is exactly the base model).

Every function also runs on the ``meta`` device, which checks shapes without computing anything.
"""

from __future__ import annotations

import torch

from latentstudio.models.lora.formats import LoraFormatError, ModulePatch, PatchKind

F32 = torch.float32


def _get(patch: ModulePatch, role: str, like: torch.Tensor) -> torch.Tensor:
    return patch.tensors[role].to(device=like.device, dtype=F32)


def _scale(alpha: float | None, rank: int | None) -> float:
    return 1.0 if alpha is None or rank is None or rank == 0 else alpha / rank


def _tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' Tucker rebuild: ``out[p, q, k, l] = Σ core[i, j, k, l] · wa[i, p] · wb[j, q]``."""
    return torch.einsum("i j k l, i p, j q -> p q k l", core, wa.flatten(1), wb.flatten(1))


def _factors(patch: ModulePatch, like: torch.Tensor, dyn: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s·up [out, r'], down [r', inner])`` of a LoRA without Tucker core, ``r' = min(r, dyn)``."""
    up, down = _get(patch, "up", like).flatten(1), _get(patch, "down", like).flatten(1)
    rank = down.shape[0]
    if dyn is not None and 0 < dyn < rank:
        up, down = up[:, :dyn], down[:dyn]
    return up * _scale(patch.alpha, rank), down


def lora_factors(
    patch: ModulePatch, like: torch.Tensor, dyn: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(s·up [out, r'], down [r', inner])`` of a plain LoRA (no Tucker core, no DoRA) so that
    ``ΔW = up @ down``, fp32 on ``like``'s device; None for any other patch."""
    if patch.kind is not PatchKind.LORA or "mid" in patch.tensors or patch.dora_scale is not None:
        return None
    return _factors(patch, like, dyn)


def _scaled(patch: ModulePatch, like: torch.Tensor, dyn: int | None) -> torch.Tensor:
    """``s·ΔW`` of one patch before reshaping (any shape holding the right number of values)."""
    get = lambda role: _get(patch, role, like)  # noqa: E731 - a local shorthand
    has = patch.tensors.__contains__
    if patch.kind is PatchKind.LORA:
        if not has("mid"):
            up, down = _factors(patch, like, dyn)
            return up @ down
        core = _tucker(get("mid"), get("up").flatten(1).t(), get("down"))
        return core * _scale(patch.alpha, get("down").shape[0])
    if patch.kind is PatchKind.LOHA:
        w1 = _tucker(get("hada_t1"), get("hada_w1_a"), get("hada_w1_b")) if has("hada_t1") else None
        w2 = _tucker(get("hada_t2"), get("hada_w2_a"), get("hada_w2_b")) if has("hada_t2") else None
        w1 = get("hada_w1_a") @ get("hada_w1_b").flatten(1) if w1 is None else w1
        w2 = get("hada_w2_a") @ get("hada_w2_b").flatten(1) if w2 is None else w2
        return w1 * w2 * _scale(patch.alpha, get("hada_w1_b").shape[0])
    if patch.kind is PatchKind.LOKR:
        return _kron(patch, like)
    return get("diff")


def _kron(patch: ModulePatch, like: torch.Tensor) -> torch.Tensor:
    """``s · w1 ⊗ w2``; a 2-D ``w1`` with a conv ``w2`` gets two unit dims so the kernel stays last."""
    get = lambda role: _get(patch, role, like)  # noqa: E731 - a local shorthand
    has = patch.tensors.__contains__
    rank: int | None = None
    if has("lokr_w1"):
        w1 = get("lokr_w1")
    else:
        w1, rank = get("lokr_w1_a") @ get("lokr_w1_b"), get("lokr_w1_b").shape[0]
    if has("lokr_w2"):
        w2 = get("lokr_w2")
    elif has("lokr_t2"):
        w2, rank = _tucker(get("lokr_t2"), get("lokr_w2_a"), get("lokr_w2_b")), get("lokr_w2_b").shape[0]
    else:
        w2, rank = get("lokr_w2_a") @ get("lokr_w2_b").flatten(1), get("lokr_w2_b").shape[0]
    if w2.ndim == 4 and w1.ndim == 2:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2) * _scale(patch.alpha, rank)


def _fit(key: str, diff: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``diff`` reshaped to the weight (a Linear update fits a 1×1 conv), or an error naming both shapes."""
    if diff.numel() != weight.numel() or (diff.ndim and diff.shape[0] != weight.shape[0]):
        raise LoraFormatError(
            f"{key}: update of shape {tuple(diff.shape)} does not fit the weight {tuple(weight.shape)}"
        )
    return diff.reshape(weight.shape)


def _dora(key: str, weight: torch.Tensor, scaled: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """``magnitude · V / ‖V‖ − W`` with ``V = W + scaled``, normed along the axis the magnitude names."""
    if weight.ndim < 2:
        raise LoraFormatError(f"{key}: DoRA on a 1-D weight")
    out, inner = weight.shape[0], weight.shape[1]
    ones = [1] * (weight.ndim - 2)
    merged = weight + scaled
    if (magnitude.ndim == 1 and magnitude.numel() == out) or (
        magnitude.ndim > 1 and magnitude.shape[0] == out and magnitude[0].numel() == 1
    ):
        norm = merged.flatten(1).norm(dim=1).reshape(out, 1, *ones)
    elif magnitude.ndim > 1 and magnitude.shape[0] == 1 and magnitude.shape[1] == inner == magnitude.numel():
        norm = merged.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, inner, *ones)
    else:
        raise LoraFormatError(
            f"{key}: DoRA magnitude of shape {tuple(magnitude.shape)} fits neither axis of the weight "
            f"{tuple(weight.shape)}"
        )
    out_weight: torch.Tensor = merged * (magnitude.reshape(norm.shape) / norm) - weight
    return out_weight


def delta(patch: ModulePatch, weight: torch.Tensor, dyn: int | None = None) -> torch.Tensor:
    """The patch's ``ΔW`` at strength 1 (scale and DoRA included), fp32, shaped like ``weight``.

    ``weight`` is the module's base weight in fp32 (``[out, in]``, ``[out, in, k, k]`` or ``[n]``) on the
    target device; only DoRA reads its values. A patch with only a bias (``diff_b``) gives zeros.

    Raises:
        LoraFormatError: the update does not fit the weight, or a DoRA magnitude fits neither axis.
        RuntimeError: the patch's own tensors are inconsistent (torch's shape error).
    """
    if patch.kind is PatchKind.FULL and "diff" not in patch.tensors:
        return torch.zeros_like(weight, dtype=F32)
    diff = _fit(patch.key, _scaled(patch, weight, dyn), weight)
    if patch.dora_scale is None:
        return diff
    magnitude = patch.dora_scale.to(device=weight.device, dtype=F32)
    return _dora(patch.key, weight.to(F32), diff, magnitude)


def bias_delta(patch: ModulePatch, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``Δb`` (fp32, shaped like ``bias``) of a full patch with ``diff_b``; None when there is none.

    Raises:
        LoraFormatError: the module has no bias or the difference does not fit it.
    """
    if "diff_b" not in patch.tensors:
        return None
    if bias is None:
        raise LoraFormatError(f"{patch.key}: a bias difference for a module without bias")
    return _fit(patch.key + " (bias)", _get(patch, "diff_b", bias), bias)
