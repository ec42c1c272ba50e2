"""Which module of a loaded model a LoRA key names.

LoRA files name modules in three ways; all three resolve to the same diffusers / transformers module:

- kohya flat names, diffusers-style (SD1/SD2 trainers): ``lora_unet_down_blocks_0_attentions_0_proj_in``,
  ``lora_te_text_model_encoder_layers_0_self_attn_q_proj``;
- kohya flat names, LDM-style (SDXL trainers, some LyCORIS files): ``lora_unet_input_blocks_4_1_
  transformer_blocks_0_attn1_to_q``, ``lora_unet_middle_block_1_proj_in``; the LDM names come from
  :func:`latentstudio.models.export.unet_key_to_ldm`, the same table that writes single-file checkpoints;
- dotted diffusers / PEFT paths: ``unet.down_blocks.0.attentions.0.proj_in``, ``text_encoder.text_model.
  encoder.layers.0.self_attn.q_proj``.

Text-encoder prefixes follow kohya: ``lora_te_`` for the single encoder of SD1/SD2, ``lora_te1_`` and
``lora_te2_`` for SDXL's CLIP-L and OpenCLIP-bigG (the refiner has only ``lora_te2_``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from latentstudio.models.export import unet_key_to_ldm
from latentstudio.models.loader import Components

UNET = "unet"
_TEXT_FIRST = ("text_model.", "text_projection")


@dataclass(frozen=True)
class Target:
    """One patchable module: ``component`` (``unet``, ``text_encoder``, ``text_encoder_2``), its path inside
    that component, and the module itself (its ``weight`` is 1-D, 2-D ``[out, in]`` or 4-D conv)."""

    component: str
    path: str
    module: torch.nn.Module

    @property
    def is_text(self) -> bool:
        """Whether the module belongs to a text encoder (the ``te`` multiplier applies)."""
        return self.component != UNET


def _patchable(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.nn.Parameter) and weight.is_floating_point() and weight.ndim in (1, 2, 4)


def _text_prefixes(names: set[str]) -> dict[str, str]:
    """kohya's flat prefix of each text encoder of this model."""
    if "text_encoder" in names and "text_encoder_2" in names:
        return {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    return {"text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


class ModuleIndex:
    """Every name a LoRA file may use for each patchable module of ``components``.

    Built once per loaded model (a few ms for SD1.5: ~1,000 modules); read-only afterwards.
    """

    def __init__(self, components: Components) -> None:
        self._targets: dict[str, Target] = {}
        self._add_unet(components.unet)
        prefixes = _text_prefixes(set(components.text_encoders))
        for name, encoder in components.text_encoders.items():
            for path, module in encoder.named_modules():
                if not _patchable(module):
                    continue
                target = Target(name, path, module)
                canonical = path if path.startswith(_TEXT_FIRST) else "text_model." + path
                self._targets[f"{name}.{canonical}"] = target
                self._targets[prefixes[name] + canonical.replace(".", "_")] = target

    def _add_unet(self, unet: UNet2DConditionModel) -> None:
        layers = int(unet.config["layers_per_block"])
        paths = [path for path, module in unet.named_modules() if _patchable(module)]
        attn_up = frozenset(
            int(p.split(".")[1]) for p in paths if p.startswith("up_blocks.") and ".attentions." in p
        )
        modules = dict(unet.named_modules())
        for path in paths:
            target = Target(UNET, path, modules[path])
            self._targets[f"{UNET}.{path}"] = target
            self._targets["lora_unet_" + path.replace(".", "_")] = target
            try:
                ldm = unet_key_to_ldm(path + ".weight", layers, attn_up).removesuffix(".weight")
            except (KeyError, IndexError, ValueError):  # a module outside the LDM layout has no LDM name
                continue
            self._targets.setdefault("lora_unet_" + ldm.replace(".", "_"), target)

    def find(self, key: str) -> Target | None:
        """The module ``key`` names (a kohya flat name or a dotted ``component.path``), or None."""
        return self._targets.get(key)

    def __len__(self) -> int:
        return len({id(t.module) for t in self._targets.values()})
