"""What a file's ``latentstudio.architecture`` metadata may say: every field the loader passes on to the
diffusers / transformers constructors, with its type and range, so an untrusted file can neither divide by
zero in a constructor nor make one allocate terabytes (``max_position_embeddings: 2**40`` sizes a real
buffer even when the weights are built on the ``meta`` device) nor name code (``act_fn: "os.system"``).

Unknown fields are refused. The ranges are wide enough for every real SD1/SD2/SDXL and the built-in model,
and far below anything that costs memory or time before the weights are checked against the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Count = Annotated[int, Field(ge=1, le=64)]
Width = Annotated[int, Field(ge=1, le=16384)]
Heads = Annotated[int, Field(ge=1, le=1024)]
Channels = Annotated[int, Field(ge=1, le=64)]
Groups = Annotated[int, Field(ge=1, le=1024)]
Real = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Epsilon = Annotated[float, Field(gt=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]
Short = Annotated[str, Field(max_length=64)]
Activation = Literal["silu", "swish", "gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "mish", "relu"]
Levels = Annotated[list[Width], Field(min_length=1, max_length=8)]
PerLevel = Annotated[list[Heads], Field(min_length=1, max_length=8)]
CountPerLevel = Annotated[list[Count], Field(min_length=1, max_length=8)]
DownBlocks = Annotated[list[Literal["CrossAttnDownBlock2D", "DownBlock2D"]], Field(max_length=8)]
UpBlocks = Annotated[list[Literal["CrossAttnUpBlock2D", "UpBlock2D"]], Field(max_length=8)]


class _Arch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    class_name: Short | None = Field(default=None, alias="_class_name")
    diffusers_version: Short | None = Field(default=None, alias="_diffusers_version")
    name_or_path: Short | None = Field(default=None, alias="_name_or_path")


class UnetArch(_Arch):
    """``UNet2DConditionModel`` fields (SD1/SD2/SDXL shapes; no class or encoder-hidden embeddings)."""

    act_fn: Activation | None = None
    addition_embed_type: Literal["text_time"] | None = None
    addition_embed_type_num_heads: Heads | None = None
    addition_time_embed_dim: Width | None = None
    attention_head_dim: Heads | PerLevel | None = None
    attention_type: Literal["default"] | None = None
    block_out_channels: Levels | None = None
    center_input_sample: bool | None = None
    class_embed_type: None = None
    class_embeddings_concat: bool | None = None
    conv_in_kernel: Literal[1, 3, 5, 7] | None = None
    conv_out_kernel: Literal[1, 3, 5, 7] | None = None
    cross_attention_dim: Width | None = None
    cross_attention_norm: None = None
    down_block_types: (
        Annotated[list[Literal["CrossAttnDownBlock2D", "DownBlock2D"]], Field(max_length=8)] | None
    ) = None
    downsample_padding: Annotated[int, Field(ge=0, le=3)] | None = None
    dropout: Probability | None = None
    dual_cross_attention: bool | None = None
    encoder_hid_dim: None = None
    encoder_hid_dim_type: None = None
    flip_sin_to_cos: bool | None = None
    freq_shift: Annotated[int, Field(ge=0, le=16)] | None = None
    in_channels: Channels | None = None
    layers_per_block: Count | None = None
    mid_block_only_cross_attention: bool | None = None
    mid_block_scale_factor: Real | None = None
    mid_block_type: Literal["UNetMidBlock2DCrossAttn", "UNetMidBlock2D"] | None = None
    norm_eps: Epsilon | None = None
    norm_num_groups: Groups | None = None
    num_attention_heads: Heads | PerLevel | None = None
    num_class_embeds: None = None
    only_cross_attention: bool | None = None
    out_channels: Channels | None = None
    projection_class_embeddings_input_dim: Width | None = None
    resnet_out_scale_factor: Real | None = None
    resnet_skip_time_act: bool | None = None
    resnet_time_scale_shift: Literal["default", "scale_shift"] | None = None
    reverse_transformer_layers_per_block: None = None
    sample_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    time_cond_proj_dim: None = None
    time_embedding_act_fn: Activation | None = None
    time_embedding_dim: Width | None = None
    time_embedding_type: Literal["positional"] | None = None
    timestep_post_act: Activation | None = None
    transformer_layers_per_block: Count | Annotated[list[Count], Field(min_length=1, max_length=8)] | None = (
        None
    )
    up_block_types: (
        Annotated[list[Literal["CrossAttnUpBlock2D", "UpBlock2D"]], Field(max_length=8)] | None
    ) = None
    upcast_attention: bool | None = None
    use_linear_projection: bool | None = None


class VaeArch(_Arch):
    """``AutoencoderKL`` fields."""

    act_fn: Activation | None = None
    block_out_channels: Levels | None = None
    down_block_types: Annotated[list[Literal["DownEncoderBlock2D"]], Field(max_length=8)] | None = None
    force_upcast: bool | None = None
    in_channels: Channels | None = None
    latent_channels: Channels | None = None
    latents_mean: Annotated[list[Real], Field(max_length=64)] | None = None
    latents_std: Annotated[list[Real], Field(max_length=64)] | None = None
    layers_per_block: Count | None = None
    mid_block_add_attention: bool | None = None
    norm_num_groups: Groups | None = None
    out_channels: Channels | None = None
    sample_size: Annotated[int, Field(ge=1, le=8192)] | None = None
    scaling_factor: Real | None = None
    shift_factor: Real | None = None
    up_block_types: Annotated[list[Literal["UpDecoderBlock2D"]], Field(max_length=8)] | None = None
    use_post_quant_conv: bool | None = None
    use_quant_conv: bool | None = None


class TextEncoderArch(_Arch):
    """``CLIPTextConfig`` fields."""

    architectures: Annotated[list[Short], Field(max_length=4)] | None = None
    attention_dropout: Probability | None = None
    bos_token_id: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    dropout: Probability | None = None
    eos_token_id: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    hidden_act: Activation | None = None
    hidden_size: Width | None = None
    initializer_factor: Real | None = None
    initializer_range: Real | None = None
    intermediate_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    layer_norm_eps: Epsilon | None = None
    max_position_embeddings: Annotated[int, Field(ge=1, le=1024)] | None = None
    model_type: Literal["clip_text_model"] | None = None
    num_attention_heads: Heads | None = None
    num_hidden_layers: Annotated[int, Field(ge=1, le=128)] | None = None
    pad_token_id: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    projection_dim: Width | None = None
    torch_dtype: Short | None = None
    transformers_version: Short | None = None
    vocab_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class ControlNetArch(_Arch):
    """``ControlNetModel`` fields a ControlNet file's shapes cannot tell (the rest come from its shapes): what
    ``latentstudio train controlnet`` records for a base model whose UNet differs from its family's."""

    act_fn: Activation | None = None
    attention_head_dim: Heads | PerLevel | None = None
    flip_sin_to_cos: bool | None = None
    freq_shift: Annotated[int, Field(ge=0, le=16)] | None = None
    norm_eps: Epsilon | None = None
    norm_num_groups: Groups | None = None
    only_cross_attention: bool | None = None
    resnet_time_scale_shift: Literal["default", "scale_shift"] | None = None
    upcast_attention: bool | None = None


COMPONENTS: dict[str, type[_Arch]] = {
    "controlnet": ControlNetArch,
    "unet": UnetArch,
    "vae": VaeArch,
    "text_encoder": TextEncoderArch,
    "text_encoder_2": TextEncoderArch,
}


def check_architecture(value: dict[str, Any]) -> str | None:
    """None when every component and field is allowed and in range, else the first problem in one line
    (``unet.attention_head_dim: Input should be greater than or equal to 1``)."""
    for component, fields in value.items():
        schema = COMPONENTS.get(component)
        if schema is None:
            return f"unknown component {component[:40]!r}; allowed: {', '.join(COMPONENTS)}"
        try:
            schema.model_validate(fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part)[:40] for part in (component, *first.get("loc", ())))
            return f"{where}: {first.get('msg', 'invalid')}"
    return None
