"""A1111 request → :class:`JobSpec`: options, overrides, sampler names, styles, refusals (pure, no I/O).

Per field (reference/a1111-compat.md §1.4–1.6, §6): honoured fields become :class:`GenerationParams`;
fields that cannot change the picture are accepted and ignored (``force_task_id``, ``comments``,
``do_not_save_*``, ``image_cfg_scale`` with a non-edit model, the churn fields (``s_churn``, ``s_tmin``,
``s_tmax``, ``s_noise``) for samplers A1111 does not pass them to,
``hr_*`` and ``firstpass_image`` with ``enable_hr`` false, mask settings without a mask); anything that
would make the picture differ from A1111's is refused with a 422 naming the field: face restoration,
refiner, alwayson scripts but the ControlNet extension's units, several init images,
``disable_extra_networks`` with network tags in the prompt, unknown samplers,
schedulers, styles, checkpoints (``hr_checkpoint_name`` too), VAEs and options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from latentstudio.api.common import INPAINT_FIELDS
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.models import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from latentstudio.control.units import MAX_UNITS, ControlUnit
from latentstudio.core import FieldError
from latentstudio.jobs import JobKind, JobSpec
from latentstudio.pipeline import scripts
from latentstudio.pipeline.params import (
    GenerationParams,
    Hires,
    Inpaint,
    Policy,
    ResizeMode,
    ResolvedParams,
    TilingMode,
)
from latentstudio.prompts.errors import PromptError
from latentstudio.prompts.networks import extract_networks
from latentstudio.prompts.styles import Style, apply_styles
from latentstudio.samplers.noise import RngSource

DEFAULT_SAMPLER = "Euler"  # A1111's API default (``sampler_index``)
CONTROLNET = "controlnet"  # the sd-webui-controlnet script's alwayson_scripts key (A1111 lowercases titles)
# a request's enabled ControlNet units, each one's index in alwayson_scripts.controlnet.args, and that list's
# field name
Control = tuple[tuple[ControlUnit, ...], tuple[int, ...], str]
_PARAM_FIELDS = {  # a GenerationParams field (dotted when nested) → the A1111 request field or option
    "sampler": "sampler_name",
    "inpainting_mask_weight": "override_settings.inpainting_mask_weight",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "eta_noise_seed_delta": "override_settings.eta_noise_seed_delta",
    "color_correction": "override_settings.img2img_color_correction",
    "extra_noise": "override_settings.img2img_extra_noise", "sigma_min": "override_settings.sigma_min",
    "sigma_max": "override_settings.sigma_max", "rho": "override_settings.rho",
    "hires": "enable_hr", "hires.scale": "hr_scale", "hires.resize_x": "hr_resize_x",
    "hires.resize_y": "hr_resize_y", "hires.upscaler": "hr_upscaler", "hires.steps": "hr_second_pass_steps",
    "hires.sampler": "hr_sampler_name", "hires.scheduler": "hr_scheduler", "hires.prompt": "hr_prompt",
    "hires.negative_prompt": "hr_negative_prompt", "hires.denoising_strength": "denoising_strength",
    "hires.checkpoint": "hr_checkpoint_name", **INPAINT_FIELDS,
}  # fmt: skip


@dataclass(frozen=True)
class CheckpointRef:
    """A discovered checkpoint: ``name`` (what a job names it by), A1111 ``title`` and exact aliases."""

    name: str
    title: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class ServerCatalog:
    """What the server has: checkpoints, VAE names, styles, and its limits."""

    checkpoints: tuple[CheckpointRef, ...] = ()
    vaes: tuple[str, ...] = ()
    styles: Mapping[str, Style] = field(default_factory=dict)
    max_side: int = 2048
    upscalers: tuple[str, ...] = ()  # A1111's sd_upscalers order (scripts name them by index)

    def checkpoint(self, query: str, field_name: str) -> CheckpointRef:
        """The checkpoint ``query`` names exactly (title, name, stem, model name, shorthash, path).

        A1111 drops an unknown name silently (and loads its default); we refuse it, listing the titles.
        """
        for ref in reversed(self.checkpoints):  # a later checkpoint wins a shared alias, as in A1111
            if query in ref.aliases or query.replace("\\", "/") in ref.aliases:
                return ref
        titles = ", ".join(ref.title for ref in self.checkpoints[:50]) or "none"
        raise FieldError(field_name, f"unknown checkpoint {query!r}; available: {titles}")

    def check_models(self, values: Mapping[str, opts.Value], prefix: str) -> dict[str, opts.Value]:
        """``values`` with ``sd_model_checkpoint`` as the checkpoint's name; unknown models refused."""
        out = dict(values)
        query = values.get("sd_model_checkpoint")
        if isinstance(query, str):
            out["sd_model_checkpoint"] = self.checkpoint(query, f"{prefix}sd_model_checkpoint").name
        vae = values.get("sd_vae")
        if isinstance(vae, str) and vae not in ("Automatic", "None", *self.vaes):
            allowed = ", ".join(["Automatic", "None", *self.vaes[:50]])
            raise FieldError(f"{prefix}sd_vae", f"unknown VAE {vae!r}; allowed: {allowed}")
        return out


