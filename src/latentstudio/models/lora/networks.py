"""The prompt's LoRAs on one loaded model, for the duration of one job.

:meth:`LoraNetworks.activate` resolves each ``<lora:name:te:unet:dyn>`` tag, reads and checks the file
(cached), verifies every patch fits the model, merges them (:mod:`~latentstudio.models.lora.merge`) and
swaps the merged weights in; :meth:`LoraNetworks.deactivate` swaps the base weights back. A LoRA that
cannot be used — unknown name, unreadable or corrupt file, another family, keys this model does not have,
shapes that do not fit, NaN/inf values — is skipped with a warning naming it and the reason; the base
weights are never written. The merged set of the last job is kept, so a next job with the same LoRAs and
strengths on the same model re-applies it by swapping pointers (memory: one copy of the patched weights).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from latentstudio.models.files import ModelFileError, read_tensor_file
from latentstudio.models.loader import Components
from latentstudio.models.lora.formats import LoraFormatError, LoraWeights, parse_lora
from latentstudio.models.lora.keys import ModuleIndex
from latentstudio.models.lora.library import LoraInfo, LoraLibrary
from latentstudio.models.lora.merge import Contribution, Swap, check_fits, merge

_REMOVE_FROM_NAMES = str.maketrans("", "", ":,")


@dataclass(frozen=True)
class LoraRequest:
    """One ``<lora:name:te:unet:dyn>`` tag: the name (file stem or alias), the text-encoder and UNet
    strengths, and ``dyn`` (keep only the first ``dyn`` ranks of plain LoRAs; None: all)."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


class LoraSkipped(Exception):  # noqa: N818 - a reason, reported as a warning
    """Why one LoRA is not applied (internal; becomes a job warning)."""


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA in force for a job: the name the prompt used, its file, 12-hex hash and strengths."""

    mentioned: str
    info: LoraInfo
    shorthash: str
    te: float
    unet: float
    dyn: int | None
    touches_text: bool


@dataclass(frozen=True)
class Activation:
    """The outcome of :meth:`LoraNetworks.activate`: the LoRAs applied, one warning per LoRA skipped and the
    number of weight and bias tensors patched."""

    applied: tuple[AppliedLora, ...] = ()
    warnings: tuple[str, ...] = ()
    patched: int = 0

    @property
    def text_key(self) -> Hashable:
        """What identifies the text-encoder patches in force (part of the conditioning cache key)."""
        return tuple((a.info.path, a.shorthash, a.te, a.dyn) for a in self.applied if a.touches_text)

    def infotext_hashes(self) -> str | None:
        """A1111's ``Lora hashes`` value: ``"name: 12hex, …"`` (names without ``:`` and ``,``)."""
        hashes = {a.mentioned.translate(_REMOVE_FROM_NAMES): a.shorthash for a in self.applied}
        return ", ".join(f"{name}: {short}" for name, short in hashes.items()) or None


@dataclass(frozen=True)
class _Plan:
    owner: int
    applied: AppliedLora
    contributions: tuple[Contribution, ...]


