"""ControlNet / T2I-Adapter files: layout and family detection (tiny and full-size key layouts), loading
into diffusers' classes, parity with diffusers' own single-file loading and with an independent forward of
TencentARC's Adapter, difference ControlNets, refusals, and where diffusers' UNet adds adapter features."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import torch
import torch.nn.functional as nnf
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from latentstudio.control import synthetic as cs
from latentstudio.control.networks import (
    ControlFileInfo,
    ControlKind,
    ControlNetwork,
    empty_control_module,
    inspect_control_file,
    load_control_network,
)
from latentstudio.models import arch
from latentstudio.models import synthetic as ms
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError

CPU = torch.device("cpu")
CN, AD = ControlKind.CONTROLNET, ControlKind.T2I_ADAPTER
Tensors = list[torch.Tensor]
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def _load(path: Path, **kwargs: Any) -> ControlNetwork:
    return load_control_network(path, device=CPU, dtype=torch.float32, **kwargs)


def _perturbed(module: ModuleT, seed: int) -> ModuleT:
    """``module`` with seeded noise added to every weight (zero-initialised layers included), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return module.eval()


def _tiny_unet(family: Family, seed: int = 0) -> UNet2DConditionModel:
    """The UNet of ``tiny_spec(family)`` with every weight perturbed (fp32, eval)."""
    torch.manual_seed(seed)
    return _perturbed(UNet2DConditionModel.from_config(ms.tiny_spec(family).unet), seed)


def _controlnet_outputs(module: ControlNetModel, seed: int = 0) -> Tensors:
    """Down residuals then the mid residual for one fixed input (latent 8×8, control image 64×64)."""
    g = torch.Generator().manual_seed(seed)
    config = module.config
    added = None
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.tensor([[64.0] * 6])}
    with torch.no_grad():
        down, mid = module(
            torch.randn(1, config.in_channels, 8, 8, generator=g),
            torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 77, config.cross_attention_dim, generator=g),
            controlnet_cond=torch.rand(1, config.conditioning_channels, 64, 64, generator=g),
            added_cond_kwargs=added,
            return_dict=False,
        )
    return [*down, mid]


def _assert_same(ours: Tensors, reference: Tensors, atol: float = 1e-5) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def _refused(path: Path, *, load: bool = True) -> str:
    """The one-line error for ``path`` (from inspection and, if ``load``, loading), checked to name it."""
    with pytest.raises(ModelFileError) as info:
        inspect_control_file(path)
    message = str(info.value)
    if load:
        with pytest.raises(ModelFileError) as loaded:
            _load(path)
        assert "\n" not in str(loaded.value)
        assert str(path) in str(loaded.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# ---- ControlNets: cldm layout -------------------------------------------------------------------------


@pytest.mark.parametrize("family", [Family.SD1, Family.SD2, Family.SDXL])
def test_cldm_file_is_detected_and_loads_as_written(tmp_path: Path, family: Family) -> None:
    path = tmp_path / f"control_{family}.safetensors"
    reference = cs.tiny_controlnet_file(path, family, seed=1)
    assert next(iter(load_file(path))).startswith("control_model.")
    assert inspect_control_file(path) == ControlFileInfo(CN, family, "cldm", 3)
    base = _tiny_unet(family) if family is Family.SDXL else None  # SDXL: time-id width from the base UNet
    network = _load(path, base_unet=base)
    module = network.module
    assert isinstance(module, ControlNetModel)
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())
    assert module.config.attention_head_dim == reference.config.attention_head_dim
    half = load_control_network(path, device=CPU, dtype=torch.float16, base_unet=base).module
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    _assert_same(_controlnet_outputs(module), _controlnet_outputs(reference))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Record (and refuse) every attempt to open a connection or resolve a host."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == []


