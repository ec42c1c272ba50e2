"""Textual-inversion embeddings, read and matched as AUTOMATIC1111 does (a1111-compat.md §3.4, §4.2).

A1111 ``modules/textual_inversion/textual_inversion.py`` (``EmbeddingDatabase``): every file in
``embeddings/`` is one embedding named by its file stem; it is used when the prompt holds the name's token
sequence. Formats read (``create_embedding_from_data``):

- A1111 / original TI: ``{"string_to_param": {"*": Tensor[n, width]}, "step", "sd_checkpoint",
  "sd_checkpoint_name", ...}`` (``.pt``, also ``.bin``);
- diffusers concepts: ``{"<token>": Tensor[width] or Tensor[n, width]}`` (``learned_embeds.bin`` or
  ``.safetensors``), and kohya's ``{"emb_params": Tensor[n, width]}`` — one tensor under any key;
- SDXL: ``{"clip_l": Tensor[n, 768], "clip_g": Tensor[n, 1280]}``.

Vectors are keyed by the text-encoder component they feed: ``text_encoder`` (CLIP-L for SD1 and SDXL's
first encoder; OpenCLIP-H for SD2) and ``text_encoder_2`` (SDXL's OpenCLIP bigG).

Nothing from a file ever executes: ``.safetensors`` goes through :func:`~latentstudio.models.files.
read_tensor_file`; ``.pt``/``.bin`` through ``torch.load(weights_only=True)`` and anything needing more is
refused. Differences from A1111, each on purpose:

- Embeddings inside PNG/WebP images (``sd-ti-embedding`` text chunk, or data hidden in the pixels) are not
  read: images are not scanned at all (A1111 treats most as previews anyway). Both encodings are JSON, not
  pickle, so they could be added safely later.
- Old files whose ``string_to_param`` is a pickled ``torch.nn.ParameterDict`` need full unpickling and are
  refused with a one-line error (convert them with a trusted tool).
- Width is compared per encoder (``{"text_encoder": 768, "text_encoder_2": 1280}``), not as A1111's sum.
- Zero-byte and unreadable files are reported in ``errors`` (A1111 ignores the former, prints the latter).
- Two usable files with one name: the first in natural path order wins, the other is an error (A1111: the
  last one ``os.walk`` happens to list).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from latentstudio.models.discovery import natural_key
from latentstudio.models.files import ModelFileError, read_tensor_file
from latentstudio.models.hashes import HashCache, sha256_file, short_hash

__all__ = [
    "EMBEDDING_SUFFIXES",
    "TEXT_ENCODER",
    "TEXT_ENCODER_2",
    "Embedding",
    "EmbeddingDatabase",
    "EmbeddingInfo",
    "EmbeddingList",
    "TokenizeFn",
    "clip_token_ids",
    "read_embedding",
    "scan_embeddings",
    "ti_hashes",
]

TEXT_ENCODER = "text_encoder"
"""Component fed by SD1's CLIP-L, SD2's OpenCLIP-H and SDXL's first encoder (CLIP-L)."""
TEXT_ENCODER_2 = "text_encoder_2"
"""Component fed by SDXL's second encoder (OpenCLIP bigG)."""
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
"""File extensions scanned for embeddings (lower case; matched case-insensitively)."""
HASH_KIND = "textual_inversion"
""":class:`HashCache` namespace, as A1111's ``textual_inversion/<name>`` keys."""

TokenizeFn = Callable[[str], Sequence[int]]
"""Text → token ids without BOS/EOS, as the model's tokenizer gives them."""

_KNOWN_LAYOUTS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("SD1", ((TEXT_ENCODER, 768),)),
    ("SD2", ((TEXT_ENCODER, 1024),)),
    ("SDXL", ((TEXT_ENCODER, 768), (TEXT_ENCODER_2, 1280))),
)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass(frozen=True, eq=False)
class Embedding:
    """One textual-inversion embedding.

    Attributes:
        name: the file stem; the prompt uses it by this name.
        vectors: component name → ``Tensor[vector_count, width]`` float32 on the CPU (``text_encoder``, and
            for SDXL also ``text_encoder_2``); read-only mapping.
        path: the file it came from.
        hash: A1111's shorthash, the full-file sha256 truncated to 12 hex characters ("" if unknown).
        step, sd_checkpoint, sd_checkpoint_name: training metadata from A1111 ``.pt`` files, else None.
    """

    name: str
    vectors: Mapping[str, torch.Tensor]
    path: Path
    hash: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    def __post_init__(self) -> None:
        """Check every vector set is ``[n, width]`` with one ``n``; freeze the mapping."""
        if not self.vectors:
            raise ValueError(f"embedding {self.name!r}: vectors must not be empty")
        rows = {tuple(v.shape)[:1] for v in self.vectors.values()}
        if any(v.dim() != 2 or 0 in v.shape for v in self.vectors.values()) or len(rows) != 1:
            shapes = {k: list(v.shape) for k, v in self.vectors.items()}
            raise ValueError(f"embedding {self.name!r}: vectors must be [n, width] with one n; got {shapes}")
        object.__setattr__(self, "vectors", MappingProxyType(dict(self.vectors)))

    @property
    def shape(self) -> int:
        """A1111 ``shape``: the vector width, summed over encoders (768 SD1, 1024 SD2, 2048 SDXL)."""
        return sum(int(v.shape[1]) for v in self.vectors.values())

    @property
    def vector_count(self) -> int:
        """How many tokens the embedding occupies in a prompt (A1111 ``vectors``)."""
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def widths(self) -> dict[str, int]:
        """Component name → vector width, e.g. ``{"text_encoder": 768}``."""
        return {key: int(v.shape[1]) for key, v in self.vectors.items()}


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


