"""Model wrappers: a UNet that predicts ε or v becomes ``model(x, sigma) -> denoised`` (k-diffusion's
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``), and classifier-free guidance on top of it.

The parameterisation lives here and nowhere else: c_skip, c_out, c_in and σ ↔ t. The same
:func:`scalings` give the training targets (latentstudio.train), so sampling and training share one
definition of the model's output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latentstudio.core import Conditioning, Prediction
from latentstudio.samplers.schedules import sigma_to_t

UNetFn = Callable[..., torch.Tensor]  # unet(x_in [B,C,H,W], t [B], **cond) -> ε or v [B,C,H,W]


class SamplingInterrupted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the denoiser when the job asked to stop (``skipped=False``: interrupt the job) or to skip
    the current batch (``skipped=True``); the pipeline keeps and decodes the last latent either way."""

    def __init__(self, *, skipped: bool = False) -> None:
        super().__init__("skipped" if skipped else "interrupted")
        self.skipped = skipped


def scalings(sigma: torch.Tensor, prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in)`` for σ of shape ``[B]`` (σ_data = 1, as for SD's latents).

    ε: denoised = x − σ·ε(x/√(σ²+1)).  v: denoised = x/(σ²+1) − σ/√(σ²+1) · v(x/√(σ²+1)).
    """
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    if prediction is Prediction.V:
        return 1.0 / (sigma**2 + 1.0), -sigma * c_in, c_in
    return torch.ones_like(sigma), -sigma, c_in


@dataclass(frozen=True)
class Denoiser:
    """``denoiser(x, sigma, **cond) -> denoised`` for a discrete-time ε- or v-prediction UNet.

    ``model_sigmas``: the training σ of each of the 1000 timesteps, ascending, shape ``[1000]``.
    ``quantize``: call the UNet at the nearest integer timestep (A1111 default off: fractional t).
    """

    unet: UNetFn
    model_sigmas: torch.Tensor
    prediction: Prediction
    dtype: torch.dtype = torch.float32  # the UNet's; inputs are cast to it, outputs back to the sampler's
    quantize: bool = False

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        """x: ``[B,C,H,W]``; sigma: ``[B]``; returns the denoised estimate ``[B,C,H,W]``."""
        c_skip, c_out, c_in = (s[:, None, None, None] for s in scalings(sigma, self.prediction))
        t = sigma_to_t(sigma, self.model_sigmas, quantize=self.quantize)
        out = self.unet((x * c_in).to(self.dtype), t.to(self.dtype), **cond).to(x.dtype)
        return x * c_skip + out * c_out

    @property
    def sigma_min(self) -> float:
        return float(self.model_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.model_sigmas[-1])


@dataclass(frozen=True)
class StepControl:
    """What a running job can ask of the sampler between steps (A1111's interrupt and skip).

    ``should_stop``: end the job after decoding the current batch's last latent.
    ``should_skip``: end the current batch the same way and go on with the next; it is asked once per
    step and must return True once per skip request (the job consumes its skip flag).
    """

    should_stop: Callable[[], bool] = lambda: False
    should_skip: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class ScheduledConditioning:
    """A prompt's conditioning over the sampling run (prompt editing / alternation):
    ``entries[i] = (end_at_step, conditioning)``, sorted by step."""

    entries: tuple[tuple[int, Conditioning], ...]

    @classmethod
    def constant(cls, conditioning: Conditioning) -> ScheduledConditioning:
        return cls(((1 << 30, conditioning),))

    def at(self, step: int) -> Conditioning:
        """A1111 ``reconstruct_cond_batch``: the first entry whose end step is ≥ ``step``."""
        for end, conditioning in self.entries:
            if step <= end:
                return conditioning
        return self.entries[-1][1]


@dataclass(frozen=True)
class Ngms:
    """A1111's "Negative Guidance minimum sigma" (``s_min_uncond``, infotext "NGMS"): below ``min_sigma`` the
    negative prompt's UNet pass is skipped on every odd model call of a pass, or on every call with
    ``all_steps`` (``s_min_uncond_all``). ``timesteps``: the sampler is one of A1111's timestep samplers
    (DDIM, PLMS, UniPC), whose denoiser is called with the model timestep t in place of σ, so A1111 compares
    t with ``min_sigma`` there."""

    min_sigma: float
    all_steps: bool = False
    timesteps: bool = False


def skips_uncond(step: int, sigma: torch.Tensor, ngms: Ngms | None, model_sigmas: torch.Tensor) -> bool:
    """Whether A1111's CFG denoiser (``sd_samplers_cfg_denoiser.py``) skips the negative prompt at model call
    ``step`` (0-based, every call of the pass counted, second-order ones too) at noise level ``sigma``
    ``[B]`` (its first entry decides): ``(step odd or all_steps) and level < min_sigma``, the level
    being σ, or for timestep samplers the timestep of σ (``model_sigmas``: ``[1000]``, ascending)."""
    if ngms is None or ngms.min_sigma <= 0 or not (step % 2 or ngms.all_steps):
        return False
    level = float(sigma.reshape(-1)[0])
    if ngms.timesteps:  # A1111's timesteps are integers; ours come back from σ with float error
        level = round(float(sigma_to_t(sigma.reshape(-1)[:1].double(), model_sigmas.double())), 4)
    return level < ngms.min_sigma


@dataclass(frozen=True)
class CFGDenoiser:
    """Classifier-free guidance with composable AND prompts (A1111 §5.3):
    ``denoised = uncond + Σ_i w_i · scale · (cond_i − uncond)``.

    ``conds``: ``(conditioning, weight)`` per AND-part; every conditioning has batch size B (or 1).
    Token lengths as A1111: AND-parts of different lengths are padded to the longest by repeating their
    last vector (``stack_conds``); when cond and uncond still differ, ``pad_last`` (A1111 "Pad conds v0")
    pads the shorter one the same way, ``pad_empty`` (the empty prompt's context ``[1, 77, D]``, A1111
    "Pad conds") appends empty-prompt chunks, and otherwise they run as two UNet calls (A1111's default).
    Equal lengths share one UNet batch. ``padded`` records, for the infotext, which padding happened and
    whether NGMS (``ngms``, :func:`skips_uncond`) skipped a negative pass ("NGMS"). On such a call the
    first AND-part's estimate stands in for the negative prompt's and the scale is 1 (A1111).

    The step that picks a scheduled conditioning counts model calls, as A1111's ``CFGDenoiser.step`` does
    (so a second-order sampler advances it twice per step); the counter lives in this per-job object, not
    in the sampler.

    ``mark_conds``: pass the UNet ``cond_mark``, one bool per batch entry of each call (True for a
    prompt's entries, False for the negative prompt's), as ControlNet's CFG injection needs.
    """

    denoiser: Denoiser
    conds: Sequence[tuple[ScheduledConditioning, float]]
    uncond: ScheduledConditioning
    scale: float
    control: StepControl = StepControl()
    pad_empty: torch.Tensor | None = None
    pad_last: bool = False
    blend: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # inpainting: init, keep, repaint
    padded: set[str] = field(default_factory=set)
    mark_conds: bool = False
    ngms: Ngms | None = None
    _calls: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x: ``[B,C,H,W]``, sigma: ``[B]`` → guided denoised ``[B,C,H,W]``."""
        if self.control.should_stop():
            raise SamplingInterrupted
        if self.control.should_skip():
            raise SamplingInterrupted(skipped=True)
        step = next(self._calls)
        batch = x.shape[0]
        parts = [c.at(step).repeat_to(batch) for c, _ in self.conds]
        length = max(p.context.shape[1] for p in parts)
        parts = [_pad(p, length, None) for p in parts]
        skip = skips_uncond(step, sigma, self.ngms, self.denoiser.model_sigmas)
        if skip:
            self.padded.add("NGMS")
        if self.scale == 1.0 and len(parts) == 1:
            return self._blend(self._run([parts[0]], x, sigma, [True])[0])
        uncond = self.uncond.at(step).repeat_to(batch)
        parts, uncond = self._pad_cond_uncond(parts, uncond)  # A1111 pads before it drops the negative
        if skip:
            outs = self._run(parts, x, sigma, [True] * len(parts))
            return self._blend(self._combine(outs[0], outs, 1.0))
        outs = self._run([*parts, uncond], x, sigma, [True] * len(parts) + [False])
        return self._blend(self._combine(outs[-1], outs[:-1], self.scale))

    def _combine(self, uncond: torch.Tensor, conds: list[torch.Tensor], scale: float) -> torch.Tensor:
        """``uncond + Σ_i w_i · scale · (cond_i − uncond)``, all ``[B,C,H,W]``."""
        result = uncond.clone()
        for (_, weight), cond in zip(self.conds, conds, strict=True):
            result += (cond - uncond) * (weight * scale)
        return result

    def _blend(self, denoised: torch.Tensor) -> torch.Tensor:
        """Inpainting (A1111): the kept area of every denoised estimate is the init latent's."""
        if self.blend is None:
            return denoised
        init, keep, repaint = self.blend
        return init * keep + repaint * denoised

    def _pad_cond_uncond(
        self, parts: list[Conditioning], uncond: Conditioning
    ) -> tuple[list[Conditioning], Conditioning]:
        """A1111's optional cond/uncond padding to one token length (``parts`` share one length)."""
        length, other = parts[0].context.shape[1], uncond.context.shape[1]
        if length == other or not (self.pad_last or self.pad_empty is not None):
            return parts, uncond
        longest = max(length, other)
        empty = None if self.pad_last else self.pad_empty
        self.padded.add("Pad conds v0" if self.pad_last else "Pad conds")
        return [_pad(p, longest, empty) for p in parts], _pad(uncond, longest, empty)

    def _run(
        self, conds: list[Conditioning], x: torch.Tensor, sigma: torch.Tensor, positive: list[bool]
    ) -> list[torch.Tensor]:
        """Denoise ``x`` under each conditioning (``positive``: which are prompts, not the negative
        prompt); runs of equal-length contexts share one UNet call."""
        batch, outs = x.shape[0], []
        marked = zip(conds, positive, strict=True)
        for _, group_iter in itertools.groupby(marked, key=lambda c: c[0].context.shape[1]):
            pairs = list(group_iter)
            group = [c for c, _ in pairs]
            context = torch.cat([c.context for c in group])
            extra = {k: torch.cat([c.extra[k] for c in group]) for k in group[0].extra}
            n = len(group)
            kwargs = _kw(context, extra)
            if self.mark_conds:
                kwargs["cond_mark"] = [flag for _, flag in pairs for _ in range(batch)]
            denoised = self.denoiser(x.repeat(n, 1, 1, 1), sigma.repeat(n), **kwargs)
            outs.extend(denoised.split(batch))
        return outs


def _pad(conditioning: Conditioning, length: int, empty: torch.Tensor | None) -> Conditioning:
    """``context [B, T, D]`` → ``[B, length, D]``: repeat the last vector (``empty`` None, A1111
    ``stack_conds``) or append copies of the empty prompt's ``[1, 77, D]`` (A1111 ``pad_cond``)."""
    context = conditioning.context
    missing = length - context.shape[1]
    if missing <= 0:
        return conditioning
    if empty is None:
        filler = context[:, -1:].expand(-1, missing, -1)
    else:
        filler = empty.to(context).repeat(context.shape[0], missing // empty.shape[1], 1)
    return Conditioning(torch.cat([context, filler], dim=1), conditioning.extra)


def _kw(context: torch.Tensor, extra: dict[str, torch.Tensor]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"encoder_hidden_states": context}
    if extra:
        kwargs["added_cond_kwargs"] = extra
    return kwargs
