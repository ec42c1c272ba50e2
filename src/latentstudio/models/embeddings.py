"""Embeddings usable with one model, matched in prompts as AUTOMATIC1111 does (a1111-compat.md §3.4, §4.2).

A1111 ``modules/textual_inversion/textual_inversion.py`` (``EmbeddingDatabase``): an embedding is used when
the prompt holds its name's token sequence. :class:`EmbeddingDatabase` sorts the embeddings
:mod:`~latentstudio.models.embedding_files` reads into usable, wrong-width and failed ones, and finds them
in a prompt's tokens. Differences from A1111, each on purpose:

- Width is compared per encoder (``{"text_encoder": 768, "text_encoder_2": 1280}``), not as A1111's sum.
- Zero-byte and unreadable files are reported in ``errors`` (A1111 ignores the former, prints the latter).
- Two usable files with one name: the first in natural path order wins, the other is an error (A1111: the
  last one ``os.walk`` happens to list).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

from latentstudio.models.embedding_files import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    Embedding,
    read_embedding,
    scan_embeddings,
)
from latentstudio.models.files import ModelFileError
from latentstudio.models.hashes import HashCache

__all__ = [
    "EmbeddingDatabase",
    "EmbeddingInfo",
    "EmbeddingList",
    "TokenizeFn",
    "clip_token_ids",
    "ti_hashes",
]

TokenizeFn = Callable[[str], Sequence[int]]
"""Text → token ids without BOS/EOS, as the model's tokenizer gives them."""

_KNOWN_LAYOUTS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("SD1", ((TEXT_ENCODER, 768),)),
    ("SD2", ((TEXT_ENCODER, 1024),)),
    ("SDXL", ((TEXT_ENCODER, 768), (TEXT_ENCODER_2, 1280))),
)


@dataclass(frozen=True)
class EmbeddingInfo:
    """What ``/sdapi/v1/embeddings`` tells about one embedding (A1111 ``convert_embedding``)."""

    step: int | None
    sd_checkpoint: str | None
    sd_checkpoint_name: str | None
    shape: int
    vectors: int

    @classmethod
    def of(cls, embedding: Embedding) -> EmbeddingInfo:
        """The API view of ``embedding``."""
        return cls(
            step=embedding.step,
            sd_checkpoint=embedding.sd_checkpoint,
            sd_checkpoint_name=embedding.sd_checkpoint_name,
            shape=embedding.shape,
            vectors=embedding.vector_count,
        )


@dataclass(frozen=True)
class EmbeddingList:
    """The ``/sdapi/v1/embeddings`` body: usable (``loaded``) and wrong-width (``skipped``) embeddings."""

    loaded: Mapping[str, EmbeddingInfo]
    skipped: Mapping[str, EmbeddingInfo]

    def to_api(self) -> dict[str, dict[str, dict[str, int | str | None]]]:
        """``{"loaded": {name: {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}}, "skipped": …}``."""
        return {
            section: {name: asdict(info) for name, info in infos.items()}
            for section, infos in (("loaded", self.loaded), ("skipped", self.skipped))
        }


def clip_token_ids(text: str) -> tuple[int, ...]:
    """CLIP token ids of ``text`` without BOS/EOS and untruncated (the shared SD tokenizer; ids are the same
    for SD1, SD2 and SDXL's tokenizers, which differ only in padding)."""
    from latentstudio.models.tokenizer import clip_tokenizer

    ids = clip_tokenizer()(text, add_special_tokens=False, truncation=False)["input_ids"]
    return tuple(int(i) for i in ids)


def _describe(widths: Mapping[str, int]) -> str:
    """``"SD1 (text_encoder 768)"``; a layout no family has is described by its widths alone."""
    parts = " + ".join(f"{key} {width}" for key, width in widths.items())
    family = next((name for name, layout in _KNOWN_LAYOUTS if dict(layout) == dict(widths)), None)
    return f"{family} ({parts})" if family else parts


def _check_widths(widths: Mapping[str, int]) -> None:
    """Raise ValueError unless ``widths`` maps text_encoder and/or text_encoder_2 to positive ints."""
    known = (TEXT_ENCODER, TEXT_ENCODER_2)
    if not widths or any(k not in known or type(w) is not int or w <= 0 for k, w in widths.items()):
        raise ValueError(f"widths must map {' and/or '.join(known)} to positive ints, got {dict(widths)}")


Candidates = tuple[tuple[tuple[int, ...], Embedding], ...]
"""(name token ids, embedding) pairs sharing a first token, longest token sequence first."""


def _longest_first(candidates: Iterable[tuple[tuple[int, ...], Embedding]]) -> Candidates:
    """Sort by token count, longest first; stable, so among equals the first registered wins (A1111)."""
    return tuple(sorted(candidates, key=lambda c: len(c[0]), reverse=True))


