"""The ``/sdapi/v1`` list, refresh and png-info endpoints (A1111 shapes; see :mod:`.listing`).

Listings read the catalog on request threads (file names and headers; no loaded weights). Refreshes are
commands the job worker runs between jobs (like A1111, which takes its queue lock for them): the call
answers once the rescan is done, awaiting it without holding a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from latentstudio import infotext
from latentstudio.api.imageio import decode_image
from latentstudio.api.sdapi import extras, listing
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.models import PngInfoRequest, PngInfoResponse
from latentstudio.api.state import ServicesDep
from latentstudio.core import FieldError
from latentstudio.pipeline import scripts as pipeline_scripts

router = APIRouter(tags=["A1111 compatible"])
_REFUSED: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field was refused; `detail[].loc` names it."}
}


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
    raise FieldError("model", "interrogation (CLIP / DeepDanbooru captions) is not supported")


@router.get("/samplers", summary="Samplers")
def samplers() -> list[dict[str, Any]]:
    return listing.samplers()


@router.get("/schedulers", summary="Schedulers")
def schedulers() -> list[dict[str, Any]]:
    return listing.schedulers()


@router.get("/upscalers", summary="Upscalers: built-in, then model files")
def upscalers(svc: ServicesDep) -> list[dict[str, Any]]:
    """None, Lanczos, Nearest, then the spandrel models in ``models/ESRGAN``, ``models/RealESRGAN``, …"""
    return listing.upscalers(svc.jobs.upscalers())


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
async def refresh_checkpoints(svc: ServicesDep) -> None:
    await asyncio.wrap_future(svc.jobs.refresh_models())


@router.post("/refresh-vae", summary="Rescan the VAE files")
async def refresh_vae(svc: ServicesDep) -> None:
    await asyncio.wrap_future(svc.jobs.refresh_models())


@router.post("/refresh-embeddings", summary="Reread the embeddings folder")
async def refresh_embeddings(svc: ServicesDep) -> None:
    await asyncio.wrap_future(svc.jobs.refresh_models())


@router.post("/refresh-loras", summary="Rescan the LoRA folders")
async def refresh_loras(svc: ServicesDep) -> None:
    await asyncio.wrap_future(svc.jobs.refresh_loras())


@router.get("/prompt-styles", summary="Styles from styles.csv in the data folder")
def prompt_styles(svc: ServicesDep) -> list[dict[str, str]]:
    return listing.prompt_styles(svc.settings)


@router.get("/face-restorers", summary="Face restorers with weights on this server")
def face_restorers(svc: ServicesDep) -> list[dict[str, Any]]:
    """GFPGAN / CodeFormer, each when its folder has a weights file (nothing is downloaded)."""
    return [{"name": f.name, "cmd_dir": f.cmd_dir} for f in svc.jobs.face_restorers()]


@router.get("/hypernetworks", summary="Hypernetwork files in models/hypernetworks")
def hypernetworks(svc: ServicesDep) -> list[dict[str, Any]]:
    """``[{name, path}]``: the ``*.pt`` files below the folder, in A1111's order."""
    return [{"name": name, "path": str(path)} for name, path in svc.manager.hypernetworks.files().items()]


@router.get("/realesrgan-models", summary="The model files in models/RealESRGAN")
def realesrgan_models(svc: ServicesDep) -> list[dict[str, Any]]:
    return [
        {"name": u.name, "path": u.model_path, "scale": u.scale}
        for u in svc.jobs.upscalers()
        if u.model_name == "RealESRGAN"
    ]


@router.get("/scripts", summary="Selectable scripts per tab")
def scripts() -> dict[str, list[str]]:
    return listing.scripts()


@router.get("/script-info", summary="Every script's arguments, in script_args order")
def script_info(svc: ServicesDep) -> list[dict[str, Any]]:
    upscalers = [u.name for u in svc.jobs.upscalers()]
    return [*pipeline_scripts.script_info(False, upscalers), *pipeline_scripts.script_info(True, upscalers)]


@router.get("/extensions", summary="Extensions (none)")
def extensions() -> list[dict[str, Any]]:
    return []
