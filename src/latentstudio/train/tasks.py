"""Training modes on the procedural shapes set: ``vae`` (AutoencoderKL) and ``model`` (UNet + CLIP text
encoder in the latent space of a trained VAE). Each is a :class:`latentstudio.train.loop.Task`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import cast

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from latentstudio.core import Prediction
from latentstudio.models.families import Family, FamilyInfo
from latentstudio.models.loader import Components, load_checkpoint
from latentstudio.models.tokenizer import OpenAICLIPTokenizer, clip_tokenizer
from latentstudio.samplers.schedules import model_sigmas_from_alphas, scaled_linear_alphas_cumprod
from latentstudio.train import architecture, shapes
from latentstudio.train.config import ModelConfig, VaeConfig
from latentstudio.train.loop import DataFn, MicroBatch
from latentstudio.train.objectives import noise_batch, weighted_mse

SAMPLE_PROMPTS = (
    "a red circle on a blue background",
    "small yellow triangle, top right, black background",
    "a large white star in the center on a purple background",
    "a green square on a orange background",
)
VAE_WEIGHTS, VAE_CONFIG, MODEL_FILE = "vae.safetensors", "vae_config.json", "model.safetensors"


def _grid(images: list[np.ndarray], columns: int) -> Image.Image:
    """uint8 ``[H, W, 3]`` images tiled row by row."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (w * columns, h * rows))
    for i, image in enumerate(images):
        grid.paste(Image.fromarray(image), ((i % columns) * w, (i // columns) * h))
    return grid


def _inner(modules: torch.nn.Module) -> torch.nn.ModuleDict:
    """The task's ModuleDict (the loop hands tasks their own modules, never the DDP wrapper)."""
    return cast(torch.nn.ModuleDict, modules)


def _vae(modules: torch.nn.Module) -> AutoencoderKL:
    return cast(AutoencoderKL, _inner(modules)["vae"])


def _unet(modules: torch.nn.Module) -> UNet2DConditionModel:
    return cast(UNet2DConditionModel, _inner(modules)["unet"])


def _text(modules: torch.nn.Module) -> CLIPTextModel:
    return cast(CLIPTextModel, _inner(modules)["text_encoder"])


def vae_data(seed: int, resolution: int, first: int, size: int) -> torch.Tensor:
    """Pictures ``first … first + size − 1`` of the shapes set: ``[size, 3, R, R]`` in [-1, 1]."""
    return shapes.batch(seed, first, size, resolution)[0]


@functools.cache
def _tokenizer() -> OpenAICLIPTokenizer:
    return clip_tokenizer("endoftext")


def token_ids(captions: list[str]) -> torch.Tensor:
    """Token ids ``[B, 77]`` (BOS, text, EOS, padded with EOS as SD1)."""
    out = _tokenizer()(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids: torch.Tensor = out.input_ids
    return ids


def model_data(
    seed: int, resolution: int, first: int, size: int, captions: str = "templates"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures ``[size, 3, R, R]`` in [-1, 1] and their captions' token ids ``[size, 77]`` (``captions``:
    the caption style of :func:`latentstudio.train.shapes.sample`)."""
    images, texts, _ = shapes.batch(seed, first, size, resolution, captions)
    return images, token_ids(texts)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``[B, 3, H, W]`` in [-1, 1] → uint8 ``[H, W, 3]`` arrays."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
    return list(array.cpu().numpy())


class VaeTask:
    """AutoencoderKL: L1 + L2 reconstruction of the posterior mean + ``kl_weight`` × KL, on freshly drawn
    shapes. Decoding the mean (not a sample) trains in a few hundred steps on a CPU; the pipeline and the
    model mode only ever use the mean, and the KL term keeps the latents bounded."""

    def __init__(self, config: VaeConfig) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.modules = torch.nn.ModuleDict(
            {"vae": AutoencoderKL.from_config(architecture.vae_architecture(config))}
        )
        self._data = functools.partial(vae_data, config.seed, config.resolution)
        self.data: DataFn | None = self._data

    def loss(self, modules: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        images = batch.data if batch.data is not None else self._data(batch.first, batch.size)
        vae = _vae(modules)
        images = images.to(next(vae.parameters()).device)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.mode()).sample
        kl: torch.Tensor = posterior.kl().mean() / images[0].numel()
        error: torch.Tensor = recon - images
        loss: torch.Tensor = error.abs().mean() + error.square().mean() + self.config.kl_weight * kl
        return loss

    def samples(self, modules: torch.nn.ModuleDict, path: Path) -> None:
        images, _, _ = shapes.batch(self.config.seed + 1, 0, 8, self.config.resolution)
        with torch.no_grad():
            recon = _vae(modules)(images).sample
        path.parent.mkdir(parents=True, exist_ok=True)
        _grid(to_uint8(images) + to_uint8(recon), 8).save(path)

    def export(self, modules: torch.nn.ModuleDict, folder: Path) -> None:
        """``vae.safetensors`` (diffusers keys) and ``vae_config.json`` with ``scaling_factor`` = 1/std of
        the latents of 256 held-out pictures (as SD's 0.18215)."""
        vae = _vae(modules)
        images, _, _ = shapes.batch(self.config.seed + 2, 0, 256, self.config.resolution)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean
        config = {**vae.config, "scaling_factor": round(1.0 / float(latents.std()), 5)}
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / VAE_WEIGHTS))
        (folder / VAE_CONFIG).write_text(json.dumps(architecture._clean(config), indent=2), encoding="utf-8")


def load_trained_vae(folder: Path) -> AutoencoderKL:
    """The VAE a ``train vae`` run exported (its ``final/`` folder), fp32, eval mode, frozen."""
    config = json.loads((folder / VAE_CONFIG).read_text(encoding="utf-8"))
    vae: AutoencoderKL = AutoencoderKL.from_config(config)
    vae.load_state_dict(load_file(str(folder / VAE_WEIGHTS)))
    return vae.eval().requires_grad_(False)


def _start_from(
    init: Components, unet: UNet2DConditionModel, text: CLIPTextModel, config: ModelConfig
) -> None:
    """Copy the UNet and text encoder weights of ``init`` into the freshly built modules; a ValueError
    naming the file if the architectures differ."""
    loaded_text = init.text_encoders["text_encoder"]
    loaded_config = loaded_text.config.to_dict()
    differ = [f"unet.{k}" for k, v in architecture._clean(dict(unet.config)).items()
              if init.unet.config.get(k) != v]  # fmt: skip
    differ += [f"text_encoder.{k}" for k, v in architecture.text_architecture(config).items()
               if k in loaded_config and loaded_config[k] != v]  # fmt: skip
    if not differ:
        try:
            unet.load_state_dict(init.unet.state_dict())
            text.load_state_dict(loaded_text.state_dict())
        except RuntimeError as e:
            differ = [str(e).splitlines()[0]]
    if differ:
        raise ValueError(f"init: {init.path}: its architecture differs from the config ({', '.join(differ)})")


class ModelTask:
    """Text-to-image from scratch (or from the ``init`` checkpoint: a fine-tune): ε- or v-prediction with
    the sampler's parameterisation, optional min-SNR weighting and noise offset; captions (fixed templates
    or the caption grammar) dropped with probability ``caption_dropout`` (for CFG)."""

    def __init__(self, config: ModelConfig) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        init = (
            load_checkpoint(Path(config.init), device=torch.device("cpu"), dtype=torch.float32)
            if config.init
            else None
        )
        if config.vae:
            self.vae = load_trained_vae(Path(config.vae))
        elif init is not None:  # a fine-tune stays in the latent space of its checkpoint's VAE
            self.vae = init.vae.eval().requires_grad_(False)
        else:
            raise ValueError("vae: required without init (the final/ folder of `train vae`)")
        self.scale = float(self.vae.config.scaling_factor)
        self.prediction = Prediction.V if config.objective == "v_prediction" else Prediction.EPSILON
        self.alphas = scaled_linear_alphas_cumprod()
        self.sigmas = model_sigmas_from_alphas(self.alphas)
        self.tokenizer = _tokenizer()  # the one token_ids uses
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        latent = (int(self.vae.config.latent_channels), config.resolution // factor)
        unet = UNet2DConditionModel.from_config(architecture.unet_architecture(config, *latent))
        text = architecture.build_text_encoder(architecture.text_architecture(config))
        if init is not None:
            _start_from(init, unet, text, config)
        text.requires_grad_(config.train_text_encoder)
        self.modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text})
        self._data = functools.partial(model_data, config.data_seed, config.resolution,
                                       captions=config.captions)  # fmt: skip
        self.data: DataFn | None = self._data
        self.empty_ids = token_ids([""])  # [1, 77]: a dropped caption

    def loss(self, modules: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        c = self.config
        images, ids = batch.data if batch.data is not None else self._data(batch.first, batch.size)
        drop = torch.rand(len(ids), generator=batch.generator) < c.caption_dropout
        ids = torch.where(drop[:, None], self.empty_ids, ids)
        device = next(modules.parameters()).device
        with torch.no_grad():
            latents = self.vae.to(device).encode(images.to(device)).latent_dist.mean * self.scale
        context = _text(modules)(ids.to(device)).last_hidden_state
        noised = noise_batch(latents, self.sigmas, self.prediction, batch.generator,
                             min_snr_gamma=c.min_snr_gamma, noise_offset=c.noise_offset)  # fmt: skip
        prediction = _unet(modules)(noised.x_in, noised.t, encoder_hidden_states=context).sample
        return weighted_mse(prediction, noised)

    def components(self, modules: torch.nn.ModuleDict, path: Path) -> Components:
        """The modules as generation :class:`Components` (fp32, on their device)."""
        device = next(modules.parameters()).device
        info = FamilyInfo(Family.SD1, self.prediction, False, self.config.resolution)
        return Components(
            path=path, info=info, unet=_unet(modules), vae=self.vae.to(device),
            text_encoders={"text_encoder": _text(modules)},
            tokenizers={"text_encoder": self.tokenizer}, alphas_cumprod=self.alphas,
            device=device, dtype=torch.float32,
        )  # fmt: skip

    def samples(self, modules: torch.nn.ModuleDict, path: Path) -> None:
        from latentstudio.train.eval_shapes import generate

        components = self.components(modules, path)
        images = [generate(components, prompt, seed) for seed in range(2) for prompt in SAMPLE_PROMPTS]
        path.parent.mkdir(parents=True, exist_ok=True)
        _grid(images, len(SAMPLE_PROMPTS)).save(path)

    def export(self, modules: torch.nn.ModuleDict, folder: Path) -> None:
        """``model.safetensors``: SD1 single-file checkpoint (fp16), the architecture in its metadata."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"latentstudio.train_config": json.dumps({"objective": self.config.objective})}
        if self.prediction is Prediction.V:
            meta["modelspec.prediction_type"] = "v"
        architecture.export_sd1(folder / MODEL_FILE, _unet(modules), self.vae, _text(modules),
                                metadata=meta)  # fmt: skip
