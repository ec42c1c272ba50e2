"""LoRA discovery as A1111: folders, names and aliases, the addnet hash vector, metadata, family and rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentstudio.models.families import Family
from latentstudio.models.hashes import HashCache
from latentstudio.models.lora import LoraLibrary
from latentstudio.models.lora.library import family_of, metadata_json, rank_of

# reference/a1111-compat.md §4.2: a safetensors file with only metadata and 4 data bytes
ADDNET_VECTOR = bytes.fromhex(
    "27000000000000007b225f5f6d657461646174615f5f223a7b2273735f6f75747075745f6e616d65223a2278227d7d00010203"
)


def _lora(
    path: Path, metadata: dict[str, str] | None = None, *, rank: int = 4, prefix: str = "lora_te_"
) -> Path:
    key = f"{prefix}text_model_encoder_layers_0_self_attn_q_proj"
    state = {f"{key}.lora_down.weight": torch.ones(rank, 768), f"{key}.lora_up.weight": torch.ones(768, rank)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def _library(tmp_path: Path) -> LoraLibrary:
    return LoraLibrary([tmp_path / "Lora", tmp_path / "LyCORIS"], HashCache(tmp_path / "hashes.json"))


def test_addnet_hash_vector_and_alias(tmp_path: Path) -> None:
    (tmp_path / "Lora").mkdir()
    (tmp_path / "Lora" / "vector.safetensors").write_bytes(ADDNET_VECTOR)
    library = _library(tmp_path)
    info = library.find("x")  # found by its alias (ss_output_name)
    assert info is not None
    assert info.name == "vector"
    assert library.find("vector") == info
    assert library.hash(info) == "054edec1d0211f624fed0cbca9d4f9400b0e491c43742af2c5b0abebf0c990d8"
    assert library.shorthash(info) == "054edec1d021"
    assert info.family is None  # no keys and no version metadata


def test_discovery_folders_names_aliases_and_previews(tmp_path: Path) -> None:
    _lora(tmp_path / "Lora" / "style10.safetensors")
    _lora(tmp_path / "Lora" / "sub" / "style2.safetensors", {"ss_output_name": "shared"})
    _lora(tmp_path / "LyCORIS" / "loha.safetensors", {"ss_output_name": "shared"})
    _lora(tmp_path / "Lora" / "none-alias.safetensors", {"ss_output_name": "none"})
    _lora(tmp_path / "Lora" / ".hidden" / "secret.safetensors")
    (tmp_path / "Lora" / "notes.txt").write_text("not a LoRA")
    (tmp_path / "Lora" / "style10.preview.png").write_bytes(b"png")
    torch.save({"lora_unet_conv_in.diff": torch.zeros(2)}, tmp_path / "Lora" / "old.pt")
    _lora(tmp_path / "elsewhere" / "linked.safetensors")
    (tmp_path / "Lora" / "link").symlink_to(tmp_path / "elsewhere")  # followed, as A1111
    (tmp_path / "Lora" / "sub" / "loop").symlink_to(tmp_path / "Lora")  # a cycle is walked once
    library = _library(tmp_path)
    assert [i.name for i in library.infos()] == ["linked", "loha", "none-alias", "old", "style2", "style10"]
    assert library.errors == []
    assert library.find("style10").preview == tmp_path / "Lora" / "style10.preview.png"  # type: ignore[union-attr]
    assert library.find("style2").preview is None  # type: ignore[union-attr]
    # an alias two files share is forbidden (A1111): only file stems match it
    assert library.find("shared") is None
    assert library.find("loha").alias == "shared"  # type: ignore[union-attr]
    assert library.find("none") is None  # "none" is never an alias
    assert library.find("secret") is None
    assert library.find("old").path.suffix == ".pt"  # type: ignore[union-attr]


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "Lora").mkdir()
    (tmp_path / "Lora" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    library = _library(tmp_path)
    assert library.infos() == []
    assert len(library.errors) == 1
    assert "broken.safetensors" in library.errors[0]
    assert "truncated" in (library.unreadable("broken") or "")


def test_hash_prefers_the_cache_then_the_metadata_then_computes(tmp_path: Path) -> None:
    claimed = "ab" * 32
    path = _lora(tmp_path / "Lora" / "claimed.safetensors", {"sshs_model_hash": claimed})
    library = _library(tmp_path)
    info = library.find("claimed")
    assert info is not None
    assert library.hash(info) == claimed  # A1111 trusts sshs_model_hash when nothing is cached
    computed = library.hashes.addnet(path, "lora")
    assert computed != claimed
    assert library.hash(info) == computed  # once hashed, the real hash wins
    assert library.describe(info).shorthash == computed[:12]


@pytest.mark.parametrize(
    ("prefix", "width", "metadata", "family"),
    [
        ("lora_te1_", 768, {}, Family.SDXL),
        ("lora_te_", 768, {}, Family.SD1),
        ("lora_te_", 1024, {}, Family.SD2),
        ("lora_unet_", 64, {"ss_base_model_version": "sdxl_base_v1-0"}, Family.SDXL),
        ("lora_unet_", 64, {"ss_v2": "True"}, Family.SD2),
        ("lora_unet_", 64, {"ss_v2": "False"}, Family.SD1),
        ("lora_unet_", 64, {"ss_output_name": "x"}, None),
    ],
)
def test_family_from_keys_then_metadata(
    prefix: str, width: int, metadata: dict[str, str], family: Family | None
) -> None:
    shapes = {f"{prefix}text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, width)}
    assert family_of(shapes, metadata) is family


def test_rank_and_describe(tmp_path: Path) -> None:
    assert rank_of({"a.lora_down.weight": (8, 64), "b.lora_down.weight": (16, 64)}, {}) == 16
    assert rank_of({"a.lora_down.weight": (8, 64)}, {"ss_network_dim": "32"}) == 32
    assert rank_of({"a.diff": (8, 64)}, {}) is None
    metadata = {"ss_output_name": "nice", "ss_tag_frequency": json.dumps({"a": {"cat": 3}})}
    _lora(tmp_path / "Lora" / "file.safetensors", metadata, rank=8)
    library = _library(tmp_path)
    info = library.find("nice")
    assert info is not None
    described = library.describe(info)
    assert (described.name, described.alias, described.family, described.rank) == ("file", "nice", "sd1", 8)
    assert described.formats == ["lora"]
    assert len(described.hash) == 64
    assert metadata_json(info)["ss_tag_frequency"] == {"a": {"cat": 3}}


def test_cli_lists_loras(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from latentstudio.cli import app

    models = tmp_path / "models"
    _lora(models / "Lora" / "one.safetensors", {"ss_output_name": "first"})
    _lora(models / "LyCORIS" / "two.safetensors", prefix="lora_te1_")
    runner = CliRunner()
    result = runner.invoke(
        app, ["loras", "--models-dir", str(models), "--data-dir", str(tmp_path / "data"), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["alias"], r["family"], r["rank"]) for r in rows] == [
        ("one", "first", "sd1", 4),
        ("two", "two", "sdxl", 4),
    ]
    assert all(len(r["shorthash"]) == 12 for r in rows)
    text = runner.invoke(app, ["loras", "--models-dir", str(models), "--data-dir", str(tmp_path / "data")])
    assert text.exit_code == 0
    assert text.stdout.splitlines()[0].startswith("one\tfirst\t")
