"""Textual-inversion embeddings: every file format, width checks, refusal of pickles, A1111 token matching."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from latentstudio.models.embedding_files import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    Embedding,
    read_embedding,
    scan_embeddings,
)
from latentstudio.models.embeddings import EmbeddingDatabase, clip_token_ids, ti_hashes
from latentstudio.models.files import ModelFileError
from latentstudio.models.hashes import HashCache

SD1 = {TEXT_ENCODER: 768}
SD2 = {TEXT_ENCODER: 1024}
SDXL = {TEXT_ENCODER: 768, TEXT_ENCODER_2: 1280}


def _vec(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def _short(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class _Exploit:
    """Unpickling this runs ``touch <marker>`` (if anything ever unpickles it fully)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An embeddings/ folder with one file of each format (and a subfolder)."""
    root = tmp_path / "embeddings"
    (root / "sub").mkdir(parents=True)
    save_file({"emb_params": _vec(2, 768, 1)}, root / "emb-params.safetensors")
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(_vec(3, 768, 2))},
            "name": "trained-name",
            "step": 500,
            "sd_checkpoint": "abcdef1234",
            "sd_checkpoint_name": "v1-5-pruned-emaonly",
        },
        root / "s2p.pt",
    )
    torch.save({"<cat-toy>": _vec(1, 768, 3)[0]}, root / "sub" / "learned_embeds.bin")
    save_file({"clip_l": _vec(2, 768, 4), "clip_g": _vec(2, 1280, 5)}, root / "xl.safetensors")
    torch.save({"string_to_param": {"*": _vec(4, 1024, 6)}, "step": 10}, root / "sd2.pt")
    return root


def test_every_format_reads_with_vectors_shape_metadata_and_hash(folder: Path) -> None:
    emb = read_embedding(folder / "emb-params.safetensors")
    assert emb.name == "emb-params"
    assert emb.widths == {TEXT_ENCODER: 768}
    assert torch.equal(emb.vectors[TEXT_ENCODER], _vec(2, 768, 1))
    assert (emb.shape, emb.vector_count, emb.step, emb.sd_checkpoint) == (768, 2, None, None)
    assert emb.hash == _short(folder / "emb-params.safetensors")

    s2p = read_embedding(folder / "s2p.pt")
    assert s2p.name == "s2p"  # the file stem, not the "name" inside (A1111)
    assert torch.equal(s2p.vectors[TEXT_ENCODER], _vec(3, 768, 2))
    assert type(s2p.vectors[TEXT_ENCODER]) is torch.Tensor  # a plain copy, not the file's Parameter
    assert s2p.vectors[TEXT_ENCODER].dtype == torch.float32
    assert (s2p.step, s2p.sd_checkpoint, s2p.sd_checkpoint_name) == (500, "abcdef1234", "v1-5-pruned-emaonly")
    assert s2p.hash == _short(folder / "s2p.pt")

    diffusers = read_embedding(folder / "sub" / "learned_embeds.bin")
    assert diffusers.name == "learned_embeds"
    assert diffusers.vector_count == 1
    assert torch.equal(diffusers.vectors[TEXT_ENCODER], _vec(1, 768, 3))  # [768] became [1, 768]

    xl = read_embedding(folder / "xl.safetensors")
    assert xl.widths == {TEXT_ENCODER: 768, TEXT_ENCODER_2: 1280}
    assert torch.equal(xl.vectors[TEXT_ENCODER], _vec(2, 768, 4))
    assert torch.equal(xl.vectors[TEXT_ENCODER_2], _vec(2, 1280, 5))
    assert (xl.shape, xl.vector_count) == (2048, 2)  # A1111: clip_g + clip_l widths


def test_hash_goes_through_the_cache(folder: Path, tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "hashes.json")
    emb = read_embedding(folder / "s2p.pt", hash_cache=cache)
    full = hashlib.sha256((folder / "s2p.pt").read_bytes()).hexdigest()
    assert emb.hash == full[:12]
    assert cache.cached(folder / "s2p.pt", "textual_inversion") == full
    assert full in (tmp_path / "hashes.json").read_text()


@pytest.mark.parametrize(
    ("widths", "loaded", "skipped"),
    [
        (SD1, ["emb-params", "learned_embeds", "s2p"], ["sd2", "xl"]),
        (SD2, ["sd2"], ["emb-params", "learned_embeds", "s2p", "xl"]),
        (SDXL, ["xl"], ["emb-params", "learned_embeds", "s2p", "sd2"]),
    ],
)
def test_database_keeps_matching_widths_and_skips_others(
    folder: Path, widths: dict[str, int], loaded: list[str], skipped: list[str]
) -> None:
    db = EmbeddingDatabase.load(folder, widths)
    assert sorted(db.loaded) == loaded
    assert sorted(db.skipped) == skipped == sorted(db.skipped_embeddings)
    assert db.errors == {}


def test_skip_reasons_name_both_layouts(folder: Path) -> None:
    db = EmbeddingDatabase.load(folder, SDXL)
    assert db.skipped["s2p"] == (
        "made for SD1 (text_encoder 768); this model needs SDXL (text_encoder 768 + text_encoder_2 1280)"
    )
    assert db.skipped["sd2"].startswith("made for SD2 (text_encoder 1024)")
    assert "this model needs SD1" in EmbeddingDatabase.load(folder, SD1).skipped["xl"]


def test_api_listing(folder: Path) -> None:
    body = EmbeddingDatabase.load(folder, SD1).listing().to_api()
    assert set(body) == {"loaded", "skipped"}
    assert body["loaded"]["s2p"] == {
        "step": 500,
        "sd_checkpoint": "abcdef1234",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
        "shape": 768,
        "vectors": 3,
    }
    assert body["skipped"]["xl"] == {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 2048, "vectors": 2
    }  # fmt: skip
    assert json.loads(json.dumps(body)) == body


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_exploit_is_refused_and_never_runs(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"string_to_param": {"*": _Exploit(marker)}}, folder / "evil.pt")
    (folder / "evil2.bin").write_bytes(pickle.dumps({"x": _Exploit(marker)}, protocol=2))
    (folder / "evil3.bin").write_bytes(pickle.dumps(_Exploit(marker), protocol=4))  # FRAME opcodes
    (folder / "evil4.pt").write_bytes(pickle.dumps(_Exploit(marker), protocol=0))  # text pickle
    db = EmbeddingDatabase.load(folder, SD1)
    assert not marker.exists()
    assert sorted(db.errors) == ["evil", "evil2", "evil3", "evil4"]
    for reason in db.errors.values():
        assert "refused: the file needs full unpickling" in reason
        assert "\n" not in reason
    for name in ("evil", "evil2", "evil4"):
        assert "forbidden global posix.system" in db.errors[name]
    assert sorted(db.loaded) == ["emb-params", "learned_embeds", "s2p"]  # the good files still load
    with pytest.raises(ModelFileError, match="refused"):
        read_embedding(folder / "evil.pt")
    assert not marker.exists()
    torch.load(folder / "evil.pt", weights_only=False)  # the test can fail: a full unpickle runs it
    assert marker.exists()


def test_bad_files_are_one_line_errors(folder: Path) -> None:
    (folder / "empty.pt").write_bytes(b"")
    (folder / "garbage.bin").write_bytes(b"GIF89a not a checkpoint")
    good = (folder / "emb-params.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) - 100])
    (folder / "cut.pt").write_bytes((folder / "s2p.pt").read_bytes()[:300])
    save_file({"a.lora_up": _vec(2, 4, 0), "b.lora_down": _vec(4, 2, 0)}, folder / "lora.safetensors")
    torch.save({"string_to_param": {"*": _vec(1, 768, 0), "+": _vec(1, 768, 0)}}, folder / "multi.pt")
    torch.save({"clip_l": _vec(2, 768, 0), "clip_g": _vec(3, 1280, 0)}, folder / "rows.pt")
    torch.save({"x": torch.zeros(1, 768, dtype=torch.int64)}, folder / "ints.pt")
    torch.save({"x": torch.full((1, 768), float("nan"))}, folder / "nan.pt")
    torch.save([_vec(1, 768, 0)], folder / "list.pt")
    db = EmbeddingDatabase.load(folder, SD1)
    expected = {
        "empty": "empty file",
        "garbage": "corrupt file: neither a torch zip archive nor a pickle",
        "truncated": "truncated",
        "cut": "corrupt or truncated file: PytorchStreamReader failed reading zip archive",
        "lora": "not a textual-inversion embedding",
        "multi": "exactly one term, got 2",
        "rows": "clip_l has 2 vectors but clip_g has 3",
        "ints": "torch.int64 [1, 768]; expected floating",
        "nan": "NaN",
        "list": "holds a list",
    }
    assert set(db.errors) == set(expected)
    for name, fragment in expected.items():
        assert fragment in db.errors[name]
        assert "\n" not in db.errors[name]
    assert sorted(db.loaded) == ["emb-params", "learned_embeds", "s2p"]


def test_duplicate_names_first_in_natural_order_wins(folder: Path) -> None:
    save_file({"emb_params": _vec(1, 768, 9)}, folder / "sub" / "s2p.safetensors")
    db = EmbeddingDatabase.load(folder, SD1)
    assert db.loaded["s2p"].path == folder / "s2p.pt"
    assert "duplicate name" in db.errors["s2p"]


def test_scan_is_recursive_natural_sorted_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "embeddings"
    for rel in [
        "emb10.pt", "emb2.safetensors", "Emb1.BIN", "sub/emb3.pt", "a/z.pt",
        ".hidden.pt", ".cache/x.pt", "notes.txt", "preview.png", "x.ckpt",
    ]:  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root)  # a cycle: walked once
    (root / "broken.pt").symlink_to(root / "missing.pt")
    found = [p.relative_to(root).as_posix() for p in scan_embeddings(root)]
    assert found == ["a/z.pt", "Emb1.BIN", "emb2.safetensors", "emb10.pt", "sub/emb3.pt"]
    assert scan_embeddings(tmp_path / "missing") == []


def _db(*names: str, widths: dict[str, int] | None = None) -> EmbeddingDatabase:
    embs = [Embedding(name, {TEXT_ENCODER: _vec(i + 1, 768, i)}, Path(f"{name}.pt"), hash=f"{i:012x}")
            for i, name in enumerate(names)]  # fmt: skip
    return EmbeddingDatabase.from_embeddings(embs, widths or SD1)


def test_longest_name_wins_with_the_real_tokenizer() -> None:
    db = _db("bad", "bad-hands", "easyneg")
    tokens = clip_token_ids("a BAD-hands cat, bad badly easyneg")
    bad, bad_hands = clip_token_ids("bad"), clip_token_ids("bad-hands")
    assert (len(bad), len(bad_hands)) == (1, 3)
    assert bad_hands[0] == bad[0]
    assert db.by_first_token[bad[0]][0][1].name == "bad-hands"  # longest candidate first
    found = {}
    offset = 0
    while offset < len(tokens):
        emb, used = db.find_at(tokens, offset)
        if emb is not None:
            found[offset] = (emb.name, used)
        offset += max(used, 1)
    assert found == {1: ("bad-hands", 3), 6: ("bad", 1), 8: ("easyneg", len(clip_token_ids("easyneg")))}
    assert db.find_at(tokens, 0) == (None, 0)  # "a" is a plain word
    with pytest.raises(IndexError):
        db.find_at(tokens, len(tokens))


def test_bad_alone_matches_when_hands_does_not_follow() -> None:
    db = _db("bad", "bad-hands")
    tokens = clip_token_ids("bad-feet")
    emb, used = db.find_at(tokens, 0)
    assert emb is not None
    assert (emb.name, used) == ("bad", 1)


def test_ti_hashes_infotext_value() -> None:
    db = _db("bad", "bad-hands", "a,b:c")
    used = [db.loaded["bad-hands"], db.loaded["bad"], db.loaded["bad-hands"], db.loaded["a,b:c"]]
    assert ti_hashes(used) == "bad-hands: 000000000001, bad: 000000000000, abc: 000000000002"
    assert ti_hashes([Embedding("nohash", {TEXT_ENCODER: _vec(1, 768, 0)}, Path("n.pt"))]) == ""


def test_database_is_read_only_and_checks_widths() -> None:
    db = _db("bad")
    loaded: Any = db.loaded  # a read-only mapping proxy
    with pytest.raises(TypeError):
        loaded["x"] = db.loaded["bad"]
    with pytest.raises(ValueError, match="widths must map"):
        EmbeddingDatabase.from_embeddings([], {"unet": 768})
    with pytest.raises(ValueError, match="widths must map"):
        EmbeddingDatabase.from_embeddings([], {})
    with pytest.raises(ValueError, match=r"\[n, width\]"):
        Embedding("x", {TEXT_ENCODER: torch.zeros(768)}, Path("x.pt"))
