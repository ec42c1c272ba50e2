"""Value types that ``models``, ``samplers`` and ``prompts`` share, below all three (DESIGN "Imports flow one
way"): what a UNet predicts, a prompt's text conditioning, and :class:`FieldError`, the one refusal of an
input that every layer raises and every edge (HTTP 422, the CLI's error line, the UI's message box) shows.
Nothing else lives here; it imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch


class FieldError(ValueError):
    """A refused input: ``field`` names it (the name the caller used; dotted for a nested field), ``message``
    says why and what is allowed. ``str()`` is ``"field: message"``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)  # both in args: the error pickles and copies as itself
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Prediction(StrEnum):
    """What the UNet predicts (diffusers ``prediction_type`` names)."""

    EPSILON = "epsilon"
    V = "v_prediction"


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of one prompt for a batch: ``context [B,T,D]`` plus SDXL's extras."""

    context: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. text_embeds, time_ids (SDXL)

    def repeat_to(self, batch: int) -> Conditioning:
        """The same conditioning for ``batch`` images (a batch of 1 is broadcast)."""
        if self.context.shape[0] == batch:
            return self
        return Conditioning(
            self.context.expand(batch, -1, -1),
            {k: v.expand(batch, *v.shape[1:]) for k, v in self.extra.items()},
        )