@dataclass(frozen=True)
class Prepared:
    """A request made ready to queue: the spec, the echo A1111 returns, and the options it ran with."""

    spec: JobSpec
    parameters: dict[str, Any]
    options: Mapping[str, opts.Value]
    persist: Mapping[str, opts.Value]  # overrides to keep (override_settings_restore_afterwards false)
    styles: tuple[str, ...] = ()
    control: Control = ((), (), "")

    def request_field(self, field_name: str) -> str:
        """The request field a spec field comes from (:func:`request_field` with this request's units)."""
        return request_field(field_name, self.control)


def effective_options(
    stored: Mapping[str, opts.Value], overrides: Mapping[str, Any] | None, catalog: ServerCatalog
) -> tuple[dict[str, opts.Value], dict[str, opts.Value]]:
    """(stored options overlaid with the checked ``override_settings``, the checked overrides)."""
    prefix = "override_settings."
    checked = catalog.check_models(opts.check(overrides or {}, prefix), prefix)
    for key in ("ESRGAN_tile", "ESRGAN_tile_overlap"):  # read by the upscalers from the stored options
        if key in checked and checked[key] != stored[key]:
            raise FieldError(
                f"{prefix}{key}", "a stored setting only here: set it with POST /sdapi/v1/options"
            )
    return {**stored, **checked}, checked


def refuse_unsupported(req: GenerationRequest, options: Mapping[str, opts.Value], sampler: str) -> None:
    """422 for every field that would make the picture differ from A1111's (see the module docstring)."""
    restore = req.restore_faces if req.restore_faces is not None else options["face_restoration"]
    refusals: list[tuple[bool, str, str]] = [
        (bool(restore), "restore_faces", "face restoration is not supported"),
        (req.refiner_checkpoint not in (None, "", "None"), "refiner_checkpoint", "refiner is not supported"),
    ]
    if isinstance(req, Img2ImgRequest):
        refusals += [
            (len(req.init_images or ()) > 1, "init_images", "one init image per request is supported"),
        ]
    for refused, field_name, message in refusals:
        if refused:
            raise FieldError(field_name, message)
    for name in req.alwayson_scripts:
        if name.lower() != CONTROLNET:
            raise FieldError(f"alwayson_scripts.{name}", f"Script '{name}' not found (no scripts here)")


def control_args(req: GenerationRequest) -> tuple[str, list[object]]:
    """``(field, units)``: the ``alwayson_scripts.controlnet.args`` list (A1111 finds a script by its
    title in any case), or an empty list."""
    for name, value in req.alwayson_scripts.items():
        if name.lower() != CONTROLNET:
            continue
        field = f"alwayson_scripts.{name}"
        if not isinstance(value, dict) or not isinstance(value.get("args", []), list):
            raise FieldError(field, 'expected {"args": [unit, ...]}')
        extra = sorted(set(value) - {"args"})
        if extra:
            raise FieldError(f"{field}.{extra[0]}", "unknown field; a script takes only args")
        args: list[object] = value.get("args", [])
        if len(args) > MAX_UNITS:
            raise FieldError(f"{field}.args", f"at most {MAX_UNITS} ControlNet units, got {len(args)}")
        return f"{field}.args", args
    return f"alwayson_scripts.{CONTROLNET}.args", []


