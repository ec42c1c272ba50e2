"""Reading model files safely: safetensors, or pickled tensors through ``torch.load(weights_only=True)``.

Nothing from a model file ever executes. A safetensors header is validated before any tensor is touched;
a ``.ckpt``/``.pt`` file is unpickled only by torch's restricted weights-only unpickler, and anything that
needs more (a class from the file, a callback object) is refused with a one-line error.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

SAFETENSORS_SUFFIXES = frozenset({".safetensors", ".sft"})
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_SAFETENSORS_DTYPES = frozenset(
    {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U16", "U32",
     "U64", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}
)  # fmt: skip


class ModelFileError(Exception):
    """A model file that cannot be used; ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class TensorFile:
    """The tensors of one model file, still mapped from disk (no data read yet for safetensors).

    ``tensors`` values are CPU tensors in the file's dtype; ``metadata`` is the safetensors
    ``__metadata__`` (empty for pickled files); ``mapped``: the tensors are a private file mapping.
    """

    path: Path
    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str]
    mapped: bool = False


@functools.cache  # one ctypes function per process, not one per released tensor
def _madvise() -> Callable[[int, int, int], int] | None:
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


def release_mapped_pages(tensor: torch.Tensor) -> None:
    """Drop the resident file pages under a memory-mapped tensor that has been copied elsewhere.

    Only for tensors of a :class:`TensorFile` with ``mapped=True`` (a private, read-only-used mapping):
    the pages are clean, so the kernel re-reads them from the file if they are ever touched again. Whole
    pages inside the tensor's bytes only. Keeps a converting load (fp16 file → fp32) at ~1× the weights'
    size instead of weights + file.
    """
    madvise = _madvise()
    if madvise is None or tensor.device.type != "cpu":
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first = -(-start // _PAGE) * _PAGE
    last = end // _PAGE * _PAGE
    if last > first:
        madvise(first, last - first, _MADV_DONTNEED)


def read_safetensors_header(path: Path) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data.

    Returns ``(entries, metadata)`` where ``entries[name] = {"dtype", "shape", "data_offsets"}``.
    Raises :class:`ModelFileError` for a zero-byte, truncated or malformed file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(path, f"not a safetensors file: {size} bytes, too short for a header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > _MAX_HEADER_BYTES:
                raise ModelFileError(path, f"not a safetensors file: header length {header_len} is invalid")
            if header_len > size - 8:
                raise ModelFileError(
                    path, f"truncated: the header needs {header_len} bytes but the file has {size} in all"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, "not a safetensors file: header is not valid JSON") from e
    except RecursionError as e:
        raise ModelFileError(path, "not a safetensors file: the header's JSON is nested too deeply") from e
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(path, "invalid safetensors metadata: values must be strings")
    _check_entries(path, header, size - 8 - header_len)
    return header, metadata


def _check_entries(path: Path, header: dict[str, object], data_size: int) -> None:
    """Every tensor entry must be well formed and its bytes must lie inside the file."""
    end_max = 0
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
            raise ModelFileError(path, f"invalid safetensors entry for tensor {name[:200]!r}")
        offsets, shape = entry.get("data_offsets"), entry.get("shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)):
            raise ModelFileError(path, f"invalid data offsets for tensor {name[:200]!r}")
        if not offsets[0] <= offsets[1]:
            raise ModelFileError(path, f"invalid data offsets for tensor {name[:200]!r}")
        if not (isinstance(shape, list) and len(shape) <= 16 and all(_is_index(d) for d in shape)):
            raise ModelFileError(path, f"invalid shape for tensor {name[:200]!r}")
        end_max = max(end_max, offsets[1])
    if end_max > data_size:
        raise ModelFileError(
            path,
            f"truncated: tensors need {end_max} data bytes but the file has {data_size} (incomplete download?)",  # noqa: E501
        )


def _is_index(value: object) -> bool:
    """A JSON integer that can be a size or an offset (bool is an int to Python, not to safetensors)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def read_tensor_file(path: Path) -> TensorFile:
    """Open a model file and return its tensors, refusing anything that would execute code.

    safetensors files are memory-mapped (no copy). ``.ckpt``/``.pt``/``.pth``/``.bin`` go through
    ``torch.load(weights_only=True, mmap=True)``; a nested ``state_dict`` entry (Lightning checkpoints)
    is unwrapped.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFileError(path, "no such file")
    if path.stat().st_size == 0:
        raise ModelFileError(path, "empty file (0 bytes)")
    if suffix in SAFETENSORS_SUFFIXES:
        _, metadata = read_safetensors_header(path)
        try:
            tensors = load_file(path, device="cpu")
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ModelFileError(path, f"corrupt safetensors file: {_first_line(e)}") from e
        return TensorFile(path, tensors, metadata, mapped=True)
    if suffix in PICKLE_SUFFIXES:
        return TensorFile(path, _load_pickled(path), {})
    allowed = ", ".join(sorted(MODEL_SUFFIXES))
    raise ModelFileError(
        path, f"unsupported file extension {suffix or '(none)'!r}; expected one of {allowed}"
    )


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` with the weights-only unpickler; classes and callables in the pickle are refused."""
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format; legacy tar/pickle files load eagerly
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        if reason is None:
            with path.open("rb") as f:
                is_pickle = f.read(1) == b"\x80"  # PROTO opcode: a pickle, with opcodes torch does not allow
            if not is_pickle:
                raise ModelFileError(path, f"corrupt or truncated checkpoint: {_useful_line(e)}") from e
            reason = _useful_line(e)
        raise ModelFileError(
            path,
            "refused: the file needs full unpickling, which could run code from the file "
            f"({reason}); convert it to .safetensors with a trusted tool",
        ) from e
    except Exception as e:  # untrusted bytes: the unpickler may raise anything; report, never crash
        raise ModelFileError(path, f"corrupt or truncated checkpoint: {_first_line(e)}") from e
    return _state_dict_of(path, obj)


def _state_dict_of(path: Path, obj: object) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": {...}}`` (Lightning), ``{"params_ema"|"params": {...}}`` (BasicSR
    upscalers and face restorers, EMA weights first), ``{"model": {...}}`` (training checkpoints such as
    the normal_bae annotator's) or ``{"depth_model": {...}}`` (the LeReS annotator's) and keep only tensor
    entries."""
    for key in ("state_dict", "params_ema", "params", "model", "depth_model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ModelFileError(path, f"not a state dict: the file holds a {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(path, "no tensors in the file")
    return tensors


def _unpickling_reason(e: pickle.UnpicklingError) -> str | None:
    """The line of torch's long weights-only message naming a forbidden global or class, if any.

    None means the bytes are not a usable pickle at all (e.g. "Unsupported operand" for a PNG).
    """
    text = str(e)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"forbidden global {match.group(1)}"
    if "Unsupported class" in text:
        return _useful_line(e)
    return None


def _useful_line(e: BaseException) -> str:
    """Skip torch's generic preamble ("Weights only load failed…") to the line that says what failed."""
    for line in str(e).splitlines():
        if "Unsupported" in line or ("error:" in line.lower() and line.strip()[-1:] != ":"):
            return line.strip()[:300]
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