class LoraNetworks:
    """Applies and removes the LoRAs of a library on loaded models; one per worker (not thread-safe).

    ``files_in_ram``: parsed files kept (fp32: twice an fp16 file's size, ~70 MB for a rank-32 SD1 LoRA).
    """

    def __init__(self, library: LoraLibrary, *, files_in_ram: int = 4) -> None:
        self.library = library
        self.files_in_ram = files_in_ram
        self._files: OrderedDict[tuple[object, ...], LoraWeights] = OrderedDict()
        self._index: tuple[weakref.ref[Components], ModuleIndex] | None = None
        self._cached: tuple[weakref.ref[Components], Hashable, list[Swap]] | None = None
        self._fitting: set[tuple[object, ...]] = set()  # (file, dyn) checked to fit the indexed model
        self._active: list[Swap] = []

    @contextmanager
    def applied(self, components: Components, tags: Sequence[LoraRequest]) -> Iterator[Activation]:
        """:meth:`activate` for the ``with`` block, :meth:`deactivate` at its end (also on errors)."""
        activation = self.activate(components, tags)
        try:
            yield activation
        finally:
            self.deactivate()

    def activate(self, components: Components, tags: Sequence[LoraRequest]) -> Activation:
        """Apply the LoRAs ``tags`` name to ``components`` (any previous ones are removed first)."""
        self.deactivate()
        warnings: list[str] = []
        plans: list[_Plan] = []
        for owner, tag in enumerate(tags):
            try:
                plans.append(self._plan(components, tag, owner))
            except LoraSkipped as e:
                warnings.append(f"LoRA {tag.name!r} skipped: {e}")
        plans, swaps = self._merged(components, plans, warnings)
        for swap in swaps:
            swap.apply()
        self._active = swaps
        return Activation(tuple(p.applied for p in plans), tuple(warnings), len(swaps))

    def deactivate(self) -> None:
        """Give every patched parameter its base tensor back (bit-exact); a no-op when nothing is applied."""
        swaps, self._active = self._active, []
        for swap in swaps:
            swap.remove()

    def release(self) -> None:
        """Drop the cached merged weights, parsed files and module index (patches of a running job stay
        until its :meth:`deactivate`)."""
        self._cached, self._index = None, None
        self._files.clear()
        self._fitting.clear()

    def _merged(
        self, components: Components, plans: list[_Plan], warnings: list[str]
    ) -> tuple[list[_Plan], list[Swap]]:
        """The merged weights of ``plans`` (cached from the last job when it used the same set); a LoRA whose
        merge overflows is dropped with a warning and the rest merged again."""
        if not plans:  # keep the cached set for the next job that uses it
            return plans, []
        while True:
            key = tuple((a.info.path, a.shorthash, a.te, a.unet, a.dyn) for a in (p.applied for p in plans))
            cached = self._cached
            if (
                cached is not None
                and cached[0]() is components
                and cached[1] == key
                and all(s.current() for s in cached[2])
            ):
                return plans, cached[2]
            self._cached = None  # free the old merged set before computing a new one
            swaps, bad = merge([c for p in plans for c in p.contributions])
            if not bad:
                self._cached = (weakref.ref(components), key, swaps)
                return plans, swaps
            for p in plans:
                if p.owner in bad:
                    warnings.append(f"LoRA {p.applied.mentioned!r} skipped: merged weights are not finite")
            plans = [p for p in plans if p.owner not in bad]

    def _module_index(self, components: Components) -> ModuleIndex:
        if self._index is None or self._index[0]() is not components:
            self._index = (weakref.ref(components), ModuleIndex(components))
            self._fitting.clear()
        return self._index[1]

    def _load(self, info: LoraInfo) -> tuple[tuple[object, ...], LoraWeights]:
        """The parsed file (cached while its size and mtime hold) and its cache key."""
        stat = info.path.stat()
        key = (info.path, stat.st_size, stat.st_mtime_ns)
        weights = self._files.get(key)
        if weights is None:
            weights = parse_lora(read_tensor_file(info.path).tensors)
            self._files[key] = weights
            while len(self._files) > self.files_in_ram:
                self._files.popitem(last=False)
        self._files.move_to_end(key)
        return key, weights

    def _plan(self, components: Components, tag: LoraRequest, owner: int) -> _Plan:
        """Resolve, read and check one LoRA against ``components``; :class:`LoraSkipped` says why not."""
        info = self.library.find(tag.name)
        if info is None:
            folders = ", ".join(str(f) for f in self.library.folders)
            raise LoraSkipped(
                self.library.unreadable(tag.name) or f"no LoRA file or alias of that name in {folders}"
            )
        family = components.info.family
        if info.family is not None and info.family is not family:
            raise LoraSkipped(f"made for {info.family.value}, this model is {family.value}")
        try:
            file_key, weights = self._load(info)
            shorthash = self.library.shorthash(info)
        except (ModelFileError, LoraFormatError, OSError, ValueError, RuntimeError) as e:
            raise LoraSkipped(str(e)) from None
        index = self._module_index(components)
        contributions, unknown = [], []
        for patch in weights.patches:
            target = index.find(patch.key)
            if target is None:
                unknown.append(patch.key)
                continue
            strength = tag.te if target.is_text else tag.unet
            contributions.append(Contribution(target, patch, strength, tag.dyn, owner))
        if unknown:
            shown = ", ".join(sorted(unknown)[:3])
            raise LoraSkipped(
                f"{len(unknown)} module(s) this {family.value} model does not have, e.g. {shown}"
            )
        if (file_key, tag.dyn) not in self._fitting:
            for c in contributions:
                try:
                    check_fits(c)
                except (LoraFormatError, RuntimeError) as e:
                    raise LoraSkipped(f"shape mismatch: {str(e).splitlines()[0]}") from None
            self._fitting.add((file_key, tag.dyn))
        text = any(c.target.is_text and c.multiplier != 0 for c in contributions)
        applied = AppliedLora(tag.name, info, shorthash, tag.te, tag.unet, tag.dyn, text)
        return _Plan(owner, applied, tuple(contributions))
