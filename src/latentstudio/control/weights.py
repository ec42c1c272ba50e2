"""Annotator networks loaded from the files the user placed: the weights-only loader, a check that the file
holds exactly the network's tensors, and a small cache per file version (the extension keeps each
annotator loaded once used)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from latentstudio.models.files import ModelFileError, read_tensor_file

KEEP = 3  # annotator networks kept loaded (openpose_full uses three)
M = TypeVar("M", bound=torch.nn.Module)

_lock = threading.Lock()
_loaded: OrderedDict[tuple[Path, int, int, object, str], torch.nn.Module] = OrderedDict()


def uninitialised(build: Callable[[], M]) -> M:
    """``build()`` with its tensors allocated on the CPU but not initialised, the batch-norm step counters
    zero: for a large network whose every tensor :func:`load_network` then replaces from its file (drawing
    tens of millions of random numbers first would take seconds)."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device="cpu")
    for name, buffer in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buffer.zero_()
    return model


def load_network(path: Path, build: Callable[[], M], name: str, prefix: str = "") -> M:
    """``build()`` with ``path``'s weights (fp32, eval, no gradients), kept while the file is unchanged. A
    file whose tensors (``prefix`` dropped from their keys where present) are not exactly the network's is
    :class:`ModelFileError` naming it and ``name`` (batch-norm ``num_batches_tracked`` counters, which no
    forward reads, may be absent)."""
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns, build, prefix)
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]  # type: ignore[return-value]
    state = {k.removeprefix(prefix): t for k, t in read_tensor_file(path).tensors.items()}
    model = build()
    defaults = model.state_dict()
    for counter, tensor in defaults.items():  # batch-norm step counters: files saved by old PyTorch lack them
        if counter.endswith(".num_batches_tracked") and counter not in state:
            state[counter] = tensor
    expected = {k: tuple(t.shape) for k, t in defaults.items()}
    found = {k: tuple(t.shape) for k, t in state.items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
        raise ModelFileError(path, f"not the {name} network (keys or shapes differ: {wrong[:3]})")
    model.load_state_dict({k: t.float() for k, t in state.items()})
    model.eval().requires_grad_(False)
    with _lock:
        _loaded[key] = model
        while len(_loaded) > KEEP:
            _loaded.popitem(last=False)
    return model