def _styled(req: GenerationRequest, styles: Mapping[str, Style]) -> tuple[str, str]:
    try:
        return apply_styles(req.prompt, req.negative_prompt, styles, req.styles or [])
    except PromptError as e:
        raise FieldError("styles", str(e)) from None


def request_field(field_name: str, control: Control = ((), (), "")) -> str:
    """The A1111 request field (or option) a :class:`GenerationParams` field comes from; ``control.<i>.…``
    is the unit's place in ``alwayson_scripts.controlnet.args``."""
    head, _, rest = field_name.partition(".")
    _, indices, where = control
    if head == "control" and rest:
        index, _, inner = rest.partition(".")
        if index.isdigit() and int(index) < len(indices):
            return f"{where}.{indices[int(index)]}" + (f".{inner}" if inner else "")
    if head == "control":
        return where
    return _PARAM_FIELDS.get(field_name, field_name)


def _hires(
    req: Txt2ImgRequest,
    options: Mapping[str, opts.Value],
    catalog: ServerCatalog,
    firstpass: Image.Image | None,
) -> Hires:
    """The hires-fix fields of a txt2img request (A1111's "Use same …" labels mean the first pass's);
    ``firstpass``: the decoded ``firstpass_image``."""
    same = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint")
    if firstpass is not None and not (min(firstpass.size) >= 8 and max(firstpass.size) <= catalog.max_side):
        raise FieldError("firstpass_image", f"each side must be within [8, {catalog.max_side}] pixels, got "
                         f"{firstpass.width}x{firstpass.height}")  # fmt: skip
    checkpoint = None
    if req.hr_checkpoint_name not in same:
        checkpoint = catalog.checkpoint(str(req.hr_checkpoint_name), "hr_checkpoint_name").name
    sampler = None if req.hr_sampler_name in same else req.hr_sampler_name
    scheduler = None if req.hr_scheduler in same else req.hr_scheduler
    return Hires(
        scale=req.hr_scale, resize_x=req.hr_resize_x, resize_y=req.hr_resize_y,
        upscaler=req.hr_upscaler or str(options.get("latent_upscale_default_mode", "Latent")),
        steps=req.hr_second_pass_steps, sampler=sampler, scheduler=scheduler, prompt=req.hr_prompt,
        negative_prompt=req.hr_negative_prompt, checkpoint=checkpoint, firstpass_image=firstpass,
        denoising_strength=0.75 if req.denoising_strength is None else req.denoising_strength,
    )  # fmt: skip


def _inpainting(
    req: Img2ImgRequest, mask: Image.Image, options: Mapping[str, opts.Value], latent_mask: Image.Image | None
) -> dict[str, Any]:
    """The inpainting fields of an img2img request with a mask (A1111: an int ``mask_blur`` sets both
    ``mask_blur_x`` and ``mask_blur_y``)."""
    same = req.mask_blur
    blur_x, blur_y = (same, same) if same is not None else (req.mask_blur_x, req.mask_blur_y)
    inpaint = Inpaint(
        mask, blur=blur_x, blur_y=blur_y, fill=req.inpainting_fill, only_masked=req.inpaint_full_res,
        padding=req.inpaint_full_res_padding, invert=bool(req.inpainting_mask_invert),
        round_mask=req.mask_round, latent_mask=latent_mask,
    )  # fmt: skip
    weight = float(options["inpainting_mask_weight"])  # type: ignore[arg-type]
    return {"inpaint": inpaint, "inpainting_mask_weight": weight}


def _tiling(req: GenerationRequest, options: Mapping[str, opts.Value]) -> TilingMode:
    """A1111: the request's ``tiling``, None meaning the ``tiling`` option; our ``tiling_axes`` option picks
    the axes it wraps ("both" is A1111's tiling)."""
    tiling = req.tiling if req.tiling is not None else bool(options["tiling"])
    return TilingMode(str(options["tiling_axes"])) if tiling else TilingMode.NONE


