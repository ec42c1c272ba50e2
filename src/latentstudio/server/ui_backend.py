"""The web UI's :class:`~latentstudio.ui.backend.Backend`, implemented with the A1111 layer's conversion
(here, in the composition root, because ``api`` never imports ``ui``).

A UI generation is an ``/sdapi/v1`` request built from the controls: the same stored settings, styles,
checks and refusals, queued on the same job service (``source`` "ui"). Every layer refuses with one
:class:`~latentstudio.core.FieldError` naming the field; schema, queue and checkpoint refusals become one
here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from PIL import Image
from pydantic import ValidationError

from latentstudio.api.common import extras_spec
from latentstudio.api.sdapi import extras, listing, pasting
from latentstudio.api.sdapi import options as opts
from latentstudio.api.sdapi.convert import prepare
from latentstudio.api.sdapi.models import ExtrasSingleRequest, Img2ImgRequest, Txt2ImgRequest
from latentstudio.api.sdapi.routes import WAIT_SECONDS
from latentstudio.api.state import Services
from latentstudio.config import Settings
from latentstudio.core import FieldError
from latentstudio.jobs import JobRecord, JobService, JobStatus
from latentstudio.jobs.model import NoCheckpointError, QueueFullError
from latentstudio.models.discovery import CheckpointInfo
from latentstudio.models.families import Family, FamilyInfo
from latentstudio.models.files import ModelFileError
from latentstudio.models.manager import ModelManager, ModelNotFoundError
from latentstudio.pipeline import scripts
from latentstudio.postprocess.upscalers import BUILTIN_UPSCALERS
from latentstudio.prompts.counter import count_tokens
from latentstudio.samplers import SAMPLER_INFO, SCHEDULER_INFO
from latentstudio.server import ui_control
from latentstudio.ui.backend import Catalog, ControlInput, ControlModule, Kind, OptionField, ScriptField

# The settings the Settings tab offers: the ones that change images (A1111's "Stable Diffusion" and
# "Sampler parameters" pages), in that order.
SETTINGS_KEYS = (
    "CLIP_stop_at_last_layers",
    "randn_source",
    "eta_noise_seed_delta",
    "eta_ancestral",
    "eta_ddim",
    "s_noise",
    "emphasis",
    "use_old_scheduling",
    "pad_cond_uncond",
    "pad_cond_uncond_v0",
    "img2img_background_color",
    "img2img_color_correction",
    "tiling",
    "tiling_axes",
)


@contextmanager
def field_errors() -> Iterator[None]:
    """Turn the request schema's, the queue's and the models folder's refusals into :class:`FieldError` (every
    layer's own refusals already are one)."""
    try:
        yield
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        raise FieldError(where or "request", str(first.get("msg", "invalid"))) from None
    except QueueFullError as e:
        raise FieldError("queue", f"{e} (try again in {e.retry_after} s)") from None
    except NoCheckpointError as e:
        raise FieldError("checkpoint", str(e)) from None


