"""Bad model files: one-line errors naming the file and the reason; nothing from a file ever executes."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.files import ModelFileError, read_tensor_file
from latentstudio.models.synthetic import write_checkpoint
from tests.conftest import MakeTiny

CPU = torch.device("cpu")


class _RunsCode:
    """Unpickling this calls ``os.system``: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _load_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        loader.load_checkpoint(path, device=CPU, dtype=torch.float32)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.touch()
    assert "empty file" in _load_error(path)


def test_truncated_safetensors(make_tiny: MakeTiny, tmp_path: Path) -> None:
    data = make_tiny(Family.SD1).path.read_bytes()
    path = tmp_path / "partial.safetensors"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _load_error(path)
    path.write_bytes(data[:100])  # cut inside the header
    assert "truncated" in _load_error(path)


def test_corrupt_safetensors_headers(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    for body, reason in (
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (
            json.dumps({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}).encode(),
            "invalid safetensors",
        ),
        (
            json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}).encode(),
            "invalid data offsets",
        ),
        (json.dumps({"__metadata__": {"a": 1}}).encode(), "metadata"),
    ):
        path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 8)
        assert reason in _load_error(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    assert "header length" in _load_error(path)


def test_wrong_extension_and_non_model_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "unsupported file extension '.txt'" in _load_error(text)
    png_as_ckpt = tmp_path / "image.ckpt"
    png_as_ckpt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    assert "corrupt or truncated checkpoint" in _load_error(png_as_ckpt)
    png_as_st = tmp_path / "image.safetensors"
    png_as_st.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    assert "not a safetensors file" in _load_error(png_as_st)
    assert "no such file" in _load_error(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_exploit_is_refused_and_never_runs(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "callback": _RunsCode(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    message = _load_error(path)
    assert "refused" in message
    assert "forbidden global" in message
    if not legacy:
        assert "forbidden global posix.system" in message
    assert not marker.exists()


def test_modern_protocol_pickle_is_refused_not_called_corrupt(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "p5.pt"
    path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=5))
    message = _load_error(path)
    assert "refused" in message
    assert "Unsupported operand" in message
    assert not marker.exists()


def test_zip_checkpoint_with_forbidden_global_in_nested_pickle(tmp_path: Path) -> None:
    """A hand-made zip whose data.pkl references ``builtins.eval``."""
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"w": torch.zeros(1)}, path)
    evil = pickle.dumps(_RunsCode(marker), protocol=2)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = evil
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert "refused" in _load_error(path)
    assert not marker.exists()


def test_plain_weights_only_ckpt_loads(make_tiny: MakeTiny, tmp_path: Path) -> None:
    """A Lightning-style ``{"state_dict": ..., "global_step": N}`` file suits the weights-only loader."""
    tiny = make_tiny(Family.SD1)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": dict(tiny.state), "global_step": 470000, "epoch": 3}, path)
    components = loader.load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert torch.equal(components.unet.conv_in.weight, tiny.unet.conv_in.weight)


def test_unknown_families_are_named(make_tiny: MakeTiny, tmp_path: Path) -> None:
    state = make_tiny(Family.SD1).state
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in state.items() if "first_stage" in k}
    message = _load_error(write_checkpoint(tmp_path / "vae.safetensors", vae_only))
    assert "no UNet weights" in message
    assert "looks like a VAE" in message
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}
    assert "unknown model family" in _load_error(write_checkpoint(tmp_path / "lora.safetensors", lora))
    pix2pix = dict(state)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    pix2pix[key] = torch.zeros(64, 8, 3, 3)
    message = _load_error(write_checkpoint(tmp_path / "ip2p.safetensors", pix2pix))
    assert "8 input channels (instruct-pix2pix)" in message


def test_mismatched_family_parts_are_rejected(make_tiny: MakeTiny, tmp_path: Path) -> None:
    """An SD1 UNet with SDXL's size conditioning is neither family."""
    state = dict(make_tiny(Family.SD1).state)
    state["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(256, 80)
    assert "label_emb" in _load_error(write_checkpoint(tmp_path / "odd.safetensors", state))


def test_shape_mismatch_is_an_error(make_tiny: MakeTiny, tmp_path: Path) -> None:
    state = dict(make_tiny(Family.SD1).state)
    state["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"] = torch.zeros(64, 64, 5, 5)
    path = write_checkpoint(tmp_path / "shape.safetensors", state)
    with pytest.raises((ModelFileError, RuntimeError)) as info:
        loader.load_checkpoint(path, device=CPU, dtype=torch.float32)
    assert "shape" in str(info.value).lower() or "size mismatch" in str(info.value)


def test_read_tensor_file_is_lazy_and_returns_metadata(make_tiny: MakeTiny, tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", make_tiny(Family.SD1).state, metadata={"k": "v"})
    tf = read_tensor_file(path)
    assert tf.metadata == {"k": "v"}
    assert len(tf.tensors) == len(make_tiny(Family.SD1).state)


def test_cli_reports_each_bad_file_in_one_line(make_tiny: MakeTiny, tmp_path: Path) -> None:
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    (sd / "good.safetensors").write_bytes(make_tiny(Family.SD1).path.read_bytes())
    (sd / "zero.safetensors").touch()
    (sd / "bomb.ckpt").write_bytes(pickle.dumps(_RunsCode(tmp_path / "pwned")))
    result = subprocess.run(
        [sys.executable, "-m", "latentstudio.cli", "models", "--models-dir", str(tmp_path / "models"),
         "--data-dir", str(tmp_path / "data"), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.stderr
    assert any("zero.safetensors: empty file" in e for e in errors)
    assert any("bomb.ckpt: refused" in e for e in errors)
    assert "Traceback" not in result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["good.safetensors"]
    assert not (tmp_path / "pwned").exists()
