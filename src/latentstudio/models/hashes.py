"""A1111-exact model hashes and a persistent cache of the expensive ones.

Three hashes matter for AUTOMATIC1111 compatibility (reference/a1111-compat.md §4):

- the full-file **sha256** (checkpoints, textual inversions); its first 10 hex characters are the
  ``Model hash`` written into infotext,
- the **legacy hash**: sha256 of the 64 KiB at offset 1 MiB, truncated to 8 hex characters,
- the kohya-ss **"addnet" hash** of LoRA files: sha256 of a safetensors file's tensor data only
  (everything after the 8-byte length and the JSON header); other files use the full sha256.

Hashing a 7 GB checkpoint takes tens of seconds, so :class:`HashCache` remembers each result in a
JSON file keyed by (algorithm, kind, absolute path) and trusts it while the file's size and
``mtime_ns`` are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Literal

from latentstudio.storage import private_dir

__all__ = [
    "BLOCK_SIZE",
    "LEGACY_LENGTH",
    "LEGACY_OFFSET",
    "NOFILE",
    "HashAlgo",
    "HashCache",
    "addnet_hash",
    "legacy_hash",
    "sha256_file",
    "short_hash",
]

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
"""Read size for streaming hashes (1 MiB, as A1111)."""
LEGACY_OFFSET = 0x100000
"""The legacy hash reads from 1 MiB into the file..."""
LEGACY_LENGTH = 0x10000
"""...for 64 KiB."""
NOFILE = "NOFILE"
"""A1111's legacy hash of a missing file."""

HashAlgo = Literal["sha256", "addnet"]

_CACHE_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[A-Za-z0-9_.-]+")


def _sha256_stream(stream: BinaryIO) -> str:
    """Return the sha256 hex digest of everything left in ``stream``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    while block := stream.read(BLOCK_SIZE):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Return the sha256 hex digest of the whole file at ``path`` (A1111 ``calculate_sha256``)."""
    with Path(path).open("rb") as stream:
        return _sha256_stream(stream)


def legacy_hash(path: Path) -> str:
    """Return A1111's legacy ``model_hash``: sha256 of ``file[0x100000:0x110000]``, first 8 hex.

    A file shorter than 1 MiB hashes the empty read (``'e3b0c442'``); a missing file gives ``'NOFILE'``.
    """
    try:
        with Path(path).open("rb") as stream:
            stream.seek(LEGACY_OFFSET)
            return hashlib.sha256(stream.read(LEGACY_LENGTH)).hexdigest()[:8]
    except FileNotFoundError:
        return NOFILE


def addnet_hash(path: Path) -> str:
    """Return the kohya-ss "addnet" hash used for LoRA files (A1111 ``Lora hashes``).

    For ``.safetensors`` it is the sha256 of the bytes after ``8 + header_len`` (the tensor data only, so
    editing the metadata keeps the hash); for any other file it is the full-file sha256.

    Raises:
        ValueError: the safetensors file is too short for its 8-byte header length, or the header length
            runs past the end of the file.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return sha256_file(path)
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        head = stream.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header)")
        header_len = int.from_bytes(head, "little")
        if 8 + header_len > size:
            raise ValueError(
                f"{path}: not a safetensors file (header length {header_len} runs past the end of the "
                f"file at {size} bytes)"
            )
        stream.seek(8 + header_len)
        return _sha256_stream(stream)


def short_hash(full: str, length: int = 10) -> str:
    """Return the first ``length`` characters of a hex digest.

    A1111 uses 10 for checkpoints (``Model hash``) and 12 for LoRAs and embeddings.

    Raises:
        ValueError: ``length`` is not positive or ``full`` is empty.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if not full:
        raise ValueError("full must be a non-empty hex digest")
    return full[:length]


def _valid_entry(entry: object) -> bool:
    """Whether ``entry`` is a well-formed cache entry ``{"size", "mtime_ns", "hash"}``."""
    if not isinstance(entry, dict):
        return False
    size, mtime_ns, digest = entry.get("size"), entry.get("mtime_ns"), entry.get("hash")
    return (
        type(size) is int
        and type(mtime_ns) is int
        and isinstance(digest, str)
        and _HEX64.fullmatch(digest) is not None
    )