def test_cldm_parity_with_diffusers_from_single_file(tmp_path: Path, no_network: list[object]) -> None:
    path = tmp_path / "control_sd1.safetensors"
    reference = cs.tiny_controlnet_file(path, Family.SD1, seed=2)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(dict(reference.config)), encoding="utf-8")
    theirs = ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    ours = _load(path).module
    outputs = _controlnet_outputs(ours)
    _assert_same(outputs, _controlnet_outputs(theirs.eval()))
    assert len(outputs) == 10  # conv_in + 3 levels × 2 + 2 downsamplers, and the mid residual
    assert all(float(o.abs().max()) > 1e-3 for o in outputs)  # perturbed zero convolutions: no empty output


def _sdxl_variant(depths: list[int], attention: list[bool]) -> dict[str, Any]:
    unet = arch.shipped_config(Family.SDXL, "unet")
    unet.update(
        transformer_layers_per_block=depths,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
    )
    return cs.controlnet_config(unet)


FULL_SIZE: dict[str, tuple[Family, Callable[[], dict[str, Any]]]] = {
    "sd1": (Family.SD1, lambda: cs.controlnet_config(arch.shipped_config(Family.SD1, "unet"))),
    "sd2": (Family.SD2, lambda: cs.controlnet_config(arch.shipped_config(Family.SD2, "unet"))),
    "sdxl-full": (Family.SDXL, lambda: _sdxl_variant([1, 2, 10], [False, True, True])),
    "sdxl-mid": (Family.SDXL, lambda: _sdxl_variant([1, 1, 1], [False, False, True])),
    "sdxl-small": (Family.SDXL, lambda: _sdxl_variant([1, 1, 0], [False, False, False])),
}


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_cldm_layouts_from_shapes_alone(tmp_path: Path, name: str) -> None:
    """The real key/shape layouts (a sparse all-zero file: nothing allocated) give the right family and an
    architecture with exactly the source's parameters; control_v11p_sd15_canny: 340 tensors, 361,279,120."""
    family, make_config = FULL_SIZE[name]
    config = make_config()
    shapes = cs.cldm_shapes(config)
    path = cs.write_shapes_only(tmp_path / f"{name}.safetensors", shapes)
    assert path.stat().st_blocks * 512 < 4 * 2**20  # sparse on disk
    assert inspect_control_file(path) == ControlFileInfo(CN, family, "cldm", 3)
    module = empty_control_module(path)
    with torch.device("meta"):
        source = ControlNetModel.from_config(config)
    count = sum(p.numel() for p in module.parameters())
    assert count == sum(p.numel() for p in source.parameters())
    for field in ("attention_head_dim", "transformer_layers_per_block", "cross_attention_dim"):
        assert _per_level(module.config[field], 4) == _per_level(source.config[field], 4)
    if name == "sd1":
        assert (len(shapes), count) == (340, 361_279_120)


def _per_level(value: int | list[int], levels: int) -> list[int]:
    return [value] * levels if isinstance(value, int) else list(value)


# ---- ControlNets: diffusers layout, pickled files, folders ------------------------------------------


def test_diffusers_layout_single_file_and_pickled_cldm(tmp_path: Path) -> None:
    reference = cs.tiny_controlnet_file(tmp_path / "diffusers.safetensors", layout="diffusers", seed=3)
    assert inspect_control_file(tmp_path / "diffusers.safetensors") == ControlFileInfo(
        CN, Family.SD1, "diffusers", 3
    )
    expected = _controlnet_outputs(reference)
    _assert_same(_controlnet_outputs(_load(tmp_path / "diffusers.safetensors").module), expected)
    cs.tiny_controlnet_file(tmp_path / "cldm.safetensors", seed=3)
    bundled = {
        "model.diffusion_model.out.2.weight": torch.ones(4, 64, 3, 3),
        "cond_stage_model.x": torch.ones(1),
    }
    # ControlNet 1.0 files bundle their SD model beside control_model.*; read by the weights-only unpickler
    torch.save({**load_file(tmp_path / "cldm.safetensors"), **bundled}, tmp_path / "control.pth")
    assert inspect_control_file(tmp_path / "control.pth").layout == "cldm"
    _assert_same(_controlnet_outputs(_load(tmp_path / "control.pth").module), expected)


