"""The ``/sdapi/v1`` list, refresh, extras and png-info endpoints (A1111 shapes; see :mod:`.listing`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from latentstudio import infotext
from latentstudio.api.errors import InputError
from latentstudio.api.imageio import decode_image
from latentstudio.api.sdapi import extras, listing
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.models import (
    ExtrasBatchRequest,
    ExtrasBatchResponse,
    ExtrasSingleRequest,
    ExtrasSingleResponse,
    PngInfoRequest,
    PngInfoResponse,
)
from latentstudio.api.state import ServicesDep

router = APIRouter(tags=["A1111 compatible"])
_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field was refused; `detail[].loc` names it."}
}


@router.post(
    "/extra-single-image", response_model=ExtrasSingleResponse, responses=_REFUSED, summary="Upscale an image"
)
def extra_single_image(req: ExtrasSingleRequest, svc: ServicesDep) -> ExtrasSingleResponse:
    """Built-in upscalers only ("None", "Lanczos", "Nearest"); the PNG keeps its ``parameters`` and gains
    a ``postprocessing`` entry."""
    extras.check_request(req)
    image = decode_image(req.image, "image", max_pixels=svc.settings.max_image_pixels)
    result, text = extras.postprocess(image, req, svc.settings.max_image_pixels)
    return ExtrasSingleResponse(html_info=extras.html_info(text), image=extras.encode_png(result))


@router.post(
    "/extra-batch-images", response_model=ExtrasBatchResponse, responses=_REFUSED, summary="Upscale images"
)
def extra_batch_images(req: ExtrasBatchRequest, svc: ServicesDep) -> ExtrasBatchResponse:
    extras.check_request(req)
    limit = svc.settings.max_image_pixels
    decoded = [
        decode_image(f.data, f"imageList.{i}.data", max_pixels=limit) for i, f in enumerate(req.imageList)
    ]
    images, text = [], ""
    for image in decoded:
        result, text = extras.postprocess(image, req, limit)
        images.append(extras.encode_png(result))
    return ExtrasBatchResponse(html_info=extras.html_info(text), images=images)


@router.post(
    "/png-info", response_model=PngInfoResponse, responses=_REFUSED, summary="Read an image's infotext"
)
def png_info(req: PngInfoRequest, svc: ServicesDep) -> PngInfoResponse:
    """``{info, items, parameters}``: the raw infotext, other text entries, and the parsed parameters."""
    if not req.image.strip():
        return PngInfoResponse(info="", items={}, parameters={})
    image = decode_image(req.image, "image", max_pixels=svc.settings.max_image_pixels)
    text, items = extras.png_info(image)
    return PngInfoResponse(info=text, items=items, parameters=dict(infotext.parse(text)))


@router.post("/interrogate", responses=_REFUSED, summary="Not supported (422)")
def interrogate() -> None:
    raise InputError("model", "interrogation (CLIP / DeepDanbooru captions) is not supported")


@router.get("/samplers", summary="Samplers")
def samplers() -> list[dict[str, Any]]:
    return listing.samplers()


@router.get("/schedulers", summary="Schedulers")
def schedulers() -> list[dict[str, Any]]:
    return listing.schedulers()


@router.get("/upscalers", summary="Upscalers (built-in only)")
def upscalers() -> list[dict[str, Any]]:
    return listing.upscalers()


@router.get("/latent-upscale-modes", summary="Latent upscale modes")
def latent_upscale_modes() -> list[dict[str, str]]:
    return listing.latent_upscale_modes()


@router.get("/sd-models", summary="Checkpoints (hashes null until computed)")
def sd_models(svc: ServicesDep) -> list[dict[str, Any]]:
    return listing.sd_models(svc.manager)


@router.get("/sd-vae", summary="VAE files")
def sd_vae(svc: ServicesDep) -> list[dict[str, str]]:
    return listing.sd_vaes(svc.manager)


@router.get("/loras", summary="LoRA files")
def loras(svc: ServicesDep) -> list[dict[str, Any]]:
    return listing.loras(svc.manager)


@router.get("/embeddings", summary="Textual inversions usable with the current checkpoint, and skipped ones")
def embeddings(svc: ServicesDep) -> dict[str, Any]:
    stored = opts.OptionsStore(svc.settings.data_dir).load().get("sd_model_checkpoint")
    return listing.embeddings(svc.manager, svc.settings, stored if isinstance(stored, str) else None)


@router.post("/refresh-checkpoints", summary="Rescan the models folder")
def refresh_checkpoints(svc: ServicesDep) -> None:
    svc.manager.refresh()


@router.post("/refresh-vae", summary="Rescan the VAE files")
def refresh_vae(svc: ServicesDep) -> None:
    svc.manager.refresh()


@router.post("/refresh-embeddings", summary="Reread the embeddings folder")
def refresh_embeddings(svc: ServicesDep) -> None:
    svc.manager.refresh()


@router.post("/refresh-loras", summary="Rescan the LoRA folders")
def refresh_loras(svc: ServicesDep) -> None:
    svc.manager.lora_library.refresh()


@router.get("/prompt-styles", summary="Styles from styles.csv in the data folder")
def prompt_styles(svc: ServicesDep) -> list[dict[str, str]]:
    return listing.prompt_styles(svc.settings)


@router.get("/face-restorers", summary="Face restorers (none)")
def face_restorers() -> list[dict[str, Any]]:
    return []


@router.get("/hypernetworks", summary="Hypernetworks (none)")
def hypernetworks() -> list[dict[str, Any]]:
    return []


@router.get("/realesrgan-models", summary="RealESRGAN models (none)")
def realesrgan_models() -> list[dict[str, Any]]:
    return []


@router.get("/scripts", summary="Scripts (none)")
def scripts() -> dict[str, list[str]]:
    return listing.scripts()


@router.get("/script-info", summary="Script arguments (none)")
def script_info() -> list[dict[str, Any]]:
    return []


@router.get("/extensions", summary="Extensions (none)")
def extensions() -> list[dict[str, Any]]:
    return []