class HashCache:
    """A persistent, thread-safe cache of sha256 and addnet hashes, stored as JSON at ``path``.

    Entries are keyed by (algorithm, kind, resolved absolute path) and are valid while the file's size and
    ``mtime_ns`` are what they were when it was hashed. ``kind`` namespaces the entries as A1111 does
    (``checkpoint``, ``lora``, ``textual_inversion``, ``vae``...).

    A missing, unreadable or corrupt cache file starts the cache empty (with a logged warning for the latter
    two); a cache file that cannot be written is logged and skipped, since the hash itself is still correct.
    Writes go to a temporary file in the same directory and are moved into place with :func:`os.replace`.
    Concurrent processes do not merge: the last writer's view wins, which at worst costs a re-hash.
    """

    def __init__(self, path: Path) -> None:
        """Open (or prepare to create) the cache stored at ``path``, e.g. ``<data_dir>/cache/hashes.json``."""
        self._path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, int | str]] = self._load()

    @property
    def path(self) -> Path:
        """The JSON file this cache persists to."""
        return self._path

    def sha256(self, path: Path, kind: str = "checkpoint") -> str:
        """Return the full-file sha256 of ``path``, from the cache when size and mtime are unchanged."""
        return self._get_or_compute(Path(path), kind, "sha256")

    def addnet(self, path: Path, kind: str = "lora") -> str:
        """Return the kohya "addnet" hash of ``path`` (:func:`addnet_hash`), cached like :meth:`sha256`."""
        return self._get_or_compute(Path(path), kind, "addnet")

    def cached(self, path: Path, kind: str = "checkpoint", algo: HashAlgo = "sha256") -> str | None:
        """Return the cached hash of ``path`` if it is still valid, else None; never reads the file's data.

        This is A1111's ``sha256_from_cache``: titles show ``[shorthash]`` only for files already hashed.
        A missing file gives None.
        """
        key = self._key(Path(path), kind, algo)
        try:
            stat = Path(path).stat()
        except FileNotFoundError:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            return None
        return str(entry["hash"])

    def _get_or_compute(self, path: Path, kind: str, algo: HashAlgo) -> str:
        """Return a valid cached hash or compute, store and persist it.

        Hashing runs outside the lock so that two different files can be hashed at once; two threads
        hashing the same file at once both compute it, which is harmless.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            RuntimeError: the file's size or mtime changed while it was being hashed.
        """
        hit = self.cached(path, kind, algo)
        if hit is not None:
            return hit
        before = path.stat()
        digest = sha256_file(path) if algo == "sha256" else addnet_hash(path)
        after = path.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise RuntimeError(f"{path} changed while it was being hashed; try again once it is complete")
        entry: dict[str, int | str] = {"size": after.st_size, "mtime_ns": after.st_mtime_ns, "hash": digest}
        with self._lock:
            self._entries[self._key(path, kind, algo)] = entry
            self._save()
        return digest

    @staticmethod
    def _key(path: Path, kind: str, algo: HashAlgo) -> str:
        """Return the cache key ``"<algo>/<kind>/<resolved absolute path>"``.

        Raises:
            ValueError: ``kind`` is empty or has characters other than letters, digits, ``_``, ``.``, ``-``.
        """
        if not _KIND.fullmatch(kind):
            raise ValueError(
                f"kind must be letters, digits, '_', '.' or '-' (like 'checkpoint'), got {kind!r}"
            )
        return f"{algo}/{kind}/{path.resolve()}"

    def _load(self) -> dict[str, dict[str, int | str]]:
        """Read the cache file, keeping only well-formed entries; anything unreadable gives an empty cache."""
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
            logger.warning("hash cache %s is unreadable (%s); starting empty", self._path, exc)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("version") != _CACHE_VERSION
            or not isinstance(entries, dict)
        ):
            logger.warning("hash cache %s has an unknown layout; starting empty", self._path)
            return {}
        return {key: entry for key, entry in entries.items() if _valid_entry(entry)}

    def _save(self) -> None:
        """Write the cache atomically; the caller holds the lock. A failed write is logged, not raised."""
        text = json.dumps({"version": _CACHE_VERSION, "entries": self._entries}, indent=1, sort_keys=True)
        tmp: str | None = None
        try:
            private_dir(self._path.parent)  # the file itself is mkstemp's 0600
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, self._path)
            tmp = None
        except OSError as exc:
            logger.warning("could not write hash cache %s (%s); hashes stay in memory only", self._path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