@dataclass(frozen=True)
class EmbeddingDatabase:
    """The embeddings usable with one model, and a token lookup for the prompt encoder.

    Attributes:
        widths: the model's encoder widths, e.g. ``{"text_encoder": 768, "text_encoder_2": 1280}``.
        loaded: name → usable embedding, in natural path order.
        skipped: name → why it is not usable with this model (the wrong width); ``skipped_embeddings`` holds
            the embeddings themselves (the API lists them).
        errors: name → one-line reason the file could not be used (unreadable, refused, duplicate name...).
        by_first_token: first token id of a name → candidates, longest first (A1111 ``ids_lookup``).
    """

    widths: Mapping[str, int]
    loaded: Mapping[str, Embedding]
    skipped: Mapping[str, str]
    skipped_embeddings: Mapping[str, Embedding]
    errors: Mapping[str, str]
    by_first_token: Mapping[int, Candidates] = field(repr=False)

    @classmethod
    def load(
        cls,
        folder: Path,
        widths: Mapping[str, int],
        *,
        hash_cache: HashCache | None = None,
        tokenize: TokenizeFn | None = None,
    ) -> EmbeddingDatabase:
        """Read every file :func:`scan_embeddings` finds; one bad file never stops the others.

        ``widths``: the model's text-encoder widths (SD1 ``{"text_encoder": 768}``, SD2 ``{"text_encoder":
        1024}``, SDXL ``{"text_encoder": 768, "text_encoder_2": 1280}``). ``tokenize`` defaults to
        :func:`clip_token_ids`.
        """
        found: list[Embedding] = []
        errors: dict[str, str] = {}
        for path in scan_embeddings(folder):
            try:
                found.append(read_embedding(path, hash_cache=hash_cache))
            except ModelFileError as e:
                errors.setdefault(path.stem, str(e))
        return cls.from_embeddings(found, widths, tokenize=tokenize, errors=errors)

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Iterable[Embedding],
        widths: Mapping[str, int],
        *,
        tokenize: TokenizeFn | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> EmbeddingDatabase:
        """Sort ``embeddings`` into loaded / skipped / errors for a model with encoder ``widths``.

        Raises:
            ValueError: ``widths`` is empty, names an unknown component, or has a non-positive width.
        """
        _check_widths(widths)
        token_ids = tokenize or clip_token_ids
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, str] = {}
        skipped_embeddings: dict[str, Embedding] = {}
        all_errors = dict(errors or {})
        lookup: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for emb in embeddings:
            if emb.widths != dict(widths):
                reason = f"made for {_describe(emb.widths)}; this model needs {_describe(widths)}"
                skipped.setdefault(emb.name, reason)
                skipped_embeddings.setdefault(emb.name, emb)
                continue
            if emb.name in loaded:
                why = f"duplicate name; {loaded[emb.name].path} is used"
                all_errors.setdefault(emb.name, f"{emb.path}: {why}")
                continue
            ids = tuple(token_ids(emb.name))
            if not ids:
                all_errors.setdefault(emb.name, f"{emb.path}: the name has no tokens")
                continue
            loaded[emb.name] = emb
            lookup.setdefault(ids[0], []).append((ids, emb))
        return cls(
            widths=MappingProxyType(dict(widths)),
            loaded=MappingProxyType(loaded),
            skipped=MappingProxyType(skipped),
            skipped_embeddings=MappingProxyType(skipped_embeddings),
            errors=MappingProxyType(all_errors),
            by_first_token=MappingProxyType({first: _longest_first(c) for first, c in lookup.items()}),
        )

    def find_at(self, tokens: Sequence[int], offset: int) -> tuple[Embedding | None, int]:
        """The embedding whose name's tokens start at ``tokens[offset]`` and how many tokens it spans.

        The longest name wins (``bad-hands`` before ``bad``); ``(None, 0)`` when none matches. A1111
        ``find_embedding_at_position``.

        Raises:
            IndexError: ``offset`` is outside ``tokens``.
        """
        if not 0 <= offset < len(tokens):
            raise IndexError(f"offset {offset} is outside tokens (length {len(tokens)})")
        for ids, embedding in self.by_first_token.get(tokens[offset], ()):
            if tuple(tokens[offset : offset + len(ids)]) == ids:
                return embedding, len(ids)
        return None, 0

    def listing(self) -> EmbeddingList:
        """The ``/sdapi/v1/embeddings`` view: loaded and skipped embeddings (errors are not listed)."""
        return EmbeddingList(
            loaded={name: EmbeddingInfo.of(e) for name, e in self.loaded.items()},
            skipped={name: EmbeddingInfo.of(e) for name, e in self.skipped_embeddings.items()},
        )


def ti_hashes(used: Iterable[Embedding]) -> str:
    """The infotext ``TI hashes`` value: ``"name: 12hex, name2: 12hex"`` (unquoted; infotext quotes it).

    One entry per name in first-use order; ``:`` and ``,`` are removed from names; embeddings without a hash
    are left out (A1111 ``sd_hijack_clip``). Empty string when nothing is left.
    """
    by_name: dict[str, str] = {}
    for embedding in used:
        if embedding.hash:
            by_name[embedding.name] = embedding.hash
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in by_name.items())
