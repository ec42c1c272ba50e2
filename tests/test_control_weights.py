"""The annotator weights loader (``control.weights.load_network``): exactly the network's tensors or a
one-line refusal naming the file; a key prefix dropped; batch-norm step counters may be absent (files
saved by old PyTorch have none); a changed file is read again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from latentstudio.control.weights import load_network
from latentstudio.models.files import ModelFileError


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        k: torch.randn_like(t.float()) if t.is_floating_point() else t for k, t in _net().state_dict().items()
    }


def test_load_network_checks_keys_and_drops_a_prefix(tmp_path: Path) -> None:
    state = _state(0)
    path = tmp_path / "net.safetensors"
    save_file({f"module.{k}": v for k, v in state.items()}, str(path))
    model = load_network(path, _net, "tiny", prefix="module.")
    assert torch.equal(model.state_dict()["0.weight"], state["0.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ModelFileError) as refused:  # the prefix is part of every key without prefix=
        load_network(path, _net, "tiny")
    assert str(path) in str(refused.value)
    assert "tiny" in str(refused.value)


def test_batch_norm_counters_may_be_absent_but_weights_may_not(tmp_path: Path) -> None:
    state = _state(1)
    old = tmp_path / "old.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(old))
    model = load_network(old, _net, "tiny")
    assert torch.equal(model.state_dict()["1.running_var"], state["1.running_var"])
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in state.items() if k != "1.running_var"}, str(broken))
    with pytest.raises(ModelFileError, match=r"1\.running_var"):
        load_network(broken, _net, "tiny")


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    save_file(_state(2), str(path))
    first = load_network(path, _net, "tiny")
    assert load_network(path, _net, "tiny") is first  # kept while the file is unchanged
    save_file(_state(3), str(path))
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 1_000_000))
    second = load_network(path, _net, "tiny")
    assert second is not first
    assert torch.equal(second.state_dict()["0.weight"], _state(3)["0.weight"])
