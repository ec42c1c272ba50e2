"""Scanning an A1111 models folder (reference/a1111-compat.md §4.1, §4.3) and matching checkpoint names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latentstudio.models.discovery import (
    CheckpointInfo,
    VaeInfo,
    find_checkpoint,
    natural_key,
    scan_checkpoints,
    scan_vaes,
)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A models folder with nested checkpoints, VAEs, hidden entries and a diffusers folder."""
    sd = tmp_path / "models" / "Stable-diffusion"
    for rel in (
        "a/model10.safetensors",
        "a/model2.safetensors",
        "a/model1.ckpt",
        "B.ckpt",
        "c.pt",
        "sub/deep/d.PTH",
        "x.vae.safetensors",
        "B.vae.pt",
        ".hidden/foo.safetensors",
        ".dotfile.safetensors",
        "notes.txt",
        "weights.bin",
        "sd-v1.5-diffusers/model_index.json",
        "sd-v1.5-diffusers/unet/diffusion_pytorch_model.safetensors",
        "sd-v1.5-diffusers/vae/diffusion_pytorch_model.safetensors",
    ):
        _touch(sd / rel)
    vae = tmp_path / "models" / "VAE"
    for rel in ("vae-ft-mse-840000-ema-pruned.safetensors", "kl-f8-anime2.ckpt", "old/vae10.pt", "readme.md"):
        _touch(vae / rel)
    return tmp_path / "models"


def test_natural_key_orders_numbers_and_ignores_case() -> None:
    names = ["model10", "Model2", "model1", "b", "A", "model2a", "model02"]
    assert sorted(names, key=natural_key) == ["A", "b", "model1", "Model2", "model02", "model2a", "model10"]


def test_natural_key_non_ascii_digits_do_not_crash() -> None:
    assert sorted(["x²", "x1", "x٣"], key=natural_key)[0] == "x1"


@given(st.lists(st.text(max_size=12), max_size=20))
def test_natural_key_always_comparable(names: list[str]) -> None:
    ordered = sorted(names, key=natural_key)
    assert sorted(ordered) == sorted(names)


def test_scan_checkpoints_names_and_order(models: Path) -> None:
    infos = scan_checkpoints(models)
    assert [info.name for info in infos] == [
        "a/model1.ckpt",
        "a/model2.safetensors",
        "a/model10.safetensors",
        "B.ckpt",
        "c.pt",
        "sd-v1.5-diffusers",
        "sub/deep/d.PTH",
    ]
    by_name = {info.name: info for info in infos}
    nested = by_name["a/model10.safetensors"]
    assert nested.path == models / "Stable-diffusion" / "a" / "model10.safetensors"
    assert nested.name_for_extra == "model10"
    assert nested.model_name == "a_model10"
    assert not nested.is_diffusers
    assert by_name["sub/deep/d.PTH"].model_name == "sub_deep_d"


def test_scan_checkpoints_diffusers_folder_is_one_checkpoint(models: Path) -> None:
    infos = [info for info in scan_checkpoints(models) if info.is_diffusers]
    assert len(infos) == 1
    (diffusers,) = infos
    assert diffusers.path == models / "Stable-diffusion" / "sd-v1.5-diffusers"
    # No extension to drop from a folder name, even one with a dot in it.
    assert (diffusers.name, diffusers.name_for_extra, diffusers.model_name) == (
        "sd-v1.5-diffusers",
        "sd-v1.5-diffusers",
        "sd-v1.5-diffusers",
    )


def test_scan_checkpoints_missing_dir(tmp_path: Path) -> None:
    assert scan_checkpoints(tmp_path / "nowhere") == []
    (tmp_path / "models").mkdir()
    assert scan_checkpoints(tmp_path / "models") == []


