"""The models bar's and the Settings tab's events: the dropdowns' choices (the ControlNet units' included),
the setting values and the checkpoint's native size on page load and on refresh; a checkpoint or VAE
choice; Apply settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
from anyio import to_thread

from latentstudio.core import FieldError
from latentstudio.ui.backend import OptionField
from latentstudio.ui.common import GetBackend, error_md, error_update
from latentstudio.ui.generate import native_sizes
from latentstudio.ui.page import Page


def _catalog_outputs(page: Page) -> list[Any]:
    """What a catalog load updates, in the order ``load_catalog`` answers."""
    t2i, i2i, ex = page.t2i, page.i2i, page.ex
    return [
        page.bar.checkpoint,
        page.bar.vae,
        t2i.fields["sampler_name"],
        t2i.fields["scheduler"],
        i2i.fields["sampler_name"],
        i2i.fields["scheduler"],
        t2i.fields["hr_upscaler"],
        ex["upscaler_1"],
        ex["upscaler_2"],
        ex["gfpgan"],
        ex["codeformer"],
        ex["codeformer_weight"],
        t2i.loras,
        t2i.embeddings,
        i2i.loras,
        i2i.embeddings,
        *page.settings.values(),
        *t2i.size,
        *i2i.size,
        *_unit_dropdowns(page, "module"),
        *_unit_dropdowns(page, "model"),
    ]


def _unit_dropdowns(page: Page, field: str) -> list[Any]:
    """The ControlNet units' ``module`` or ``model`` dropdowns of both tabs."""
    return [unit.fields[field] for tab in (page.t2i, page.i2i) for unit in tab.control]


def wire_catalog(demo: gr.Blocks, get: GetBackend, page: Page) -> None:
    """Dropdown choices on page load and on the refresh button."""
    setting_controls = page.settings

    async def load_catalog(rescan: bool, *user_set: bool) -> tuple[Any, ...]:
        """The dropdowns' choices (after a rescan by the job worker when ``rescan``)."""
        backend = get()
        if rescan:
            await backend.refresh()
        c, options = await to_thread.run_sync(lambda: (backend.catalog(), backend.options()))
        modules = gr.update(choices=[m.name for m in backend.control_modules()])
        control_models = gr.update(choices=list(c.control_models))
        units = len(_unit_dropdowns(page, "model"))
        samplers = gr.update(choices=list(c.samplers))
        schedulers = gr.update(choices=list(c.schedulers))
        loras = gr.Dataset(samples=[[name] for name in c.loras])
        embeddings = gr.Dataset(samples=[[name] for name in c.embeddings])
        values = {o.key: o.value for o in options}
        return (
            gr.update(choices=list(c.checkpoints), value=c.current_checkpoint),
            gr.update(choices=list(c.vaes), value=c.current_vae),
            samplers,
            schedulers,
            samplers,
            schedulers,
            gr.update(choices=[*c.latent_upscalers, *c.upscalers]),
            gr.update(choices=list(c.upscalers)),
            gr.update(choices=list(c.upscalers)),
            gr.update(visible="GFPGAN" in c.face_restorers),
            gr.update(visible="CodeFormer" in c.face_restorers),
            gr.update(visible="CodeFormer" in c.face_restorers),
            loras,
            embeddings,
            loras,
            embeddings,
            *(values.get(key) for key in setting_controls),
            *native_sizes(c.native_size, *user_set),
            *(modules for _ in range(units)),
            *(control_models for _ in range(units)),
        )

    async def on_load(*user_set: bool) -> tuple[Any, ...]:
        return await load_catalog(False, *user_set)

    async def on_refresh(*user_set: bool) -> tuple[Any, ...]:
        return await load_catalog(True, *user_set)

    size_set = [page.t2i.size_set, page.i2i.size_set]
    demo.load(on_load, size_set, _catalog_outputs(page), queue=False)
    page.bar.refresh.click(on_refresh, size_set, _catalog_outputs(page), queue=False)


def wire_models(get: GetBackend, page: Page) -> None:
    """A checkpoint or VAE choice is stored at once; a new checkpoint brings its native size."""
    checkpoint, vae, models_error = page.bar.checkpoint, page.bar.vae, page.bar.error
    size_set = [page.t2i.size_set, page.i2i.size_set]

    def set_model(key: str, value: str | None) -> str:
        """Store the choice; the refusal's message, or '' when stored."""
        if not value:
            return ""
        try:
            get().set_options({key: value})
        except FieldError as e:
            return error_md(e)
        return ""

    model_dropdowns = _unit_dropdowns(page, "model")

    def set_checkpoint(value: str | None, *user_set: bool) -> tuple[Any, ...]:
        """Store it; its native size, and the ControlNet models of its family."""
        message = set_model("sd_model_checkpoint", value)
        ok = bool(value) and not message
        native = get().native_size(value) if ok and value else None
        models = gr.update(choices=get().control_models(value)) if ok else gr.skip()
        return (error_update(message), *native_sizes(native, *user_set), *(models for _ in model_dropdowns))

    checkpoint.input(
        set_checkpoint, [checkpoint, *size_set],
        [models_error, *page.t2i.size, *page.i2i.size, *model_dropdowns], queue=False,
    )  # fmt: skip
    vae.input(lambda v: error_update(set_model("sd_vae", v)), vae, models_error, queue=False)


def wire_settings(get: GetBackend, options: Sequence[OptionField], page: Page) -> None:
    """Apply settings: every control's value checked and stored, or the refused setting named."""
    setting_controls = page.settings

    def apply_settings(*values: Any) -> str:
        changes = dict(zip(setting_controls, values, strict=True))
        try:
            for option in options:
                if isinstance(option.default, int | float) and not isinstance(option.default, bool):
                    if changes[option.key] is None:  # an emptied number box
                        raise FieldError(option.key, "enter a number")
                    if isinstance(option.default, int):
                        changes[option.key] = int(changes[option.key])
            get().set_options(changes)
        except FieldError as e:
            return f'<span class="ls-error">{error_md(e)}</span>'
        return "Settings saved."

    page.apply.click(apply_settings, list(setting_controls.values()), page.apply_status, queue=False)
