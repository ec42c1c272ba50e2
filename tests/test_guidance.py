"""Classifier-free guidance: the AND formula, scheduled conditionings and A1111's token-length padding.

The UNet here is a small deterministic function of (x, t, context) that records what it was called with;
the guidance arithmetic and the padding are what is under test.
"""

from __future__ import annotations

import torch

from latentstudio.core import Conditioning, Prediction
from latentstudio.samplers.wrappers import CFGDenoiser, Denoiser, ScheduledConditioning

D = 4


class RecordingUNet:
    """ε(x, t, context) = x · mean(context) + t/1000 — depends on every context vector."""

    def __init__(self) -> None:
        self.contexts: list[torch.Tensor] = []

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, *, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        self.contexts.append(encoder_hidden_states.clone())
        scale = encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]
        return x * scale + t[:, None, None, None] / 1000


def _cond(length: int, seed: int) -> ScheduledConditioning:
    context = torch.randn((1, length, D), generator=torch.Generator().manual_seed(seed))
    return ScheduledConditioning.constant(Conditioning(context))


def _guided(
    unet: RecordingUNet, conds: list[tuple[ScheduledConditioning, float]], **kw: object
) -> CFGDenoiser:
    denoiser = Denoiser(unet, torch.linspace(0.03, 14.6, 1000), Prediction.EPSILON)
    return CFGDenoiser(denoiser, conds, _cond(77, 9), 7.0, **kw)  # type: ignore[arg-type]


X = torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(1))
SIGMA = torch.tensor([2.0, 2.0])


def test_guidance_formula_with_and_weights() -> None:
    unet = RecordingUNet()
    a, b = _cond(77, 1), _cond(77, 2)
    out = _guided(unet, [(a, 1.0), (b, 0.5)])(X, SIGMA)
    assert len(unet.contexts) == 1
    assert unet.contexts[0].shape == (6, 77, D)
    single = RecordingUNet()
    den = Denoiser(single, torch.linspace(0.03, 14.6, 1000), Prediction.EPSILON)
    ca, cb, cu = (
        den(X, SIGMA, encoder_hidden_states=c.at(0).context.expand(2, -1, -1)) for c in (a, b, _cond(77, 9))
    )
    assert torch.allclose(out, cu + 7.0 * (1.0 * (ca - cu) + 0.5 * (cb - cu)), atol=1e-5)


def test_and_parts_of_different_lengths_repeat_their_last_vector() -> None:
    unet = RecordingUNet()
    short, long = _cond(77, 1), _cond(154, 2)
    guided = _guided(unet, [(short, 1.0), (long, 1.0)])
    guided(X, SIGMA)
    cond_call, uncond_call = unet.contexts  # A1111 default: cond and uncond lengths differ → two calls
    assert cond_call.shape == (4, 154, D)
    assert uncond_call.shape == (2, 77, D)
    padded = cond_call[0]
    assert torch.equal(padded[:77], short.at(0).context[0])
    assert torch.equal(padded[77:], short.at(0).context[0, -1:].expand(77, -1))
    assert torch.equal(cond_call[2], long.at(0).context[0])
    assert guided.padded == set()


def test_pad_conds_appends_empty_prompt_chunks_and_is_recorded() -> None:
    unet = RecordingUNet()
    long = _cond(231, 2)
    empty = torch.full((1, 77, D), 0.25)
    guided = _guided(unet, [(long, 1.0)], pad_empty=empty)
    guided(X, SIGMA)
    (call,) = unet.contexts  # one batch now
    assert call.shape == (4, 231, D)
    uncond = call[2]
    assert torch.equal(uncond[:77], _cond(77, 9).at(0).context[0])
    assert torch.equal(uncond[77:], torch.full((154, D), 0.25))
    assert guided.padded == {"Pad conds"}


def test_pad_conds_v0_repeats_the_last_vector_of_the_shorter() -> None:
    unet = RecordingUNet()
    guided = _guided(unet, [(_cond(154, 2), 1.0)], pad_last=True)
    guided(X, SIGMA)
    (call,) = unet.contexts
    uncond = _cond(77, 9).at(0).context[0]
    assert torch.equal(call[2, 77:], uncond[-1:].expand(77, -1))
    assert guided.padded == {"Pad conds v0"}


def test_scheduled_conditioning_switches_by_model_call() -> None:
    unet = RecordingUNet()
    first, second = Conditioning(torch.zeros((1, 77, D))), Conditioning(torch.ones((1, 77, D)))
    guided = _guided(unet, [(ScheduledConditioning(((1, first), (10, second))), 1.0)])
    for _ in range(3):
        guided(X, SIGMA)
    assert [float(c[0].mean()) for c in unet.contexts] == [0.0, 0.0, 1.0]  # steps 0 and 1, then 2