def test_scan_follows_symlinks_and_survives_cycles_and_broken_links(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _touch(store / "linked.safetensors")
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    try:
        (sd / "shared").symlink_to(store, target_is_directory=True)
        (sd / "file-link.ckpt").symlink_to(store / "linked.safetensors")
        (sd / "broken.safetensors").symlink_to(tmp_path / "gone.safetensors")
        (store / "loop").symlink_to(sd, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not supported here")
    names = [info.name for info in scan_checkpoints(tmp_path / "models")]
    assert names == ["file-link.ckpt", "shared/linked.safetensors"]


def test_scan_vaes(models: Path) -> None:
    vaes = scan_vaes(models)
    assert [vae.name for vae in vaes] == [
        "B.vae.pt",
        "kl-f8-anime2.ckpt",
        "vae10.pt",  # "vae" + 10 sorts before "vae-ft-mse-" + 840000: the text part is a prefix
        "vae-ft-mse-840000-ema-pruned.safetensors",
        "x.vae.safetensors",
    ]
    by_name = {vae.name: vae for vae in vaes}
    assert by_name["x.vae.safetensors"] == VaeInfo(
        path=models / "Stable-diffusion" / "x.vae.safetensors", name="x.vae.safetensors"
    )
    assert by_name["vae10.pt"].path == models / "VAE" / "old" / "vae10.pt"


def test_scan_vaes_name_clash_prefers_vae_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _touch(models / "Stable-diffusion" / "m.vae.pt")
    _touch(models / "VAE" / "m.vae.pt")
    assert scan_vaes(models) == [VaeInfo(path=models / "VAE" / "m.vae.pt", name="m.vae.pt")]


def test_scan_vaes_missing_dirs(tmp_path: Path) -> None:
    assert scan_vaes(tmp_path) == []


def test_checkpoint_info_titles() -> None:
    info = CheckpointInfo.from_path(
        Path("/m/Stable-diffusion/sub/model.safetensors"), Path("/m/Stable-diffusion")
    )
    assert (info.name, info.name_for_extra, info.model_name) == (
        "sub/model.safetensors",
        "model",
        "sub_model",
    )
    assert info.title(None) == "sub/model.safetensors"
    assert info.title("6ce0161689") == "sub/model.safetensors [6ce0161689]"
    assert info.short_title("6ce0161689") == "model [6ce0161689]"
    assert info.short_title(None) == "model"


def test_checkpoint_info_outside_root() -> None:
    with pytest.raises(ValueError, match="not inside"):
        CheckpointInfo.from_path(Path("/elsewhere/m.ckpt"), Path("/m/Stable-diffusion"))


def test_checkpoint_info_is_frozen(models: Path) -> None:
    info = scan_checkpoints(models)[0]
    with pytest.raises(AttributeError):
        info.name = "other"  # type: ignore[misc]


# --- find_checkpoint ---------------------------------------------------------------------------------------


def _hashes(info: CheckpointInfo) -> str | None:
    return {"a/model2.safetensors": "abcdef0123", "B.ckpt": "0123456789"}.get(info.name)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a/model2.safetensors", "a/model2.safetensors"),  # name
        ("model2", "a/model2.safetensors"),  # name_for_extra
        ("a_model2", "a/model2.safetensors"),  # model_name
        ("a/model2.safetensors [abcdef0123]", "a/model2.safetensors"),  # title
        ("model2 [abcdef0123]", "a/model2.safetensors"),  # short title
        ("abcdef0123", "a/model2.safetensors"),  # shorthash
        ("0123456789", "B.ckpt"),
        ("a\\model10.safetensors", "a/model10.safetensors"),  # a Windows A1111 name
        ("B", "B.ckpt"),
        ("sd-v1.5-diffusers", "sd-v1.5-diffusers"),
    ],
)
def test_find_checkpoint_exact_aliases(models: Path, query: str, expected: str) -> None:
    found = find_checkpoint(scan_checkpoints(models), query, _hashes)
    assert found is not None
    assert found.name == expected


def test_find_checkpoint_by_full_path(models: Path) -> None:
    infos = scan_checkpoints(models)
    found = find_checkpoint(infos, str(models / "Stable-diffusion" / "c.pt"))
    assert found is not None
    assert found.name == "c.pt"


def test_find_checkpoint_substring_prefers_shortest_title(models: Path) -> None:
    infos = scan_checkpoints(models)
    found = find_checkpoint(infos, "model1")  # exact name_for_extra of a/model1.ckpt
    assert found is not None
    assert found.name == "a/model1.ckpt"
    found = find_checkpoint(infos, "odel1")  # in "a/model1.ckpt" and "a/model10.safetensors"
    assert found is not None
    assert found.name == "a/model1.ckpt"
    found = find_checkpoint(infos, "0123", _hashes)  # only inside titles carrying a shorthash
    assert found is not None
    assert found.name == "B.ckpt"  # "B.ckpt [0123456789]" is shorter than "a/model2.safetensors [abcdef0123]"


def test_find_checkpoint_strips_stale_hash(models: Path) -> None:
    infos = scan_checkpoints(models)
    found = find_checkpoint(infos, "model10.safetensors [deadbeef00]", _hashes)
    assert found is not None
    assert found.name == "a/model10.safetensors"


def test_find_checkpoint_duplicate_alias_last_wins(tmp_path: Path) -> None:
    sd = tmp_path / "models" / "Stable-diffusion"
    _touch(sd / "one" / "same.safetensors")
    _touch(sd / "two" / "same.ckpt")
    found = find_checkpoint(scan_checkpoints(tmp_path / "models"), "same")
    assert found is not None
    assert found.name == "two/same.ckpt"


def test_find_checkpoint_no_match(models: Path) -> None:
    infos = scan_checkpoints(models)
    assert find_checkpoint(infos, "") is None
    assert find_checkpoint(infos, "nothing-like-this") is None
    assert find_checkpoint(infos, "[abc]") is None
    assert find_checkpoint([], "model2") is None


def test_scan_skips_unlistable_folder(tmp_path: Path) -> None:
    sd = tmp_path / "models" / "Stable-diffusion"
    _touch(sd / "ok.safetensors")
    locked = sd / "locked"
    _touch(locked / "secret.safetensors")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running with permissions that ignore chmod (root)")
        assert [info.name for info in scan_checkpoints(tmp_path / "models")] == ["ok.safetensors"]
    finally:
        locked.chmod(0o755)