def scan_embeddings(folder: Path) -> list[Path]:
    """Return the embedding files under ``folder``, recursively, natural-sorted by relative path.

    Files ending in :data:`EMBEDDING_SUFFIXES` (any case) count; hidden files and folders (name starting with
    ``.``) and broken links are skipped; symlinked folders are followed, each real folder walked once. A
    missing folder gives an empty list.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            stat = os.stat(dirpath)
        except OSError:  # removed while walking
            dirnames.clear()
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and name.lower().endswith(EMBEDDING_SUFFIXES) and path.is_file():
                found.append(path)
    found.sort(key=lambda p: (natural_key(p.relative_to(root).as_posix()), p.as_posix()))
    return found


def read_embedding(path: Path, *, hash_cache: HashCache | None = None) -> Embedding:
    """Read one embedding file in any supported format, name it by its stem and hash it.

    Vectors are copied to float32 ``Tensor[n, width]`` (a 1-D diffusers vector becomes ``[1, width]``).

    Raises:
        ModelFileError: unsupported extension, unreadable/corrupt file, a pickle needing more than tensors
            and plain containers (refused, never executed), or data that is not one embedding.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data: Mapping[object, object] = {k: v for k, v in read_tensor_file(path).tensors.items()}
    elif suffix in (".pt", ".bin"):
        data = _load_pickled_dict(path)
    else:
        raise ModelFileError(path, f"not an embedding file: expected one of {', '.join(EMBEDDING_SUFFIXES)}")
    vectors = _vectors_of(path, data)
    try:
        full = hash_cache.sha256(path, HASH_KIND) if hash_cache is not None else sha256_file(path)
    except (OSError, RuntimeError) as e:
        raise ModelFileError(path, f"cannot hash: {e}") from e
    step = data.get("step")
    return Embedding(
        name=path.stem,
        vectors=vectors,
        path=path,
        hash=short_hash(full, 12),
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        sd_checkpoint=_str_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _load_pickled_dict(path: Path) -> Mapping[object, object]:
    """``torch.load(weights_only=True)`` of a dict: tensors, str/int/None and plain containers only.

    Raises:
        ModelFileError: refused (the pickle names a global or opcode the weights-only loader forbids),
            corrupt, or not a dict.
    """
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelFileError(path, "empty file (0 bytes)" if path.is_file() else "no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found is None and not _is_torch_or_pickle(path):
            raise ModelFileError(path, "corrupt file: neither a torch zip archive nor a pickle") from e
        what = f"forbidden global {found.group(1)}" if found else "opcodes the weights-only loader refuses"
        raise ModelFileError(
            path,
            f"refused: the file needs full unpickling, which could run code from the file ({what}); "
            "convert it to .safetensors with a trusted tool",
        ) from e
    except Exception as e:  # untrusted bytes: the loader may raise anything; report, never crash
        if not _is_torch_or_pickle(path):
            raise ModelFileError(path, "corrupt file: neither a torch zip archive nor a pickle") from e
        first = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0][:200]
        raise ModelFileError(path, f"corrupt or truncated file: {first}") from e
    if not isinstance(obj, Mapping):
        raise ModelFileError(path, f"not an embedding: the file holds a {type(obj).__name__}, not a dict")
    return obj


def _is_torch_or_pickle(path: Path) -> bool:
    """Whether the file starts as a zip (``torch.save``) or with a pickle PROTO opcode (legacy or raw)."""
    with path.open("rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def _vectors_of(path: Path, data: Mapping[object, object]) -> dict[str, torch.Tensor]:
    """Component name → ``Tensor[n, width]`` from a file's top-level dict (A1111 format detection order)."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else type(params).__name__
            raise ModelFileError(path, f"string_to_param must hold exactly one term, got {count}")
        return {TEXT_ENCODER: _as_vectors(path, "string_to_param", next(iter(params.values())))}
    if "clip_l" in data and "clip_g" in data:
        clip_l = _as_vectors(path, "clip_l", data["clip_l"])
        clip_g = _as_vectors(path, "clip_g", data["clip_g"])
        if clip_l.shape[0] != clip_g.shape[0]:
            raise ModelFileError(
                path, f"clip_l has {clip_l.shape[0]} vectors but clip_g has {clip_g.shape[0]}"
            )
        return {TEXT_ENCODER: clip_l, TEXT_ENCODER_2: clip_g}
    if len(data) == 1:
        key, value = next(iter(data.items()))
        return {TEXT_ENCODER: _as_vectors(path, str(key), value)}
    keys = sorted(map(str, data))
    listed = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    raise ModelFileError(
        path,
        f"not a textual-inversion embedding: expected string_to_param, clip_l + clip_g, or one tensor; "
        f"found {len(keys)} entries ({listed})",
    )


def _as_vectors(path: Path, key: str, value: object) -> torch.Tensor:
    """Check one embedding tensor; return a float32 ``Tensor[n, width]`` copy (``[w]`` → ``[1, w]``)."""
    if not isinstance(value, torch.Tensor):
        raise ModelFileError(path, f"{key!r} holds a {type(value).__name__}, not a tensor")
    tensor = value.detach()
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if not tensor.is_floating_point() or tensor.dim() != 2 or 0 in tensor.shape:
        raise ModelFileError(
            path, f"{key!r} is {tensor.dtype} {list(value.shape)}; expected floating [vectors, width]"
        )
    tensor = tensor.to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    if not bool(torch.isfinite(tensor).all()):
        raise ModelFileError(path, f"{key!r} holds NaN or infinite values")
    return tensor


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