_SIGMA_DEFAULTS = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}  # A1111 Sampler's own


def _sampler_fields(req: GenerationRequest, options: Mapping[str, opts.Value]) -> dict[str, Any]:
    """The churn, NGMS, start-noise and schedule fields as A1111 v1.10.1 resolves them.

    ``s_churn``/``s_tmin``/``s_tmax``/``s_noise`` (``processing.fill_fields_from_opts`` then
    ``Sampler.initialize`` in ``sd_samplers_common.py``): the request's value, or the option when the
    request leaves it out; but an option set away from its default (0, 0, 0 = ∞, 1) wins over the request.
    ``s_min_uncond`` and ``initial_noise_multiplier`` (img2img): the request's, else the option's. The
    rest are options only (``s_min_uncond_all``, ``img2img_extra_noise``, ``sigma_min``/``sigma_max``/``rho``,
    ``sgm_noise_multiplier``, ``img2img_fix_steps``)."""
    fields: dict[str, Any] = {}
    for name, default in _SIGMA_DEFAULTS.items():
        option, asked = float(options[name]), getattr(req, name)  # type: ignore[arg-type]
        fields[name] = option if option != default or asked is None else float(asked)
    number = {key: float(options[key]) for key in ("s_min_uncond", "sigma_min", "sigma_max", "rho")}  # type: ignore[arg-type]
    if req.s_min_uncond is not None:
        number["s_min_uncond"] = float(req.s_min_uncond)
    fields |= number
    if isinstance(req, Img2ImgRequest):
        multiplier = req.initial_noise_multiplier
        fields["initial_noise_multiplier"] = float(
            options["initial_noise_multiplier"] if multiplier is None else multiplier  # type: ignore[arg-type]
        )
    return fields | {
        "s_min_uncond_all": bool(options["s_min_uncond_all"]),
        "extra_noise": float(options["img2img_extra_noise"]),  # type: ignore[arg-type]
        "sgm_noise_multiplier": bool(options["sgm_noise_multiplier"]),
        "img2img_fix_steps": bool(options["img2img_fix_steps"]),
    }


def generation_params(
    req: GenerationRequest,
    options: Mapping[str, opts.Value],
    catalog: ServerCatalog,
    init: Image.Image | None,
    mask: Image.Image | None = None,
    *,
    control: Control = ((), (), ""),
    latent_mask: Image.Image | None = None,
    firstpass: Image.Image | None = None,
) -> ResolvedParams:
    """The request's parameters, resolved once (:meth:`GenerationParams.resolved`) under the options."""
    prompt, negative = _styled(req, catalog.styles)
    if req.disable_extra_networks and any(extract_networks(text)[1] for text in (prompt, negative)):
        raise FieldError("disable_extra_networks", "not supported: remove the <lora:…> tags instead")
    resize = req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0
    extra: dict[str, Any] = _sampler_fields(req, options)
    if isinstance(req, Img2ImgRequest):
        extra |= {
            "denoising_strength": req.denoising_strength, "resize_mode": ResizeMode(req.resize_mode),
            "color_correction": bool(options["img2img_color_correction"]),
        }  # fmt: skip
        if mask is not None:
            extra.update(_inpainting(req, mask, options, latent_mask))
    if isinstance(req, Txt2ImgRequest) and req.enable_hr:
        extra["hires"] = _hires(req, options, catalog, firstpass)  # else firstpass_image is ignored (A1111)
    params = GenerationParams(
        prompt=prompt, negative_prompt=negative, scheduler=req.scheduler or "Automatic",
        sampler=req.sampler_name or req.sampler_index or DEFAULT_SAMPLER, steps=req.steps,
        cfg_scale=req.cfg_scale, seed=req.seed, subseed=req.subseed, subseed_strength=req.subseed_strength,
        seed_resize_from_w=req.seed_resize_from_w if resize else 0,
        seed_resize_from_h=req.seed_resize_from_h if resize else 0,
        width=req.width, height=req.height, batch_size=req.batch_size, n_iter=req.n_iter,
        clip_skip=int(options["CLIP_stop_at_last_layers"]),  # type: ignore[arg-type]
        eta=req.eta, rng=RngSource(str(options["randn_source"])),
        eta_noise_seed_delta=int(options["eta_noise_seed_delta"]),  # type: ignore[arg-type]
        init_image=init, emphasis=str(options["emphasis"]),
        old_prompt_editing=bool(options["use_old_scheduling"]),
        pad_conds=bool(options["pad_cond_uncond"]), pad_conds_v0=bool(options["pad_cond_uncond_v0"]),
        control=control[0], tiling=_tiling(req, options), **extra,
    )  # fmt: skip
    try:
        resolved = params.resolved(policy(options, catalog.max_side))
    except FieldError as e:
        sampler = "sampler_name" if req.sampler_name else "sampler_index"
        name = sampler if e.field == "sampler" else request_field(e.field, control)
        raise FieldError(name, e.message) from None
    refuse_unsupported(req, options, resolved.sampler)
    if req.script_name:
        env = scripts.ScriptEnv(
            upscalers=catalog.upscalers, vaes=catalog.vaes,
            checkpoint=lambda query: catalog.checkpoint(query, "script_args").name,
        )  # fmt: skip
        resolved = scripts.prepare(req.script_name, req.script_args, resolved,
                                   policy=policy(options, catalog.max_side), env=env,
                                   random_seed=req.seed == -1)  # fmt: skip
    return resolved


