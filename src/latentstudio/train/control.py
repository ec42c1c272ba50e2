"""``train controlnet`` and ``train t2i-adapter``: a control network for a frozen SD1 / SD2 / SDXL checkpoint.

A :class:`latentstudio.train.loop.Task`, so the loop's accelerate setup (DDP, gradient accumulation, mixed
precision on a GPU), exact resume, EMA, samples and logs apply unchanged; the task's modules are only the
control network, so a checkpoint holds it and not the base model.

- **ControlNet** (Zhang et al. 2023): a trainable copy of the base UNet's encoder and middle block
  (diffusers' ``ControlNetModel.from_unet``, as the paper initialises it), a small hint encoder and zero
  convolutions, so training starts from the base model's own behaviour. Exported in lllyasviel's original
  cldm layout (``control_model.`` keys), which sd-webui-controlnet and our server load unchanged.
- **T2I-Adapter** (Mou et al. 2023): TencentARC's adapter trained from scratch (pixel unshuffle, a conv, two
  1×1 residual blocks per UNet level, average-pool downsampling), its features added to the UNet encoder's
  outputs. Exported in Tencent's layout (``body.<k>``; diffusers' ``FullAdapter`` / ``FullAdapterXL``).

The loss is the base model's own objective (ε or v, min-SNR optional) with the control network's outputs
added to the frozen UNet, as at inference (:mod:`latentstudio.pipeline.control`): hints in [0, 1] at the
picture's size, the UNet's input after ``c_in``. Captions are dropped (empty prompt) with probability
``caption_dropout`` (the ControlNet paper drops 50 %), so the network also learns to work from the hint alone.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel, T2IAdapter
from PIL import Image

from latentstudio.control.networks import BASE_FAMILY_KEY, load_control_network
from latentstudio.control.synthetic import controlnet_to_cldm
from latentstudio.control.units import ControlUnit
from latentstudio.models import arch
from latentstudio.models.families import Family
from latentstudio.models.hashes import legacy_hash
from latentstudio.models.loader import Components, load_checkpoint
from latentstudio.models.synthetic import write_checkpoint
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity, run
from latentstudio.samplers.schedules import model_sigmas_from_alphas
from latentstudio.train.config import ControlConfig, ControlNetworkKind
from latentstudio.train.control_data import ControlBatch, ControlSource, open_folder
from latentstudio.train.control_data import latents as encode_latents
from latentstudio.train.control_shapes import ShapesSource
from latentstudio.train.loop import DataFn, MicroBatch, effective_precision
from latentstudio.train.lora import text_condition
from latentstudio.train.objectives import noise_batch, weighted_mse

SAMPLES = 4  # sample pictures per grid
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# sd-webui-controlnet keys its T2I-Adapter configs by the adapter's conv_in width; ours follow Tencent's
_ADAPTER_FACTOR = {Family.SD1: 8, Family.SD2: 8, Family.SDXL: 16}
_CONTROLNET_META = ("act_fn", "attention_head_dim", "flip_sin_to_cos", "freq_shift", "norm_eps",
                    "norm_num_groups", "only_cross_attention", "resnet_time_scale_shift",
                    "upcast_attention")  # fmt: skip


def new_network(kind: ControlNetworkKind, components: Components, hint_channels: int) -> Any:
    """A fresh ControlNet (the base UNet's encoder copied, zero convolutions) or T2I-Adapter (random,
    one level per UNet level at its widths, 2 residual blocks a level as Tencent's) for ``components``'
    UNet, fp32 on the CPU."""
    unet = components.unet
    if kind == "controlnet":
        return ControlNetModel.from_unet(unet, conditioning_channels=hint_channels).float().cpu()
    family = components.info.family
    if family not in _ADAPTER_FACTOR:
        raise ValueError(f"no T2I-Adapter for a {family.value} checkpoint")
    sdxl = family is Family.SDXL
    return T2IAdapter(
        in_channels=hint_channels, channels=list(unet.config.block_out_channels),
        num_res_blocks=2, downscale_factor=_ADAPTER_FACTOR[family],
        adapter_type="full_adapter_xl" if sdxl else "full_adapter",
    )  # fmt: skip


def adapter_to_tencent(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``T2IAdapter`` (full, 2 res blocks a level) keys → TencentARC's ``Adapter`` keys: the
    inverse of :func:`latentstudio.control.layouts.to_diffusers` for ``tencent-full``."""
    out = {}
    for key, value in state.items():
        rest = key.removeprefix("adapter.")
        if rest.startswith("conv_in."):
            out[rest] = value
            continue
        _, level, name = rest.split(".", 2)  # body.<level>.(in_conv|resnets.<j>).<param>
        if name.startswith("in_conv."):
            out[f"body.{2 * int(level)}.{name}"] = value
        else:
            _, block, tail = name.split(".", 2)
            out[f"body.{2 * int(level) + int(block)}.{tail}"] = value
    return out


class ControlTask:
    """Control-network training on a frozen base model (see the module docstring)."""

    def __init__(self, config: ControlConfig) -> None:
        config.check()
        torch.manual_seed(config.seed)
        self.config = config
        self.started_at = time.time()
        self.dtype = _DTYPES.get(effective_precision(config.mixed_precision), torch.float32)
        self.components = load_checkpoint(Path(config.base), device=torch.device("cpu"), dtype=torch.float32)
        self.components.unet.requires_grad_(False)
        for encoder in self.components.text_encoders.values():
            encoder.requires_grad_(False)
        network = new_network(config.network, self.components, config.hint_channels)
        if config.gradient_checkpointing:
            self.components.unet.enable_gradient_checkpointing()
            if isinstance(network, ControlNetModel):
                network.enable_gradient_checkpointing()
        self.modules = torch.nn.ModuleDict({"network": network})
        self.source: ControlSource = (
            ShapesSource(config.seed, config.resolution, config.hint_channels)
            if config.data == "shapes"
            else open_folder(config)
        )
        self.data: DataFn | None = self.source.data
        self.sigmas = model_sigmas_from_alphas(self.components.alphas_cumprod)
        self.name = config.output_name or self.source.name
        self._placed: torch.device | None = None

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.source.warnings

    def _place(self, device: torch.device) -> Components:
        """Once: the frozen base model on ``device`` in the mixed-precision dtype (the VAE stays fp32)."""
        if self._placed != device:
            c = self.components
            c.vae.to(device)
            for module in (c.unet, *c.text_encoders.values()):
                module.to(device)
                if self.dtype != torch.float32:
                    module.to(self.dtype)
            self.components = dataclasses.replace(c, device=device, dtype=self.dtype)
            self._placed = device
        return self.components

    def loss(self, modules: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        device = next(modules.parameters()).device
        c = self._place(device)
        data: ControlBatch = (
            batch.data if batch.data is not None else self.source.data(batch.first, batch.size)
        )
        drop = torch.rand(len(data.captions), generator=batch.generator) < self.config.caption_dropout
        captions = ["" if d else caption for d, caption in zip(drop.tolist(), data.captions, strict=True)]
        with torch.no_grad():
            latents = encode_latents(c, data).to(device)
            context, extra = text_condition(c, captions, data.time_ids)
        noised = noise_batch(latents, self.sigmas, c.info.prediction, batch.generator,
                             min_snr_gamma=self.config.min_snr_gamma,
                             noise_offset=self.config.noise_offset)  # fmt: skip
        network = modules["network"]  # type: ignore[index]
        hint = data.hints.to(device)
        x, t, context = noised.x_in.to(self.dtype), noised.t, context.to(self.dtype)
        if isinstance(network, ControlNetModel):
            down, mid = network(x.float(), t, encoder_hidden_states=context.float(), controlnet_cond=hint,
                                added_cond_kwargs=_float(extra), return_dict=False)  # fmt: skip
            control = {"down_block_additional_residuals": [d.to(self.dtype) for d in down],
                       "mid_block_additional_residual": mid.to(self.dtype)}  # fmt: skip
        else:
            control = {"down_intrablock_additional_residuals": [f.to(self.dtype) for f in network(hint)]}
        out = c.unet(x, t, encoder_hidden_states=context, **extra, **control).sample
        return weighted_mse(out, noised)

    def metadata(self, steps: int) -> dict[str, str]:
        """The file's metadata: what it was trained from and how (all strings, JSON where structured)."""
        c, info = self.config, self.components.info
        base = Path(c.base)
        meta: dict[str, object] = {
            "latentstudio.kind": c.network,
            "latentstudio.base_model": base.name,
            "latentstudio.base_model_hash": legacy_hash(base) if base.is_file() else "",
            BASE_FAMILY_KEY: info.family.value,
            "latentstudio.preprocessor": c.preprocessor
            or ("(condition images)" if c.conditioning_data else ""),
            "latentstudio.steps": steps,
            "latentstudio.resolution": c.resolution,
            "latentstudio.training_started_at": self.started_at,
            "latentstudio.training_finished_at": time.time(),
            "latentstudio.train_config": json.dumps(dataclasses.asdict(c), sort_keys=True),
        }
        return {k: str(v) for k, v in meta.items()}

    def write(self, modules: torch.nn.Module, path: Path, steps: int) -> Path:
        """The network as an fp16 safetensors file in its original layout (cldm / Tencent) with metadata."""
        network = modules["network"]  # type: ignore[index]
        state = {k: v.detach().float().cpu() for k, v in network.state_dict().items()}
        meta = self.metadata(steps)
        if isinstance(network, ControlNetModel):
            state = controlnet_to_cldm(state, int(network.config.layers_per_block))
            fields = {k: network.config[k] for k in _CONTROLNET_META if k in network.config}
            meta[arch.ARCH_METADATA_KEY] = json.dumps({"controlnet": fields}, sort_keys=True)
        else:
            state = adapter_to_tencent(state)
        return write_checkpoint(path, state, dtype=torch.float16, metadata=meta)

    def export(self, modules: torch.nn.ModuleDict, folder: Path) -> None:
        """``<name>.safetensors`` in ``folder``."""
        self.write(modules, folder / f"{self.name}.safetensors", self.config.steps)

    def samples(self, modules: torch.nn.ModuleDict, path: Path) -> None:
        """A grid to ``path``: per sample (the data's first conditions), the condition and the picture
        generated with the file as it would be written, loaded through the inference path, as a unit of
        weight 1."""
        config, components = self.config, self.components
        batch = self.source.data(0, max(SAMPLES, config.batch_size))
        count = min(SAMPLES, len(batch.captions))
        prompts = list(config.sample_prompts or batch.captions[:count])
        size = config.resolution
        grid = Image.new("RGB", (2 * size, size * count))
        with tempfile.TemporaryDirectory() as tmp:
            file = self.write(modules, Path(tmp) / f"{self.name}.safetensors", 0)
            network = load_control_network(file, device=components.device, dtype=components.dtype,
                                           base_unet=components.unet)  # fmt: skip
            for i in range(count):
                pixels = (batch.hints[i].float().clamp(0, 1) * 255).round().byte().expand(3, -1, -1)
                condition = Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))
                unit = ControlUnit(module="none", model=file.stem, image=condition)
                params = GenerationParams(prompt=prompts[i % len(prompts)], steps=config.sample_steps,
                                          seed=config.seed + i, width=size, height=size,
                                          control=(unit,))  # fmt: skip
                result = run(params.resolved(), components, identity=ModelIdentity(Path(config.base).stem),
                             controls=[network])  # fmt: skip
                grid.paste(condition, (0, i * size))
                grid.paste(result.images[0].convert("RGB"), (size, i * size))
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)


def _float(extra: dict[str, Any]) -> dict[str, Any] | None:
    """SDXL's added conditioning in fp32 (the trainable network runs in fp32 under autocast)."""
    added = extra.get("added_cond_kwargs")
    return None if added is None else {k: v.float() for k, v in added.items()}
