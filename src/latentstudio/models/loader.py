"""Build ready-to-run components (UNet, VAE, text encoders, tokenizers) from a checkpoint file or folder.

Single files: tensors stay memory-mapped; each module is created on the ``meta`` device (no random init,
no allocation) and receives the file's tensors by ``load_state_dict(assign=True)``, converted to the target
dtype/device one tensor at a time. Where the file already has the target dtype on the CPU the weights are
the mapped file pages themselves: no copy at all. Replace a loaded checkpoint by renaming a new file over it,
not by rewriting it in place.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_hub.errors import StrictDataclassError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.initialization import no_init_weights

from latentstudio.core import Prediction
from latentstudio.models import arch, convert
from latentstudio.models.families import SD1_TEXT_PREFIX, Family, FamilyInfo, detect_family
from latentstudio.models.files import ModelFileError, TensorFile, read_tensor_file, release_mapped_pages
from latentstudio.models.tokenizer import clip_tokenizer

TextEncoder = CLIPTextModel | CLIPTextModelWithProjection
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)
VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass(frozen=True, eq=False)
class Components:
    """Everything one checkpoint contributes to generation, on one device in one dtype.

    ``text_encoders``/``tokenizers`` are keyed by diffusers component name (``text_encoder``,
    ``text_encoder_2``); ``alphas_cumprod`` is the training noise schedule, shape ``[1000]``, float64.
    """

    path: Path
    info: FamilyInfo
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: Mapping[str, TextEncoder]
    tokenizers: Mapping[str, CLIPTokenizer]
    alphas_cumprod: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    vae_path: Path | None = None


@dataclass(frozen=True)
class Placement:
    """Where loaded weights go; ``mapped``: the source tensors are a private file mapping whose pages
    can be dropped once copied (see :func:`~latentstudio.models.files.release_mapped_pages`)."""

    device: torch.device
    dtype: torch.dtype
    mapped: bool = False

    def place(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor on the final device/dtype (floating point only); itself when it already is."""
        dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
        placed = tensor.to(device=self.device, dtype=dtype)
        if self.mapped and placed is not tensor:
            release_mapped_pages(tensor)
        return placed


def _materialize(
    path: Path, what: str, module: ModuleT, state: dict[str, torch.Tensor], placement: Placement
) -> ModuleT:
    """Give a meta-device ``module`` its weights from ``state`` (consumed), strictly."""
    placed = {key: placement.place(state.pop(key)) for key in list(state)}
    try:
        missing, unexpected = module.load_state_dict(placed, strict=False, assign=True)
    except RuntimeError as e:  # "size mismatch for …": the shapes contradict the architecture
        raise ModelFileError(path, f"{what} weights do not match the architecture: {first_line(e)}") from e
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelFileError(path, f"{what} weights do not match the architecture: {detail}")
    module.to(device=placement.device)  # buffers that were created on the CPU at construction
    module.eval().requires_grad_(False)
    return module


# what the library constructors raise on a config they cannot build (transformers validates its configs
# with huggingface_hub's strict dataclasses)
_BUILD_ERRORS = (
    ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, AttributeError, RuntimeError,
    StrictDataclassError,
)  # fmt: skip


def construct(path: Path, what: str, build: Callable[[], ModuleT]) -> ModuleT:
    """``build()`` on the meta device; a config the library cannot build (inconsistent widths, head counts
    or block lists read from an untrusted file) is a :class:`ModelFileError` naming the file."""
    try:
        with init_empty_weights(include_buffers=False):
            return build()
    except _BUILD_ERRORS as e:
        raise ModelFileError(path, f"{what}: the architecture cannot be built ({first_line(e)})") from e


def first_line(error: BaseException) -> str:
    """The library's message on one line (some span several: "validation error …:\n  ValueError: …")."""
    return " ".join(str(error).split())[:300] or type(error).__name__


def _build_unet(
    path: Path, tf: TensorFile, info: FamilyInfo, overrides: dict[str, Any], placement: Placement
) -> Any:
    config = arch.unet_config(path, _shapes(tf), info, overrides.get("unet", {}))
    state = convert.unet_to_diffusers(path, tf.tensors, config)
    unet = construct(path, "UNet", lambda: UNet2DConditionModel.from_config(config))
    return _materialize(path, "UNet", unet, state, placement)


