"""The trainable LoRA of ``train lora``: kohya's ``networks.lora`` as a ``ModuleDict`` keyed by kohya names.

Each adapter sits on one Linear or 1×1 Conv2d of the base model through a forward hook:
``y = W x + (α/r)·up(down(x))``, ``down`` Kaiming-uniform and ``up`` zero at the start (kohya's init, so
step 0 is the base model). Targets are kohya's: in the UNet every Linear and 1×1 conv inside a
``Transformer2DModel`` (attention q/k/v/out, feed-forward, proj_in/proj_out); in the text encoders the
attention projections and MLP layers. The ``ModuleDict`` keys are the module names kohya writes
(``lora_unet_down_blocks_0_attentions_0_proj_in``, LDM-style ``lora_unet_input_blocks_4_1_…`` for SDXL,
``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` for the text encoders), so the adapters' state dict *is* the
kohya file: ``<name>.lora_down.weight``, ``<name>.lora_up.weight``, ``<name>.alpha``.

A hand-written wrapper rather than peft: peft replaces modules (``base_layer``) and names tensors
``lora_A``/``lora_B``, while hooks leave the base model untouched for the generation pipeline and the
kohya export becomes the state dict itself.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import Transformer2DModel, UNet2DConditionModel
from safetensors.torch import save, save_file

from latentstudio.models.export import unet_key_to_ldm
from latentstudio.models.families import Family
from latentstudio.models.loader import Components

_TEXT_TARGET = re.compile(r"\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_TEXT_FIRST = ("text_model.", "text_projection")


class LoraModule(torch.nn.Module):
    """kohya's LoRA on one Linear or 1×1 Conv2d: ``forward(x) = (α/r)·up(down(x))`` (added to the base
    module's output by a hook)."""

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        down: torch.nn.Module
        up: torch.nn.Module
        if isinstance(base, torch.nn.Conv2d):
            down = torch.nn.Conv2d(base.in_channels, rank, 1, bias=False)
            up = torch.nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            assert isinstance(base, torch.nn.Linear)
            down = torch.nn.Linear(base.in_features, rank, bias=False)
            up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5), generator=generator)
        torch.nn.init.zeros_(up.weight)
        self.lora_down, self.lora_up = down, up
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = self.lora_down.weight
        out: torch.Tensor = self.lora_up(self.lora_down(x.to(weight.dtype))) * self.scale
        return out


def _is_target(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or (
        isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1)
    )


def _unet_targets(unet: UNet2DConditionModel, ldm_names: bool) -> dict[str, torch.nn.Module]:
    layers = int(unet.config["layers_per_block"])
    names = [n for n, _ in unet.named_modules()]
    attn_up = frozenset(
        int(n.split(".")[1]) for n in names if n.startswith("up_blocks.") and ".attentions." in n
    )
    targets: dict[str, torch.nn.Module] = {}
    for block_path, block in unet.named_modules():
        if not isinstance(block, Transformer2DModel):
            continue
        for sub, module in block.named_modules():
            if not sub or not _is_target(module):
                continue
            path = f"{block_path}.{sub}"
            if ldm_names:
                path = unet_key_to_ldm(path + ".weight", layers, attn_up).removesuffix(".weight")
            targets["lora_unet_" + path.replace(".", "_")] = module
    return targets


def lora_targets(components: Components, *, text: bool) -> dict[str, torch.nn.Module]:
    """kohya name → base module, for the UNet (and the text encoders when ``text``), in model order.

    Raises:
        ValueError: a family or variant LoRA training does not support (named).
    """
    info = components.info
    if info.family not in (Family.SD1, Family.SD2, Family.SDXL):
        raise ValueError(
            f"{components.path}: LoRA training supports SD1, SD2 and SDXL base models, not {info.label}"
        )
    if info.inpainting:
        raise ValueError(f"{components.path}: an inpainting checkpoint; train the LoRA on its base model")
    sdxl = info.family is Family.SDXL
    targets = _unet_targets(components.unet, ldm_names=sdxl)  # kohya's SDXL trainer writes LDM names
    if not text:
        return targets
    prefixes = (
        {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"} if sdxl else {"text_encoder": "lora_te_"}
    )
    for name, encoder in components.text_encoders.items():
        for path, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and _TEXT_TARGET.search(path):
                canonical = path if path.startswith(_TEXT_FIRST) else "text_model." + path
                targets[prefixes[name] + canonical.replace(".", "_")] = module
    return targets


class LoraNetwork:
    """The adapters (``modules``, a ``ModuleDict`` keyed by kohya names) hooked onto their base modules.

    ``enabled`` off makes the base model run as if there were no adapters (the sample images apply the
    exported file through the generation pipeline instead).
    """

    def __init__(self, targets: Mapping[str, torch.nn.Module], rank: int, alpha: float, seed: int) -> None:
        if rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {rank}")
        generator = torch.Generator().manual_seed(seed)
        self.modules = torch.nn.ModuleDict(
            {name: LoraModule(base, rank, alpha, generator) for name, base in targets.items()}
        )
        self.enabled = True
        self._handles = [
            base.register_forward_hook(self._hook(self.modules[name])) for name, base in targets.items()
        ]

    def _hook(self, adapter: torch.nn.Module) -> Any:
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> Any:
            return out + adapter(args[0]).to(out.dtype) if self.enabled else None

        return hook

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model alone for the ``with`` block."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def remove(self) -> None:
        """Detach the hooks from the base model for good."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def kohya_tensors(modules: torch.nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The adapters' state dict as a kohya file holds it (CPU, ``dtype``, contiguous)."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in modules.state_dict().items()}


def kohya_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """kohya's ``precalculate_safetensors_hashes``: the addnet sha256 (tensor data after the header) and the
    legacy 8-hex hash (64 KiB at 1 MiB) of the file serialised with its ``ss_*`` metadata only."""
    data = save(dict(tensors), metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    addnet = hashlib.sha256(data[8 + header :]).hexdigest()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return addnet, legacy


def write_kohya_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write a LoRA safetensors file atomically, with ``sshs_model_hash``/``sshs_legacy_hash`` added."""
    addnet, legacy = kohya_hashes(tensors, metadata)
    meta = {**metadata, "sshs_model_hash": addnet, "sshs_legacy_hash": legacy}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(dict(tensors), str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path
