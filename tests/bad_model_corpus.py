"""A corpus of malformed model files, and a loader run over it that reports each outcome as JSON lines.

``python -m tests.bad_model_corpus FOLDER SEED`` writes the corpus into ``FOLDER``, loads every file with
``latentstudio.models.loader.load_checkpoint`` in this process, and prints one line per file:
``{"file", "outcome": "loaded" | "refused" | "crashed", "message"}``, then ``{"maxrss_mb"}``. It runs in
its own process so that the peak memory it reports is the loader's, not a test runner's.

Cases (seeded, so a failure can be replayed): safetensors headers with hostile ``data_offsets``/``shape``/
``dtype`` values, deep nesting, truncation and byte flips; architecture metadata of the built-in model with
one field set to a hostile value (zero, negative, huge, wrong type, a dotted name, nesting); pickles.
"""

from __future__ import annotations

import itertools
import json
import random
import resource
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from latentstudio.models import loader
from latentstudio.models.arch import ARCH_METADATA_KEY
from latentstudio.models.builtin import builtin_checkpoint
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError
from latentstudio.models.synthetic import build_components, single_file_state, tiny_spec, write_checkpoint

HOSTILE: list[Any] = [
    0, -1, -(2**40), 2**40, 2**63, 10**30, 1.5, float("1e308"), "4", "os.system", "", None, True, [], {},
    [0], [2**40], [[[[1]]]], {"a": 1}, "x" * 10_000,
]  # fmt: skip


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(header: dict[str, Any] | str, data: bytes) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def _header_cases(base: Path, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    header, data = _split(base)
    names = sorted(k for k in header if k != "__metadata__")
    for i in range(40):
        mutated = json.loads(json.dumps(header))
        entry = mutated[rng.choice(names)]
        field = rng.choice(["data_offsets", "shape", "dtype"])
        choice = rng.choice(HOSTILE)
        if field == "data_offsets" and rng.random() < 0.5:
            choice = [str(v) for v in entry["data_offsets"]]  # numbers as strings
        entry[field] = choice
        yield f"header-{i:02d}-{field}", _join(mutated, data)
    deep = "[" * 60_000 + "]" * 60_000
    yield "header-deep-array", _join('{"a": ' + deep + "}", data)
    yield "metadata-deep", _join('{"__metadata__": {"x": ' + deep + "}}", data)
    for i in range(15):
        raw = bytearray(_join(header, data))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(8, 8 + min(len(raw) - 8, 4000))
            raw[at] = rng.randrange(256)
        yield f"flip-{i:02d}", bytes(raw)
    full = _join(header, data)
    for cut in (7, 8, 100, len(full) // 2, len(full) - 1):
        yield f"truncated-{cut}", full[:cut]


def _arch_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    header, data = _split(builtin_checkpoint())
    arch = json.loads(header["__metadata__"][ARCH_METADATA_KEY])
    named = {
        ("unet", "attention_head_dim"): 0,
        ("text_encoder", "max_position_embeddings"): 2**40,
        ("unet", "act_fn"): "os.system",
        ("vae", "norm_num_groups"): 0,
        ("unet", "block_out_channels"): [10**6, 10**6, 10**6],
        ("unet", "layers_per_block"): 10**6,
        ("text_encoder", "num_attention_heads"): 3,  # does not divide the width
        ("text_encoder", "num_hidden_layers"): 10**7,
        ("unet", "down_block_types"): ["os.system"],
    }
    for _ in range(30):
        component = rng.choice(sorted(arch))
        named[(component, rng.choice(sorted(arch[component])))] = rng.choice(HOSTILE)
    for n, ((component, field), value) in enumerate(named.items()):
        mutated = json.loads(json.dumps(arch))
        mutated[component][field] = value
        meta = {**header["__metadata__"], ARCH_METADATA_KEY: json.dumps(mutated)}
        yield f"arch-{n:02d}-{component}-{field}", _join({**header, "__metadata__": meta}, data)
    nested = json.dumps({"unet": {"x": json.loads("[" * 500 + "]" * 500)}})
    deep_meta = {**header["__metadata__"], ARCH_METADATA_KEY: "[" * 60_000 + "]" * 60_000}
    yield "arch-deep", _join({**header, "__metadata__": deep_meta}, data)
    yield "arch-nested-value", _join({**header, "__metadata__": {ARCH_METADATA_KEY: nested}}, data)
    yield "arch-not-json", _join({**header, "__metadata__": {ARCH_METADATA_KEY: "{"}}, data)


def write_corpus(folder: Path, seed: int) -> list[Path]:
    """The corpus files in ``folder`` (``.safetensors``, and ``.ckpt`` pickles)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    spec = tiny_spec(Family.SD1)
    unet, vae, encoders = build_components(spec, seed)
    base = write_checkpoint(folder / "base.tmp", single_file_state(Family.SD1, unet, vae, encoders))
    paths = []
    for name, content in itertools.chain(_header_cases(base, rng), _arch_cases(rng)):  # one file in RAM
        path = folder / f"{name}.safetensors"
        path.write_bytes(content)
        paths.append(path)
    pickles = {"list": [1, 2], "tensor": torch.zeros(2), "empty-dict": {}, "nested": {"state_dict": 3}}
    for name, obj in pickles.items():
        path = folder / f"pickle-{name}.ckpt"
        torch.save(obj, path)
        paths.append(path)
    base.unlink()
    return paths


def main(folder: Path, seed: int) -> None:
    paths = write_corpus(folder, seed)
    print(json.dumps({"before_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)
    for path in paths:
        try:
            loader.load_checkpoint(path, device=torch.device("cpu"), dtype=torch.float32)
        except ModelFileError as e:
            outcome, message = "refused", str(e)
        except BaseException as e:  # the point: report anything else as a crash
            outcome, message = "crashed", f"{type(e).__name__}: {str(e)[:300]}"
        else:
            outcome, message = "loaded", ""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps({"file": str(path), "outcome": outcome, "message": message, "rss": rss}), flush=True)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