def build_vae(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    info: FamilyInfo,
    overrides: dict[str, Any],
    placement: Placement,
) -> AutoencoderKL:
    """An ``AutoencoderKL`` from LDM-layout keys without prefix, or from diffusers-layout keys."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if "encoder.down.0.block.0.conv1.weight" in shapes:
        config = arch.vae_config(shapes, info, "", overrides)
        state = convert.vae_to_diffusers(path, tensors, config)
    elif "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes:
        config = {**arch.shipped_config(info.family, "vae"), **overrides}
        state = dict(tensors)
    else:
        raise ModelFileError(path, "no VAE weights (encoder.down.* or encoder.down_blocks.*)")
    vae: AutoencoderKL = construct(path, "VAE", lambda: AutoencoderKL.from_config(config))
    return _materialize(path, "VAE", vae, state, placement)


def _build_text_encoders(
    path: Path, tf: TensorFile, family: Family, overrides: dict[str, Any], placement: Placement
) -> dict[str, TextEncoder]:
    encoders: dict[str, TextEncoder] = {}
    for spec in arch.TEXT_ENCODERS[family]:
        config = arch.text_encoder_config(path, _shapes(tf), family, spec, overrides.get(spec.name, {}))
        if spec.open_clip:
            state = convert.open_clip_to_transformers(path, tf.tensors, spec.prefix, spec.with_projection)
        else:
            state = convert.clip_to_transformers(path, tf.tensors, spec.prefix)
        cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
        fields = {k: v for k, v in config.items() if not k.startswith("_")}

        def build(cls: type[TextEncoder] = cls, fields: dict[str, Any] = fields) -> TextEncoder:
            with no_init_weights():  # no random init of meta weights
                return cls(CLIPTextConfig(**fields))

        model = construct(path, spec.name, build)
        state = convert.clip_keys_for(model, state)
        encoders[spec.name] = _materialize(path, spec.name, model, state, placement)
    return encoders


def _shapes(tf: TensorFile) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tf.tensors.items()}


def sidecar_prediction(path: Path) -> Prediction | None:
    """A1111's per-checkpoint ``<name>.yaml`` (LDM config): ``parameterization: "v"`` marks v-prediction.

    Parsed with ``yaml.safe_load`` (no object construction); any ``target:`` classes are ignored.
    """
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        config = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
        param = config["model"]["params"].get("parameterization", "eps")
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ModelFileError(sidecar, f"unreadable model config: {e}") from e
    return Prediction.V if param == "v" else Prediction.EPSILON


def canonical_keys(tf: TensorFile) -> TensorFile:
    """Rename historical key variants to the canonical layout: SD1 files written by transformers < 4.31
    lack the ``text_model.`` level under ``cond_stage_model.transformer.``."""
    old = SD1_TEXT_PREFIX + "embeddings."
    if not any(k.startswith(old) for k in tf.tensors):
        return tf
    n = len(SD1_TEXT_PREFIX)
    renamed = {
        (SD1_TEXT_PREFIX + "text_model." + k[n:] if k.startswith(SD1_TEXT_PREFIX) else k): v
        for k, v in tf.tensors.items()
    }
    return dataclasses.replace(tf, tensors=renamed)


def identify(tf: TensorFile) -> FamilyInfo:
    """The family of an opened single-file checkpoint; the architecture metadata may set the native size."""
    info = detect_family(
        tf.path, _shapes(tf), tf.metadata, lambda key: tf.tensors[key], sidecar_prediction(tf.path)
    )
    sample_size = arch.architecture_overrides(tf.path, tf.metadata).get("unet", {}).get("sample_size")
    if isinstance(sample_size, int):
        info = dataclasses.replace(info, native_size=sample_size * 8)
    return info


def identify_path(path: Path) -> FamilyInfo:
    """The family of a checkpoint file or diffusers folder, without loading any module."""
    if not path.is_dir():
        return identify(canonical_keys(read_tensor_file(path)))
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    unet_config = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return FamilyInfo(
        _folder_family(path, index, unet_config),
        Prediction(scheduler.get("prediction_type", "epsilon")),
        unet_config.get("in_channels") == 9,
        unet_config.get("sample_size", 64) * 8,
    )


def default_alphas_cumprod(family: Family) -> torch.Tensor:
    """ᾱ_t of the family's training schedule (scaled-linear betas), shape ``[1000]``, float64."""
    config = arch.shipped_config(family, "scheduler")
    start, end, n = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def load_single_file(
    path: Path, *, device: torch.device, dtype: torch.dtype, vae_path: Path | None = None
) -> Components:
    """Load an original-layout checkpoint (``.safetensors`` / weights-only ``.ckpt``) into components."""
    tf = canonical_keys(read_tensor_file(path))
    info = identify(tf)
    overrides = arch.architecture_overrides(path, tf.metadata)
    placement = Placement(device, dtype, mapped=tf.mapped)
    unet = _build_unet(path, tf, info, overrides, placement)
    encoders = _build_text_encoders(path, tf, info.family, overrides, placement)
    if vae_path is not None:
        vae_file = read_tensor_file(vae_path)
        vae_overrides = arch.architecture_overrides(vae_path, vae_file.metadata).get("vae", {})
        vae_placement = Placement(device, dtype, mapped=vae_file.mapped)
        vae = build_vae(vae_path, strip_vae_prefix(vae_file.tensors), info, vae_overrides, vae_placement)
    else:
        vae = build_vae(path, strip_vae_prefix(tf.tensors), info, overrides.get("vae", {}), placement)
    alphas = tf.tensors.get("alphas_cumprod")
    alphas = default_alphas_cumprod(info.family) if alphas is None else _checked_alphas(path, alphas)
    return Components(
        path=path,
        info=info,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=_tokenizers(info.family),
        alphas_cumprod=alphas,
        device=device,
        dtype=dtype,
        vae_path=vae_path,
    )


