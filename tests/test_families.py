"""Family detection from keys and shapes: SD1, SD2 (eps / v), SDXL base and refiner, inpainting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentstudio.core import Prediction
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.files import read_tensor_file
from latentstudio.models.synthetic import write_checkpoint
from tests.conftest import MakeTiny

# The last output block with a transformer: index 11 in a full-size SD2 UNet, 8 in the tiny one.
V_STAT_KEY = "model.diffusion_model.output_blocks.8.1.transformer_blocks.0.norm1.bias"


def _identify(path: Path) -> tuple[Family, Prediction, bool, int]:
    info = loader.identify(loader.canonical_keys(read_tensor_file(path)))
    return info.family, info.prediction, info.inpainting, info.native_size


@pytest.mark.parametrize(
    ("family", "inpainting", "expected"),
    [
        (Family.SD1, False, (Family.SD1, Prediction.EPSILON, False, 512)),
        (Family.SD1, True, (Family.SD1, Prediction.EPSILON, True, 512)),
        (Family.SD2, False, (Family.SD2, Prediction.EPSILON, False, 512)),
        (Family.SD2, True, (Family.SD2, Prediction.EPSILON, True, 512)),
        (Family.SDXL, False, (Family.SDXL, Prediction.EPSILON, False, 1024)),
        (Family.SDXL, True, (Family.SDXL, Prediction.EPSILON, True, 1024)),
        (Family.SDXL_REFINER, False, (Family.SDXL_REFINER, Prediction.EPSILON, False, 1024)),
    ],
)
def test_family_from_structure(
    make_tiny: MakeTiny, family: Family, inpainting: bool, expected: tuple[object, ...]
) -> None:
    assert _identify(make_tiny(family, inpainting=inpainting).path) == expected


def test_sd2_v_prediction_from_the_norm_statistic(make_tiny: MakeTiny, tmp_path: Path) -> None:
    """v-trained SD2 UNets have a wide last-transformer ``norm1.bias`` (ComfyUI's test, std > 0.09)."""
    state = dict(make_tiny(Family.SD2).state)
    assert V_STAT_KEY in state
    assert V_STAT_KEY.replace(".8.", ".9.") not in state
    state[V_STAT_KEY] = torch.randn(state[V_STAT_KEY].shape, generator=torch.Generator().manual_seed(0)) * 0.3
    assert _identify(write_checkpoint(tmp_path / "v.safetensors", state))[1:] == (Prediction.V, False, 768)
    state[V_STAT_KEY] = state[V_STAT_KEY] * 0.1  # std ≈ 0.03
    assert _identify(write_checkpoint(tmp_path / "eps.safetensors", state))[1] is Prediction.EPSILON


def test_v_prediction_markers(make_tiny: MakeTiny, tmp_path: Path) -> None:
    sdxl = dict(make_tiny(Family.SDXL).state)
    marked = {**sdxl, "v_pred": torch.tensor([])}
    assert _identify(write_checkpoint(tmp_path / "vpred.safetensors", marked))[:2] == (
        Family.SDXL,
        Prediction.V,
    )
    meta = {"modelspec.prediction_type": "v"}
    path = write_checkpoint(tmp_path / "spec.safetensors", sdxl, metadata=meta)
    assert _identify(path)[1] is Prediction.V


def test_unet_only_file_falls_back_to_context_width(make_tiny: MakeTiny, tmp_path: Path) -> None:
    """Without text encoders the family comes from the cross-attention width (768 → SD1, 1024 → SD2)."""
    state = {k: v for k, v in make_tiny(Family.SD1).state.items() if k.startswith("model.diffusion_model.")}
    for key in [k for k in state if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]:
        state[key] = torch.zeros(state[key].shape[0], 1024)
    assert _identify(write_checkpoint(tmp_path / "unet.safetensors", state))[0] is Family.SD2