class SdapiBackend:
    """:class:`~latentstudio.ui.backend.Backend` over the server's :class:`Services`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = opts.OptionsStore(services.settings.data_dir)

    @property
    def jobs(self) -> JobService:
        return self.services.jobs

    def catalog(self) -> Catalog:
        svc = self.services
        stored = self.store.load()
        current = listing.current_checkpoint(svc.manager, _str(stored.get("sd_model_checkpoint")))
        checkpoints = listing.sd_models(svc.manager)
        embeddings = listing.embeddings(svc.manager, svc.settings, _str(stored.get("sd_model_checkpoint")))
        return Catalog(
            samplers=list(SAMPLER_INFO),
            schedulers=[s.label for s in SCHEDULER_INFO.values()],
            checkpoints=[c["title"] for c in checkpoints],
            current_checkpoint=next(
                (
                    c["title"]
                    for c in checkpoints
                    if current is not None and c["filename"] == str(current.path.resolve())
                ),
                None,
            ),
            vaes=["Automatic", "None", *(v["model_name"] for v in listing.sd_vaes(svc.manager))],
            current_vae=str(stored.get("sd_vae") or "Automatic"),
            upscalers=[u.name for u in svc.jobs.upscalers()],
            latent_upscalers=[m["name"] for m in listing.latent_upscale_modes()],
            loras=[lora["name"] for lora in listing.loras(svc.manager)],
            embeddings=sorted(embeddings["loaded"]),
            styles=[s["name"] for s in listing.prompt_styles(svc.settings)],
            face_restorers=[f.name for f in svc.jobs.face_restorers()],
            native_size=_native_size(svc.manager, current),
            control_models=ui_control.control_models(svc.jobs.worker.controls, _family(svc.manager, current)),
        )

    async def refresh(self) -> None:
        await asyncio.wrap_future(self.services.jobs.refresh_models())

    def submit(
        self,
        kind: Kind,
        fields: Mapping[str, Any],
        init: Image.Image | None = None,
        mask: Image.Image | None = None,
        controls: Sequence[ControlInput | None] = (),
    ) -> JobRecord:
        svc = self.services
        with field_errors():
            stored = self.store.load()
            control = ui_control.units(controls, svc.settings.max_image_pixels)
            if kind == "txt2img":
                request: Txt2ImgRequest | Img2ImgRequest = Txt2ImgRequest.model_validate(dict(fields))
                prepared = prepare(request, stored, self._catalog(), control=control)
            else:
                if init is None:
                    raise FieldError("init_images", "drop an image to start from")
                request = Img2ImgRequest.model_validate({**fields, "init_images": ["ui"]})
                for name, image in (("init_images", init), ("mask", mask)):
                    if image is not None and image.width * image.height > svc.settings.max_image_pixels:
                        raise FieldError(name, f"larger than {svc.settings.max_image_pixels} pixels")
                if mask is not None:
                    request = request.model_copy(update={"mask": "ui"})
                prepared = prepare(request, stored, self._catalog(), [init], mask, control=control)
            try:
                return svc.jobs.submit(dataclasses.replace(prepared.spec, source="ui"))
            except FieldError as e:  # the service names nested fields (hires.upscaler): the A1111 names here
                raise FieldError(prepared.request_field(e.field), e.message) from None

    def _catalog(self) -> Any:
        return listing.catalog(self.services.manager, self.services.settings)

    def paste(self, text: str) -> dict[str, Any]:
        with field_errors():
            request = pasting.apply_infotext(Txt2ImgRequest(infotext=text), self.store.load())
        units = ui_control.pasted_units(text, self.services.jobs.worker.controls)
        return {**request.model_dump(exclude={"infotext"}), "controlnet_units": units}

    def control_modules(self) -> list[ControlModule]:
        return ui_control.control_modules(self.services.jobs.worker.controls.annotator_roots)

    def control_models(self, checkpoint: str | None) -> list[str]:
        svc = self.services
        try:
            info = svc.manager.find(checkpoint) if checkpoint else self._current()
        except ModelNotFoundError:
            info = None
        return ui_control.control_models(svc.jobs.worker.controls, _family(svc.manager, info))

    def detect_control(
        self, fields: Mapping[str, Any], image: Image.Image, size: tuple[int, int]
    ) -> Image.Image:
        with field_errors():
            if image.width * image.height > self.services.settings.max_image_pixels:
                raise FieldError("image", f"larger than {self.services.settings.max_image_pixels} pixels")
            return ui_control.detect(fields, image, size, self.services.jobs.worker.controls.annotator_roots)

    def _current(self) -> CheckpointInfo | None:
        stored = self.store.load()
        return listing.current_checkpoint(self.services.manager, _str(stored.get("sd_model_checkpoint")))

    def read_infotext(self, image: Image.Image) -> str:
        return extras.png_info(image)[0]

    def submit_extras(self, image: Image.Image, fields: Mapping[str, Any]) -> JobRecord:
        svc = self.services
        with field_errors():
            request = ExtrasSingleRequest.model_validate({**fields, "image": "ui"})
            if image.width * image.height > svc.settings.max_image_pixels:
                raise FieldError("image", f"larger than {svc.settings.max_image_pixels} pixels")
            return svc.jobs.submit(extras_spec(request, [image], source="ui"))

    def extras_result(self, record: JobRecord) -> tuple[Image.Image, str]:
        if record.status is not JobStatus.DONE or not record.images:
            raise FieldError("job", record.error or f"the extras job is {record.status.value}")
        with Image.open(self.services.jobs.image_path(record.images[0].id)) as result:
            result.load()
            return result.copy(), record.images[0].infotext

    def extras(self, image: Image.Image, fields: Mapping[str, Any]) -> tuple[Image.Image, str]:
        """:meth:`submit_extras`, wait, :meth:`extras_result`: for callers outside the server's event loop
        (scripts, tests); it blocks its thread while the job runs, so the UI does not use it."""
        record = self.submit_extras(image, fields)
        return self.extras_result(self.services.jobs.wait(record.id, WAIT_SECONDS))

    def options(self) -> list[OptionField]:
        return option_fields(self.services.settings)

    def set_options(self, changes: Mapping[str, Any]) -> None:
        with field_errors():
            checked = opts.check(
                {k: v for k, v in changes.items() if k in SETTINGS_KEYS or k.startswith("sd_")}
            )
            checked = self._catalog().check_models(checked, "")
            self.store.update(checked)

    def native_size(self, checkpoint: str) -> int | None:
        try:
            info = self.services.manager.find(checkpoint)
        except ModelNotFoundError:
            return None
        return _native_size(self.services.manager, info)

    def token_count(self, prompt: str, steps: int) -> tuple[int, int]:
        return count_tokens(prompt, steps)

    def delete_job(self, job_id: str) -> None:
        with field_errors():
            self.services.jobs.delete(job_id)


def option_fields(settings: Settings) -> list[OptionField]:
    """The Settings tab's options with their stored values."""
    stored = opts.OptionsStore(settings.data_dir).load()
    fields = []
    for key in SETTINGS_KEYS:
        spec = opts.CATALOG[key]
        fields.append(OptionField(key, stored[key], spec.default, spec.low, spec.high, spec.choices))
    return fields


