"""GPU loading (fp16 / bf16 on CUDA): run on a machine with a GPU; skipped elsewhere (CI has none)."""

from __future__ import annotations

import pytest
import torch

from latentstudio.config import resolve_device, resolve_dtype
from latentstudio.models import loader
from latentstudio.models.families import Family
from tests.conftest import MakeTiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def test_auto_device_and_dtype_pick_cuda_fp16() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_dtype("auto", device) is torch.float16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL])
def test_half_precision_on_cuda_matches_fp32_on_cpu(
    make_tiny: MakeTiny, family: Family, dtype: torch.dtype
) -> None:
    tiny = make_tiny(family, dtype=torch.float16)
    gpu = loader.load_checkpoint(tiny.path, device=CUDA, dtype=dtype)
    cpu = loader.load_checkpoint(tiny.path, device=torch.device("cpu"), dtype=torch.float32)
    for module in (gpu.unet, gpu.vae, *gpu.text_encoders.values()):
        assert {p.device.type for p in module.parameters()} == {"cuda"}
        assert {p.dtype for p in module.parameters()} == {dtype}
        assert {b.device.type for b in module.buffers()} <= {"cuda"}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, tiny.spec.unet["cross_attention_dim"], generator=g)
    extra: dict[str, dict[str, torch.Tensor]] = {}
    gpu_extra: dict[str, dict[str, torch.Tensor]] = {}
    if family is Family.SDXL:
        cfg = tiny.spec.unet
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.tensor([[64.0] * 6])}
        extra = {"added_cond_kwargs": added}
        gpu_extra = {"added_cond_kwargs": {k: v.to(CUDA, dtype) for k, v in added.items()}}
    with torch.inference_mode():
        ref = cpu.unet(x, 500, context, **extra).sample
        out = gpu.unet(x.to(CUDA, dtype), 500, context.to(CUDA, dtype), **gpu_extra).sample.float().cpu()
    tolerance = 2e-2 if dtype is torch.float16 else 8e-2
    assert (out - ref).abs().max().item() <= tolerance * max(1.0, ref.abs().max().item())
