"""Shared fixtures: tiny real-layout checkpoints built at test time (no binary fixtures in git)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from latentstudio.models import synthetic
from latentstudio.models.families import Family
from latentstudio.models.synthetic import ModelSpec


@dataclass(frozen=True)
class TinyModel:
    """A tiny checkpoint on disk and the diffusers/transformers modules it was exported from."""

    path: Path
    spec: ModelSpec
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: dict[str, torch.nn.Module]
    state: dict[str, torch.Tensor]


MakeTiny = Callable[..., TinyModel]


@pytest.fixture(scope="session")
def make_tiny(tmp_path_factory: pytest.TempPathFactory) -> MakeTiny:
    """Build (and cache per arguments) a tiny checkpoint of a family in the original key layout."""
    cache: dict[tuple[object, ...], TinyModel] = {}

    def make(
        family: Family = Family.SD1,
        *,
        inpainting: bool = False,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        metadata: dict[str, str] | None = None,
    ) -> TinyModel:
        key = (family, inpainting, seed, dtype, tuple(sorted((metadata or {}).items())))
        if key not in cache:
            spec = synthetic.tiny_spec(family, inpainting=inpainting)
            unet, vae, encoders = synthetic.build_components(spec, seed)
            state = synthetic.single_file_state(family, unet, vae, encoders)
            name = f"{family.value}{'-inpainting' if inpainting else ''}-{seed}-{len(cache)}.safetensors"
            path = tmp_path_factory.mktemp("tiny") / name
            synthetic.write_checkpoint(path, state, dtype=dtype, metadata=metadata)
            cache[key] = TinyModel(path, spec, unet, vae, encoders, state)
        return cache[key]

    return make


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """An empty A1111-style models root."""
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "VAE").mkdir()
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for a test: tiny convolutions run fastest so, and far faster than on two threads
    of a busy 2-core machine (OpenMP hand-off costs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