def _checked_alphas(path: Path, alphas: torch.Tensor) -> torch.Tensor:
    """The file's ``alphas_cumprod`` as float64: 1-D, at least 2 steps, every value in (0, 1]."""
    values = alphas.to(torch.float64).clone()
    if values.ndim != 1 or len(values) < 2 or not bool(((values > 0) & (values <= 1)).all()):
        raise ModelFileError(
            path, f"alphas_cumprod must be 1-D values in (0, 1], got shape {tuple(values.shape)}"
        )
    return values


def strip_vae_prefix(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """VAE tensors without their checkpoint prefix (``first_stage_model.``/``vae.``), or as-is."""
    for prefix in VAE_PREFIXES:
        sub = convert.sub_state_dict(tensors, prefix)
        if sub:
            return sub
    return {
        k: v
        for k, v in tensors.items()
        if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant"))
    }


def _tokenizers(family: Family) -> dict[str, CLIPTokenizer]:
    """SD1 and SDXL's CLIP-L pad with <|endoftext|>; OpenCLIP encoders (SD2, SDXL-G) pad with "!"."""
    pads = {
        Family.SD1: {"text_encoder": "endoftext"},
        Family.SD2: {"text_encoder": "!"},
        Family.SDXL: {"text_encoder": "endoftext", "text_encoder_2": "!"},
        Family.SDXL_REFINER: {"text_encoder_2": "!"},
    }[family]
    return {name: clip_tokenizer(pad) for name, pad in pads.items()}  # type: ignore[arg-type]


def load_diffusers_folder(
    path: Path, *, device: torch.device, dtype: torch.dtype, vae_path: Path | None = None
) -> Components:
    """Load a diffusers pipeline folder (``model_index.json``) strictly from local files."""
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    local: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}
    info = identify_path(path)
    family = info.family
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **local).to(device)
    if vae_path is not None:
        vae_file = read_tensor_file(vae_path)
        vae_placement = Placement(device, dtype, mapped=vae_file.mapped)
        vae = build_vae(vae_path, strip_vae_prefix(vae_file.tensors), info, {}, vae_placement)
    else:
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **local).to(device)
    encoders: dict[str, TextEncoder] = {}
    for name in ("text_encoder", "text_encoder_2"):
        if index.get(name) and index[name][0] is not None:
            cls = CLIPTextModelWithProjection if index[name][1].endswith("Projection") else CLIPTextModel
            encoder: TextEncoder = cls.from_pretrained(path, subfolder=name, **local)
            encoders[name] = encoder.to(device)  # type: ignore[arg-type]  # transformers' stub for .to
    for module in (unet, vae, *encoders.values()):
        module.eval().requires_grad_(False)
    return Components(
        path,
        info,
        unet,
        vae,
        encoders,
        _tokenizers(family),
        default_alphas_cumprod(family),
        device,
        dtype,
        vae_path,
    )


def _folder_family(path: Path, index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> Family:
    """SDXL by its size conditioning; SD1 (OpenAI CLIP, quick_gelu) vs SD2 (OpenCLIP, gelu) by the encoder."""
    has_clip_l = bool(index.get("text_encoder")) and index["text_encoder"][0] is not None
    if unet_config.get("addition_embed_type") == "text_time":
        return Family.SDXL if has_clip_l else Family.SDXL_REFINER
    if not has_clip_l:
        raise ModelFileError(path, "unknown model family: diffusers folder without a text encoder")
    text_config = json.loads((path / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    return Family.SD1 if text_config.get("hidden_act") == "quick_gelu" else Family.SD2


def load_checkpoint(
    path: Path, *, device: torch.device, dtype: torch.dtype, vae_path: Path | None = None
) -> Components:
    """Load a single-file checkpoint or a diffusers folder; errors are :class:`ModelFileError`."""
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelFileError(path, "a folder checkpoint needs model_index.json (diffusers layout)")
        return load_diffusers_folder(path, device=device, dtype=dtype, vae_path=vae_path)
    return load_single_file(path, device=device, dtype=dtype, vae_path=vae_path)
