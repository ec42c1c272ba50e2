"""LoRA and LyCORIS networks: discovery (:mod:`.library`), file formats → module patches (:mod:`.formats`),
model key names (:mod:`.keys`), the update math (:mod:`.deltas`), merging (:mod:`.merge`) and the per-job
apply/remove (:mod:`.networks`)."""

from latentstudio.models.lora.formats import LoraFormatError, LoraWeights, ModulePatch, PatchKind, parse_lora
from latentstudio.models.lora.library import LoraDescription, LoraInfo, LoraLibrary
from latentstudio.models.lora.networks import Activation, AppliedLora, LoraNetworks, LoraRequest

__all__ = [
    "Activation",
    "AppliedLora",
    "LoraDescription",
    "LoraFormatError",
    "LoraInfo",
    "LoraLibrary",
    "LoraNetworks",
    "LoraRequest",
    "LoraWeights",
    "ModulePatch",
    "PatchKind",
    "parse_lora",
]
