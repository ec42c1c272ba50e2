"""The shape of one ControlNet preprocessor as sd-webui-controlnet describes it: its sliders
(``PreprocessorParameter``), the settings one call resolves, and the :class:`Preprocessor` record the
registry (:mod:`latentstudio.control.preprocessors`) lists. See that module for the sources."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentstudio.core import FieldError

UNSET = -1  # the A1111 ControlNet API's "use the default" for processor_res / threshold_a / threshold_b


@dataclass(frozen=True)
class Slider:
    """One ``PreprocessorParameter`` as ``module_detail`` lists it."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float = 0.01  # PreprocessorParameter's default step

    def api_json(self) -> dict[str, str | float]:
        """The extension's ``PreprocessorParameter.api_json``."""
        return {"name": self.label, "value": self.default, "min": self.minimum, "max": self.maximum,
                "step": self.step}  # fmt: skip

    def value(self, field: str, given: float | None) -> float:
        """``given`` checked against the range, or the default when ``None`` / -1."""
        if given is None or given == UNSET:
            return self.default
        if not (math.isfinite(given) and self.minimum <= given <= self.maximum):
            raise FieldError(field, f"{self.label} must be in [{self.minimum}, {self.maximum}], got {given}")
        return given


RESOLUTION = Slider("Resolution", 64, 2048, 512, 8)  # Preprocessor.slider_resolution's class default


@dataclass(frozen=True)
class Settings:
    """The resolved parameters one call gets."""

    resolution: int
    a: float
    b: float
    seed: int | None
    weights: tuple[Path, ...] = ()  # the annotator files of a weight-needing module, located


@dataclass(frozen=True)
class Preprocessor:
    """One preprocessor: its module ``name``, its ``aliases`` (the extension's display label where it
    differs), the sliders ``module_detail`` shows for ``processor_res`` (``resolution``; ``None`` where the
    extension hides it), ``threshold_a`` and ``threshold_b``, whether ``run`` reads the resolution, the
    extension's ``sorting_priority`` and tags, ``run`` itself (image ``[H, W, 3]`` uint8 in and out), the
    annotator ``files`` it needs (none for most), and for a pose estimator ``pose``: ``run`` that also gives
    the pose as the extension's JSON (``people``, ``canvas_width``, ``canvas_height``). An inpaint module
    (``accepts_mask``, the extension's ``accepts_mask``/``requires_mask``) gets the picture with its mask as
    the fourth channel (255: to be drawn anew) and gives it back unchanged."""

    name: str
    run: Callable[[np.ndarray, Settings], np.ndarray]
    aliases: tuple[str, ...] = ()
    resolution: Slider | None = RESOLUTION
    uses_resolution: bool = True
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    priority: int = 0
    tags: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # annotator weights it needs (``<folder>/<file>``, see annotators.locate)
    pose: Callable[[np.ndarray, Settings], tuple[np.ndarray, dict[str, object]]] | None = None
    accepts_mask: bool = False  # an inpaint module: ``run`` takes and gives RGBA, the alpha the mask

    @property
    def label(self) -> str:
        """The display name (``module_list?alias_names=true``)."""
        return self.aliases[0] if self.aliases else self.name

    @property
    def sliders(self) -> tuple[Slider, ...]:
        """The visible sliders in ``module_detail`` order: resolution, threshold_a, threshold_b."""
        return tuple(s for s in (self.resolution, self.threshold_a, self.threshold_b) if s is not None)

    def module_detail(self) -> dict[str, object]:
        """This module's entry in the extension's ``module_detail`` (all of these say ``model_free: false``,
        as the extension does)."""
        return {"model_free": False, "sliders": [s.api_json() for s in self.sliders]}

    def settings(
        self,
        processor_res: int | None,
        threshold_a: float | None,
        threshold_b: float | None,
        seed: int | None = None,
    ) -> Settings:
        """The parameters checked against this module's sliders; defaults filled in."""
        res = self.resolution.value("processor_res", processor_res) if self.resolution else RESOLUTION.default
        a = self.threshold_a.value("threshold_a", threshold_a) if self.threshold_a else 0.0
        b = self.threshold_b.value("threshold_b", threshold_b) if self.threshold_b else 0.0
        if seed is not None and not 0 <= seed < 2**32:
            raise FieldError("seed", f"a numpy seed is in [0, 2**32), got {seed}")
        return Settings(int(res), float(a), float(b), seed)
