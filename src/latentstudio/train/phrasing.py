"""``train shapes-phrasing``: teach the built-in model's text encoder the caption grammar, the UNet frozen.

A full fine-tune on grammar captions (batch 128, 600 steps) taught the new phrasings but lost the positions
the model had learnt (templates: position 95.8 % → 46.9 % on 96 prompts): positions only emerged at batch
512 in the original run, and a small batch moves the UNet away from them. So the UNet and VAE stay frozen
and only the text encoder learns, with two terms:

- the ordinary ε loss (min-SNR weighted) of the frozen UNet on pictures captioned by the grammar
  (:mod:`latentstudio.train.captions`; captions dropped with ``caption_dropout`` as in the original run);
- an anchor: the mean squared difference between the student's and the original text encoder's hidden
  states ``[77, D]`` for one of the five template captions of the same picture (or the empty caption, with
  ``caption_dropout``), so what the model already read right — and classifier-free guidance's empty
  prompt — is read as before (:data:`ANCHOR_WEIGHT`).

Distilling the frozen UNet's prediction for the matching template caption instead (its output as the
target) was tried and lost colour and position on the templates within 300 steps (the text's share of ε
is small and noisy at a random timestep). The frozen UNet is also why the built-in control model, trained
against it, stays valid.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path
from typing import cast

import numpy as np
import torch
from transformers import CLIPTextModel

from latentstudio.core import Prediction
from latentstudio.models.loader import Components, load_checkpoint
from latentstudio.samplers.schedules import model_sigmas_from_alphas
from latentstudio.train import architecture, shapes
from latentstudio.train.captions import TEMPLATES, grammar_caption
from latentstudio.train.config import ModelConfig
from latentstudio.train.loop import DataFn, MicroBatch
from latentstudio.train.objectives import noise_batch, weighted_mse
from latentstudio.train.tasks import MODEL_FILE, SAMPLE_PROMPTS, _grid, token_ids

ANCHOR_WEIGHT = 1.0


def caption_pair(seed: int, index: int, dropout: float) -> tuple[shapes.ShapeSpec, str, str]:
    """Sample ``index``: its spec, a grammar caption ("" with probability ``dropout``), and the anchor: one
    of the five template captions of the spec, or "" with probability ``dropout``."""
    rng = np.random.default_rng([seed, index, 1])
    spec = shapes.random_spec(rng)
    caption = "" if rng.random() < dropout else grammar_caption(spec, rng)
    anchor = "" if rng.random() < dropout else spec.caption(int(rng.integers(len(TEMPLATES))))
    return spec, caption, anchor


def phrasing_data(
    seed: int, resolution: int, dropout: float, first: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pictures ``[size, 3, R, R]`` in [-1, 1], the captions' and the anchors' token ids ``[size, 77]``."""
    pairs = [caption_pair(seed, i, dropout) for i in range(first, first + size)]
    images = shapes.to_tensor([shapes.render(spec, resolution) for spec, _, _ in pairs])
    return images, token_ids([c for _, c, _ in pairs]), token_ids([a for _, _, a in pairs])


class PhrasingTask:
    """The distillation above, from ``config.init`` (a single-file checkpoint of the built-in model's
    architecture); ``config``'s optimisation, EMA, data seed and min-SNR settings apply."""

    def __init__(self, config: ModelConfig) -> None:
        if not config.init:
            raise ValueError("init: the checkpoint whose text encoder learns (the built-in model)")
        torch.manual_seed(config.seed)
        self.config = config
        self.base: Components = load_checkpoint(Path(config.init), device=torch.device("cpu"),
                                                dtype=torch.float32)  # fmt: skip
        if self.base.info.prediction is not Prediction.EPSILON:
            raise ValueError(f"init: {config.init}: an ε-prediction checkpoint is expected")
        for module in (self.base.unet, self.base.vae, *self.base.text_encoders.values()):
            module.requires_grad_(False)
        self.teacher = self.base.text_encoders["text_encoder"]
        student = copy.deepcopy(self.teacher).requires_grad_(True)
        self.modules = torch.nn.ModuleDict({"text_encoder": student})
        self.sigmas = model_sigmas_from_alphas(self.base.alphas_cumprod)
        self.scale = float(self.base.vae.config.scaling_factor)
        self.data: DataFn | None = functools.partial(phrasing_data, config.data_seed, config.resolution,
                                                     config.caption_dropout)  # fmt: skip

    def loss(self, modules: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        assert self.data is not None
        images, ids, anchors = batch.data if batch.data is not None else self.data(batch.first, batch.size)
        device = next(modules.parameters()).device
        unet, vae = self.base.unet.to(device), self.base.vae.to(device)
        cast(torch.nn.Module, self.teacher).to(device)
        with torch.no_grad():
            latents = vae.encode(images.to(device)).latent_dist.mean * self.scale
            held = self.teacher(anchors.to(device)).last_hidden_state
        noised = noise_batch(latents, self.sigmas, Prediction.EPSILON, batch.generator,
                             min_snr_gamma=self.config.min_snr_gamma)  # fmt: skip
        student = cast(CLIPTextModel, modules["text_encoder"])  # type: ignore[index]
        prediction = unet(noised.x_in, noised.t,
                          encoder_hidden_states=student(ids.to(device)).last_hidden_state).sample  # fmt: skip
        drift: torch.Tensor = (student(anchors.to(device)).last_hidden_state - held).square().mean()
        return weighted_mse(prediction, noised) + ANCHOR_WEIGHT * drift

    def _components(self, modules: torch.nn.ModuleDict) -> Components:
        encoders = {"text_encoder": cast(CLIPTextModel, modules["text_encoder"])}
        return dataclasses.replace(self.base, text_encoders=encoders)

    def samples(self, modules: torch.nn.ModuleDict, path: Path) -> None:
        from latentstudio.train.eval_shapes import generate

        components = self._components(modules)
        images = [generate(components, prompt, seed) for seed in range(2) for prompt in SAMPLE_PROMPTS]
        path.parent.mkdir(parents=True, exist_ok=True)
        _grid(images, len(SAMPLE_PROMPTS)).save(path)

    def export(self, modules: torch.nn.ModuleDict, folder: Path) -> None:
        """``model.safetensors``: the frozen UNet and VAE with the trained text encoder, an SD1 single file
        (fp16) as ``train model`` writes it."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"latentstudio.train_config": json.dumps({"objective": "epsilon", "phrasing": "distilled"})}
        architecture.export_sd1(folder / MODEL_FILE, self.base.unet, self.base.vae,
                                cast(CLIPTextModel, modules["text_encoder"]), metadata=meta)  # fmt: skip