def policy(options: Mapping[str, opts.Value], max_side: int) -> Policy:
    """The server's limit and the A1111 options :meth:`GenerationParams.resolved` applies."""
    return Policy(
        max_side=max_side,
        eta_ddim=float(options["eta_ddim"]),  # type: ignore[arg-type]
        eta_ancestral=float(options["eta_ancestral"]),  # type: ignore[arg-type]
        background=str(options["img2img_background_color"]),
    )


def echo(req: GenerationRequest) -> dict[str, Any]:
    """A1111's ``parameters``: the request with every default (seed stays -1); for img2img the images are
    left out (null) unless ``include_init_images``, which itself is never echoed."""
    parameters = req.model_dump(mode="json")
    if isinstance(req, Img2ImgRequest):
        parameters.pop("include_init_images", None)
        if not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
    return parameters


def prepare(
    req: GenerationRequest,
    stored: Mapping[str, opts.Value],
    catalog: ServerCatalog,
    init_images: Sequence[Image.Image] = (),
    mask: Image.Image | None = None,
    *,
    control: Control = ((), (), ""),
    latent_mask: Image.Image | None = None,
    firstpass: Image.Image | None = None,
) -> Prepared:
    """Everything a txt2img / img2img request needs to be queued (``init_images``, ``mask`` and
    ``latent_mask`` decoded by the caller; as A1111, a latent mask without a mask is ignored).

    Raises :class:`FieldError` naming the field for anything refused.
    """
    options, overrides = effective_options(stored, req.override_settings, catalog)
    init = None
    if isinstance(req, Img2ImgRequest):
        if not init_images:
            raise FieldError("init_images", "Init image not found")
        init = init_images[0]  # flattened onto img2img_background_color by GenerationParams.resolved
        if req.mask and mask is None:
            raise FieldError("mask", "the mask image could not be read")
        if req.mask and req.latent_mask and latent_mask is None:
            raise FieldError("latent_mask", "the latent mask image could not be read")
    params = generation_params(
        req, options, catalog, init, mask, control=control, latent_mask=latent_mask, firstpass=firstpass
    )
    checkpoint = options["sd_model_checkpoint"]
    spec = JobSpec(
        JobKind.IMG2IMG if init is not None else JobKind.TXT2IMG,
        params,
        checkpoint=str(checkpoint) if checkpoint else None,
        vae=str(options["sd_vae"]),
        source="sdapi",
    )
    persist = {} if req.override_settings_restore_afterwards else overrides
    return Prepared(spec, echo(req), options, persist, tuple(req.styles or ()), control)
