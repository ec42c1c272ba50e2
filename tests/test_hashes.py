"""A1111-exact hashes (reference/a1111-compat.md §4.1-4.2) and the persistent hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentstudio.models.hashes import (
    NOFILE,
    HashCache,
    addnet_hash,
    legacy_hash,
    sha256_file,
    short_hash,
)

# Reference §4.2 vector, verified against A1111 by running it.
VECTOR = bytes.fromhex("2700000000000000") + b'{"__metadata__":{"ss_output_name":"x"}}' + bytes([0, 1, 2, 3])
VECTOR_SHA256 = "349bc5d2a971b7fcd939dbeb8c7132ff34e0a203383fea5f6799c9f2ebdc027f"
VECTOR_ADDNET = "054edec1d0211f624fed0cbca9d4f9400b0e491c43742af2c5b0abebf0c990d8"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MIB = 1 << 20


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pattern(size: int) -> bytes:
    """Deterministic bytes where every 64 KiB window differs from its neighbours."""
    return bytes((i * 7 + (i >> 16)) & 0xFF for i in range(size))


def test_vector_bytes_match_reference_hex() -> None:
    assert VECTOR.hex() == (
        "27000000000000007b225f5f6d657461646174615f5f223a7b2273735f6f75747075745f6e616d65223a2278227d7d00010203"
    )


def test_sha256_file_reference_vector(tmp_path: Path) -> None:
    assert sha256_file(_write(tmp_path / "x.safetensors", VECTOR)) == VECTOR_SHA256


def test_addnet_hash_reference_vector(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", VECTOR)
    assert addnet_hash(path) == VECTOR_ADDNET
    assert short_hash(addnet_hash(path), 12) == "054edec1d021"


def test_addnet_hash_ignores_metadata_edits(tmp_path: Path) -> None:
    header = b'{"__metadata__":{"ss_output_name":"a much longer name"}}'
    path = _write(
        tmp_path / "y.safetensors", len(header).to_bytes(8, "little") + header + bytes([0, 1, 2, 3])
    )
    assert addnet_hash(path) == hashlib.sha256(bytes([0, 1, 2, 3])).hexdigest()
    assert addnet_hash(path) == VECTOR_ADDNET


def test_addnet_hash_of_other_files_is_full_sha256(tmp_path: Path) -> None:
    for suffix in (".pt", ".ckpt", ".bin"):
        assert addnet_hash(_write(tmp_path / f"x{suffix}", VECTOR)) == VECTOR_SHA256


def test_addnet_hash_suffix_is_case_insensitive(tmp_path: Path) -> None:
    assert addnet_hash(_write(tmp_path / "x.SafeTensors", VECTOR)) == VECTOR_ADDNET


def test_addnet_hash_header_only_file_hashes_empty(tmp_path: Path) -> None:
    header = b"{}"
    path = _write(tmp_path / "e.safetensors", len(header).to_bytes(8, "little") + header)
    assert addnet_hash(path) == EMPTY_SHA256


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02", "shorter than its 8-byte header"),
        ((1000).to_bytes(8, "little") + b"{}", "runs past the end"),
    ],
)
def test_addnet_hash_rejects_truncated_safetensors(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        addnet_hash(_write(tmp_path / "bad.safetensors", data))


def test_legacy_hash_small_file_is_empty_read(tmp_path: Path) -> None:
    assert legacy_hash(_write(tmp_path / "small.ckpt", VECTOR)) == "e3b0c442"
    assert legacy_hash(_write(tmp_path / "almost.ckpt", bytes(MIB))) == "e3b0c442"


def test_legacy_hash_missing_file(tmp_path: Path) -> None:
    assert legacy_hash(tmp_path / "missing.ckpt") == NOFILE == "NOFILE"


def test_legacy_hash_reads_64k_at_1mib(tmp_path: Path) -> None:
    data = _pattern(2 * MIB)
    expected = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert legacy_hash(_write(tmp_path / "big.ckpt", data)) == expected
    # A partial window (file ends inside it) hashes what is there.
    partial = data[: MIB + 100]
    assert (
        legacy_hash(_write(tmp_path / "partial.ckpt", partial))
        == hashlib.sha256(data[MIB : MIB + 100]).hexdigest()[:8]
    )


def test_sha256_file_multi_block(tmp_path: Path) -> None:
    data = _pattern(3 * MIB + 17)
    assert sha256_file(_write(tmp_path / "big.bin", data)) == hashlib.sha256(data).hexdigest()


def test_sha256_file_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing.safetensors")


def test_short_hash() -> None:
    assert short_hash(VECTOR_SHA256) == "349bc5d2a9"
    assert short_hash(VECTOR_SHA256, 12) == "349bc5d2a971"
    with pytest.raises(ValueError, match="length"):
        short_hash(VECTOR_SHA256, 0)
    with pytest.raises(ValueError, match="non-empty"):
        short_hash("")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_addnet_hash_is_sha256_of_tensor_bytes(header: bytes, tensors: bytes) -> None:
    # A TemporaryDirectory per example: hypothesis and the function-scoped tmp_path do not mix.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.safetensors"
        path.write_bytes(len(header).to_bytes(8, "little") + header + tensors)
        assert addnet_hash(path) == hashlib.sha256(tensors).hexdigest()


# --- HashCache ---------------------------------------------------------------------------------------------


def _rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Replace the file's content with same-size ``data`` and restore its mtime_ns."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_cache_hashes_once_while_size_and_mtime_hold(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.safetensors", VECTOR)
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    assert cache.cached(model) is None
    assert cache.sha256(model) == VECTOR_SHA256
    assert cache.cached(model) == VECTOR_SHA256
    _rewrite_keeping_stat(model, bytes(len(VECTOR)))
    assert sha256_file(model) != VECTOR_SHA256  # the file really changed...
    assert cache.sha256(model) == VECTOR_SHA256  # ...but the cache was trusted, not re-read


def test_cache_mtime_change_invalidates(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.safetensors", VECTOR)
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.sha256(model) == VECTOR_SHA256
    _rewrite_keeping_stat(model, bytes(len(VECTOR)))
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.cached(model) is None
    assert cache.sha256(model) == hashlib.sha256(bytes(len(VECTOR))).hexdigest()


def test_cache_size_change_invalidates(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.ckpt", VECTOR)
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.sha256(model) == VECTOR_SHA256
    stat = model.stat()
    model.write_bytes(VECTOR + b"!")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.sha256(model) == hashlib.sha256(VECTOR + b"!").hexdigest()


def test_cache_survives_new_instance(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.safetensors", VECTOR)
    cache_file = tmp_path / "cache" / "hashes.json"
    HashCache(cache_file).sha256(model)
    _rewrite_keeping_stat(model, bytes(len(VECTOR)))
    reopened = HashCache(cache_file)
    assert reopened.cached(model) == VECTOR_SHA256
    assert reopened.sha256(model) == VECTOR_SHA256
    assert not [p for p in cache_file.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_cache_separates_algorithms_and_kinds(tmp_path: Path) -> None:
    model = _write(tmp_path / "x.safetensors", VECTOR)
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.addnet(model) == VECTOR_ADDNET
    assert cache.sha256(model, kind="lora") == VECTOR_SHA256
    assert cache.cached(model, kind="lora", algo="addnet") == VECTOR_ADDNET
    assert cache.cached(model, kind="checkpoint") is None
    data = json.loads((tmp_path / "hashes.json").read_text())
    assert data["version"] == 1
    assert set(data["entries"]) == {f"addnet/lora/{model.resolve()}", f"sha256/lora/{model.resolve()}"}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'{"version": 99, "entries": {}}', b""],
)
def test_cache_tolerates_corrupt_file(tmp_path: Path, content: bytes) -> None:
    cache_file = _write(tmp_path / "hashes.json", content)
    model = _write(tmp_path / "m.safetensors", VECTOR)
    cache = HashCache(cache_file)
    assert cache.sha256(model) == VECTOR_SHA256
    assert HashCache(cache_file).cached(model) == VECTOR_SHA256  # rewritten as a valid cache


def test_cache_drops_malformed_entries(tmp_path: Path) -> None:
    model = _write(tmp_path / "m.safetensors", VECTOR)
    stat = model.stat()
    key = f"sha256/checkpoint/{model.resolve()}"
    bad = {"version": 1, "entries": {key: {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": "zz"}}}
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text(json.dumps(bad))
    assert HashCache(cache_file).cached(model) is None


def test_cache_unreadable_path_is_tolerated(tmp_path: Path) -> None:
    cache_dir = tmp_path / "hashes.json"
    cache_dir.mkdir()  # a directory where the file should be: unreadable and unwritable
    model = _write(tmp_path / "m.safetensors", VECTOR)
    cache = HashCache(cache_dir)
    assert cache.sha256(model) == VECTOR_SHA256
    assert cache.cached(model) == VECTOR_SHA256  # kept in memory


def test_cache_missing_model_and_bad_kind(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.cached(tmp_path / "missing.ckpt") is None
    with pytest.raises(FileNotFoundError):
        cache.sha256(tmp_path / "missing.ckpt")
    model = _write(tmp_path / "m.ckpt", VECTOR)
    for kind in ("", "a/b", "has space"):
        with pytest.raises(ValueError, match="kind"):
            cache.sha256(model, kind=kind)


def test_cache_threads(tmp_path: Path) -> None:
    models = [_write(tmp_path / f"m{i}.ckpt", VECTOR + bytes([i])) for i in range(8)]
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = cache.sha256(models[i % 8])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[i] == hashlib.sha256(VECTOR + bytes([i % 8])).hexdigest() for i in range(32))
    reopened = HashCache(cache_file)
    assert all(reopened.cached(model) is not None for model in models)