def script_fields() -> dict[str, list[ScriptField]]:
    """Each generation tab's scripts for its Script dropdown, as ``/sdapi/v1/script-info`` describes them
    (SD upscale's upscalers: the built-in ones; a model upscaler's name can be typed)."""
    out: dict[str, list[ScriptField]] = {}
    for kind, img2img in (("txt2img", False), ("img2img", True)):
        infos = scripts.script_info(img2img, BUILTIN_UPSCALERS)
        titles = [script.title for script in scripts.tab_scripts(img2img)]
        out[kind] = [
            ScriptField(title, tuple(info["args"])) for title, info in zip(titles, infos, strict=True)
        ]
    return out


def _identified(manager: ModelManager, info: CheckpointInfo | None) -> FamilyInfo | None:
    """The checkpoint's identification from its header and metadata (cached by the manager; no weights are
    read); None when there is no checkpoint or the file cannot be identified."""
    if info is None:
        return None
    try:
        return manager.family(info)
    except (ModelFileError, LookupError, ValueError, OSError):
        return None


def _native_size(manager: ModelManager, info: CheckpointInfo | None) -> int | None:
    """The checkpoint's native size (None: unknown; the UI keeps its sizes)."""
    identified = _identified(manager, info)
    return None if identified is None else identified.native_size


def _family(manager: ModelManager, info: CheckpointInfo | None) -> Family | None:
    """The checkpoint's family (None: unknown; every ControlNet file is offered)."""
    identified = _identified(manager, info)
    return None if identified is None else identified.family


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
