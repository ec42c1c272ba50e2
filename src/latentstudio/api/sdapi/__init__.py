"""The AUTOMATIC1111-compatible API, ``/sdapi/v1`` (reference/a1111-compat.md §1).

Request models mirror A1111's field names and API defaults (:mod:`.models`); :mod:`.convert` turns them into
jobs on the shared job service and refuses, with a 422 naming the field, whatever would give a different
picture than A1111; :mod:`.response` builds ``{images, parameters, info}``; :mod:`.options` holds the
settings. See the README's "A1111 API compatibility" section for every deviation.
"""

from fastapi import APIRouter

from latentstudio.api.sdapi import catalog_routes, controlnet_routes, routes

router = APIRouter(prefix="/sdapi/v1")
router.include_router(routes.router)
router.include_router(catalog_routes.router)
controlnet_router = controlnet_routes.router  # the ControlNet extension's /controlnet/... beside /sdapi/v1

__all__ = ["controlnet_router", "router"]
