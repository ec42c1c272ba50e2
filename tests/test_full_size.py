"""Full-size SD1.5 with random weights in the original layout: loads and runs one UNet step (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.synthetic import full_spec, random_single_file_state, write_checkpoint


@pytest.mark.slow
def test_full_size_sd15_loads_and_runs_one_unet_step(tmp_path: Path) -> None:
    state = random_single_file_state(full_spec(Family.SD1), seed=0, dtype=torch.float16)
    path = write_checkpoint(tmp_path / "sd15-random-fp16.safetensors", state)
    del state
    assert path.stat().st_size > 2_000_000_000
    components = loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
    assert components.info.family is Family.SD1
    assert components.info.native_size == 512
    assert sum(p.numel() for p in components.unet.parameters()) == 859_520_964  # SD1.5's UNet
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ids = components.tokenizers["text_encoder"](
            "a photo of a cat", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        context = components.text_encoders["text_encoder"](ids).last_hidden_state
        assert context.shape == (1, 77, 768)
        out = components.unet(latents, torch.tensor([999]), context).sample
    assert out.shape == (1, 4, 64, 64)
    assert torch.isfinite(out).all()