def test_diffusers_layout_without_middle_attention(tmp_path: Path) -> None:
    config = {**cs.controlnet_config(ms.tiny_spec(Family.SD1).unet), "mid_block_type": "UNetMidBlock2D"}
    torch.manual_seed(0)
    reference = _perturbed(ControlNetModel.from_config(config), seed=1)
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "plain_mid.safetensors"
    )
    module = _load(tmp_path / "plain_mid.safetensors").module
    assert module.config.mid_block_type == "UNetMidBlock2D"
    _assert_same(_controlnet_outputs(module), _controlnet_outputs(reference))


@pytest.mark.parametrize("safe", [True, False])
def test_diffusers_folder(tmp_path: Path, safe: bool) -> None:
    reference = cs.tiny_controlnet_file(tmp_path / "x.safetensors", Family.SD2, seed=4)
    folder = tmp_path / "controlnet"
    reference.save_pretrained(folder, safe_serialization=safe)
    assert inspect_control_file(folder) == ControlFileInfo(CN, Family.SD2, "diffusers", 3)
    _assert_same(_controlnet_outputs(_load(folder).module), _controlnet_outputs(reference))


def test_folder_config_is_checked_and_keeps_global_pooling(tmp_path: Path) -> None:
    reference = cs.tiny_controlnet_file(tmp_path / "x.safetensors", seed=5)
    folder = tmp_path / "shuffle"
    reference.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(
        json.dumps({**config, "global_pool_conditions": True}), encoding="utf-8"
    )
    assert _load(folder).module.config.global_pool_conditions is True
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "T2IAdapter"}), encoding="utf-8")
    assert "names 'T2IAdapter'" in _refused(folder)
    (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    assert "not a JSON object" in _refused(folder)
    (folder / "config.json").unlink()
    assert "needs config.json" in _refused(folder)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    assert "no weights" in _refused(folder)


# ---- Difference ControlNets -------------------------------------------------------------------------


def test_difference_controlnet_needs_and_uses_its_base(tmp_path: Path) -> None:
    base = _tiny_unet(Family.SD1, seed=7)
    diff_path, full_path = tmp_path / "diff.safetensors", tmp_path / "full.safetensors"
    control = cs.tiny_controlnet_file(diff_path, layout="cldm-diff", base_unet=base, seed=8)
    cs.tiny_controlnet_file(full_path, seed=8)
    stored, full = load_file(diff_path), load_file(full_path)
    key = "control_model.input_blocks.1.0.in_layers.2.weight"
    assert not torch.allclose(stored[key], full[key])  # the file really holds differences
    assert inspect_control_file(diff_path) == ControlFileInfo(CN, Family.SD1, "cldm-diff", 3)
    with pytest.raises(ModelFileError, match="needs its base checkpoint"):
        _load(diff_path)
    restored = _load(diff_path, base_unet=base).module
    _assert_same(_controlnet_outputs(restored), _controlnet_outputs(_load(full_path).module))
    _assert_same(_controlnet_outputs(restored), _controlnet_outputs(control))
    with pytest.raises(ModelFileError, match="does not fit the base UNet") as wrong:
        _load(diff_path, base_unet=_tiny_unet(Family.SDXL))
    assert "\n" not in str(wrong.value)
    assert str(diff_path) in str(wrong.value)


def test_tiny_sdxl_controlnet_needs_base_for_its_time_id_width(tmp_path: Path) -> None:
    path = tmp_path / "xl.safetensors"
    cs.tiny_controlnet_file(path, Family.SDXL)
    with pytest.raises(ModelFileError, match=r"label_emb input 80 \(not 2816\): pass base_unet"):
        _load(path)


# ---- T2I-Adapters --------------------------------------------------------------------------------------


def _tencent_forward(state: dict[str, torch.Tensor], x: torch.Tensor, *, sdxl: bool, light: bool) -> Tensors:
    """TencentARC's ``Adapter`` / ``Adapter_light`` forward, written from ``scripts/adapter.py`` over the
    original state dict: pixel-unshuffle, conv_in, res blocks (avg-pool, in_conv, skep), one map per level."""

    def conv(name: str, h: torch.Tensor) -> torch.Tensor:
        weight = state[name + ".weight"]
        return nnf.conv2d(h, weight, state[name + ".bias"], padding=weight.shape[-1] // 2)

    def block(p: str, h: torch.Tensor) -> torch.Tensor:
        return conv(p + "block2", nnf.relu(conv(p + "block1", h)))

    features = []
    n = len({k.split(".")[1] for k in state if k.startswith("body.")})
    if light:
        x = nnf.pixel_unshuffle(x, 8)
        for i in range(n):
            x = conv(f"body.{i}.in_conv", nnf.avg_pool2d(x, 2) if i else x)
            for j in range(len({k.split(".")[3] for k in state if k.startswith(f"body.{i}.body.")})):
                x = x + block(f"body.{i}.body.{j}.", x)
            features.append(conv(f"body.{i}.out_conv", x))
            x = features[-1]
        return features
    x = conv("conv_in", nnf.pixel_unshuffle(x, 16 if sdxl else 8))
    for i in range(n // 2):
        for r in range(2):
            p = f"body.{2 * i + r}."
            if r == 0 and i in ({2} if sdxl else {1, 2, 3}):
                x = nnf.avg_pool2d(x, 2)
            if p + "in_conv.weight" in state:
                x = conv(p + "in_conv", x)
            x = block(p, x) + (conv(p + "skep", x) if p + "skep.weight" in state else x)
        features.append(x)
    return features


ADAPTERS = {  # name: (light, sdxl, hint channels, channels, prefix, layout)
    "sd1-full-1ch": (False, False, 1, (64, 128, 128), "", "tencent-full"),
    "sd1-full-3ch-prefixed": (False, False, 3, (64, 128, 128, 128), "adapter.", "tencent-full"),
    "sdxl-full-1ch": (False, True, 1, (64, 128, 128, 128), "", "tencent-full"),
    "sdxl-full-3ch": (False, True, 3, (64, 128, 128, 128), "adapter.", "tencent-full"),
    "sd1-light": (True, False, 3, (64, 128, 128, 128), "", "tencent-light"),
}


@pytest.mark.parametrize("name", ADAPTERS)
def test_tencent_adapter_matches_reference_forward(tmp_path: Path, name: str) -> None:
    light, sdxl, hint, channels, prefix, layout = ADAPTERS[name]
    path = tmp_path / f"{name}.safetensors"
    state = cs.tiny_adapter_file(
        path, light=light, sdxl=sdxl, hint_channels=hint, channels=channels, prefix=prefix
    )
    family = Family.SDXL if sdxl else Family.SD1
    assert inspect_control_file(path) == ControlFileInfo(AD, family, layout, hint)
    module = _load(path).module
    assert isinstance(module, T2IAdapter)
    x = torch.rand(2, hint, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = module(x)
    reference = _tencent_forward(state, x, sdxl=sdxl, light=light)
    assert len(ours) == (len(channels) if not light else 4)
    _assert_same(ours, reference)
    # the same weights in diffusers' layout, as a single file and as a folder
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp_path / "d.safetensors")
    module.save_pretrained(tmp_path / "folder")
    for again in (tmp_path / "d.safetensors", tmp_path / "folder"):
        assert inspect_control_file(again) == ControlFileInfo(AD, family, "diffusers-adapter", hint)
        with torch.no_grad():
            _assert_same(_load(again).module(x), reference)


def test_full_size_adapter_layouts_from_shapes_alone(tmp_path: Path) -> None:
    """t2iadapter_canny_sd15v2: 38 tensors, 77,000,640 parameters; SDXL by its 16×16 unshuffle."""
    widths = (320, 640, 1280, 1280)
    sd15 = cs.tencent_adapter_shapes(widths, cin=64)
    path = cs.write_shapes_only(tmp_path / "t2iadapter_canny_sd15v2.safetensors", sd15)
    assert inspect_control_file(path) == ControlFileInfo(AD, Family.SD1, "tencent-full", 1)
    assert len(sd15) == 38
    assert sum(p.numel() for p in empty_control_module(path).parameters()) == 77_000_640
    xl = cs.write_shapes_only(
        tmp_path / "xl.safetensors", cs.tencent_adapter_shapes(widths, cin=768, sdxl=True)
    )
    assert inspect_control_file(xl) == ControlFileInfo(AD, Family.SDXL, "tencent-full", 3)
    assert empty_control_module(xl).config.adapter_type == "full_adapter_xl"
    light = cs.write_shapes_only(tmp_path / "light.safetensors", cs.tencent_light_adapter_shapes(widths))
    assert inspect_control_file(light) == ControlFileInfo(AD, Family.SD1, "tencent-light", 3)
    assert empty_control_module(light).config.channels == [320, 640, 1280]


# ---- Refusals and malformed files ----------------------------------------------------------------------


def _small(*keys: str) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(4, 4) for k in keys}


REFUSED: dict[str, tuple[Callable[[Path], object], str]] = {
    "style": (lambda p: save_file(_small("style_embedding", "ln_post.weight"), p), "style adapters"),
    "control-lora": (
        lambda p: save_file(_small("lora_controlnet", "input_hint_block.0.weight"), p),
        "Control-LoRA",
    ),
    "union": (
        lambda p: save_file(_small("control_add_embedding.linear_1.bias", "input_hint_block.0.weight"), p),
        "ControlNet Union",
    ),
    "ip-adapter": (
        lambda p: save_file(_small("image_proj.proj.weight", "ip_adapter.1.to_k_ip.weight"), p),
        "IP-Adapter",
    ),
    "vae": (lambda p: save_file(_small("encoder.down.0.block.0.conv1.weight"), p), "unknown key layout"),
    "v1-adapter": (lambda p: cs.tiny_adapter_file(p, ksize=3, sk=False), "v1 T2I-Adapter"),
    "conv-downsampling": (lambda p: cs.tiny_adapter_file(p, use_conv=True), "v1 T2I-Adapter"),
    "3x3-adapter": (lambda p: cs.tiny_adapter_file(p, ksize=3), "v1 T2I-Adapter"),
    "adapter-input": (lambda p: cs.tiny_adapter_file(p, hint_channels=2), "input width 128"),
    "garbage": (lambda p: p.write_bytes(b"\x07" * 4096), "not a safetensors file"),
    "empty": (lambda p: p.write_bytes(b""), "0 bytes"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_files_name_the_file_in_one_line(tmp_path: Path, name: str) -> None:
    make, expected = REFUSED[name]
    path = tmp_path / f"{name}.safetensors"
    make(path)
    assert expected in _refused(path)


def _edited_cldm(tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> Path:
    path = tmp_path / "edited.safetensors"
    cs.tiny_controlnet_file(path)
    state = load_file(path)
    edit(state)
    save_file(state, path)
    return path


def test_malformed_controlnets(tmp_path: Path) -> None:
    path = _edited_cldm(
        tmp_path, lambda s: s.update({"control_model.zero_convs.1.0.weight": torch.zeros(64, 32, 1, 1)})
    )
    assert "controlnet_down_blocks.1.weight has shape [64, 32, 1, 1], not [64, 64, 1, 1]" in _refused(path)
    path = _edited_cldm(tmp_path, lambda s: s.pop("control_model.middle_block_out.0.bias"))
    assert "incomplete ControlNet" in _refused(path)
    path = _edited_cldm(
        tmp_path, lambda s: s.update({"control_model.input_blocks.1.1.extra.weight": torch.zeros(1)})
    )
    assert "weights do not match the architecture: unexpected" in _refused(path)
    path = _edited_cldm(
        tmp_path, lambda s: s.update({"control_model.zero_convs.99.0.weight": torch.zeros(1)})
    )
    assert "unknown cldm keys: converted" in _refused(path)
    path = _edited_cldm(tmp_path, lambda s: s.update({"control_model.label_emb.0.9.weight": torch.zeros(1)}))
    assert "unsupported cldm key" in _refused(path)

    def sd1_with_sd2_context(state: dict[str, torch.Tensor]) -> None:
        for key in [k for k in state if k.endswith("attn2.to_k.weight")]:
            state[key] = torch.zeros(state[key].shape[0], 1024)

    assert "sd1 layers, sd2 context 1024" in _refused(_edited_cldm(tmp_path, sd1_with_sd2_context))
    full = tmp_path / "truncated.safetensors"
    cs.tiny_controlnet_file(full)
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "truncated" in _refused(full)
    pickled = tmp_path / "garbage.pth"
    pickled.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    assert "corrupt or truncated" in _refused(pickled)
    assert "no such file" in _refused(tmp_path / "missing.safetensors")


# ---- Where diffusers' UNet adds T2I-Adapter features ---------------------------------------------------


def _ldm_input_block(unet: UNet2DConditionModel, index: int) -> torch.nn.Module:
    """The diffusers module whose output is LDM input block ``index`` (3 per level: res(+attn) ×2, down)."""
    level, j = divmod(index - 1, 3)
    block = unet.down_blocks[level]
    if j == 2:
        return cast(torch.nn.Module, block.downsamplers[0])
    return cast(torch.nn.Module, block.attentions[j] if hasattr(block, "attentions") else block.resnets[j])


def _adding(feature: torch.Tensor) -> Callable[..., object]:
    def hook(module: torch.nn.Module, args: object, output: object) -> object:
        if isinstance(output, tuple):
            return (output[0] + feature, *output[1:])
        return cast(torch.Tensor, output) + feature

    return hook


@pytest.mark.parametrize(
    ("family", "blocks", "middle"),
    [(Family.SD1, [2, 5, 8], False), (Family.SDXL, [3, 5], True)],
    ids=["sd1-after-2-5-8", "sdxl-after-3-5-and-middle"],
)
def test_intrablock_residuals_equal_ldm_injection(family: Family, blocks: list[int], middle: bool) -> None:
    """diffusers' ``down_intrablock_additional_residuals`` adds each feature exactly where sd-webui-controlnet
    adds it (after LDM input blocks (i+1) % 3 == 0 for SD1, [3, 5, 8] + middle for SDXL), skip connections
    included: the tiny UNets end in a DownBlock2D (SD1) / have one after their first level (SDXL)."""
    unet = _tiny_unet(family, seed=11)
    spec = ms.tiny_spec(family).unet
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, spec["cross_attention_dim"], generator=g)
    added = None
    if family is Family.SDXL:
        pooled = spec["projection_class_embeddings_input_dim"] - 6 * spec["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(1, pooled, generator=g), "time_ids": torch.tensor([[64.0] * 6])}
    targets = [_ldm_input_block(unet, i) for i in blocks] + ([unet.mid_block] if middle else [])
    shapes: list[torch.Size] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: shapes.append(_first(out).shape)) for m in targets]

    def run(**kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            out = unet(sample, 500, encoder_hidden_states=context, added_cond_kwargs=added, **kwargs)
        return cast(torch.Tensor, out.sample)

    plain = run()
    for h in handles:
        h.remove()
    features = [torch.randn(s, generator=g) for s in shapes]
    diffusers_way = run(down_intrablock_additional_residuals=list(features))
    handles = [m.register_forward_hook(_adding(f)) for m, f in zip(targets, features, strict=True)]
    ldm_way = run()
    for h in handles:
        h.remove()
    torch.testing.assert_close(diffusers_way, ldm_way, atol=1e-6, rtol=0)
    assert not torch.allclose(diffusers_way, plain, atol=1e-3)
    if family is Family.SD1:  # the last feature must reach the skip connection too, not only the middle
        handle = unet.mid_block.register_forward_pre_hook(
            lambda _m, args: (args[0] + features[-1], *args[1:])
        )
        handles = [m.register_forward_hook(_adding(f)) for m, f in zip(targets[:-1], features, strict=False)]
        skip_blind = run()
        for h in [handle, *handles]:
            h.remove()
        assert not torch.allclose(diffusers_way, skip_blind, atol=1e-4)


def _first(output: object) -> torch.Tensor:
    return cast(torch.Tensor, output[0] if isinstance(output, tuple) else output)
