"""``<hypernet:name:multiplier>`` as A1111 v1.10.1 applies it (modules/hypernetworks/hypernetwork.py):
files in A1111's saved-dict layout built here, read weights-only (a pickled object is refused), each module
checked against an independent re-implementation of ``HypernetworkModule.forward``, the to_k/to_v inputs of
every attention of a matching width transformed for the job only, and real jobs over HTTP."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import Attention
from torch.nn import functional as F  # noqa: N812

from latentstudio import infotext
from latentstudio.control.networks import ControlNetwork
from latentstudio.models import loader
from latentstudio.models.families import Family
from latentstudio.models.hypernetworks import HypernetworkError, HypernetworkLibrary, load_file
from latentstudio.models.loader import Components
from latentstudio.pipeline import hypernets
from latentstudio.pipeline.params import GenerationParams
from latentstudio.pipeline.run import ModelIdentity, run
from tests.conftest import MakeTiny
from tests.sdapi_support import TXT2IMG_BASE, build_root, decode, generate
from tests.serving import Served, serve

CONTEXT = 64  # the tiny SD1's cross-attention width (also its first block's width)


def _deep_state(dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Weights of A1111's module for ``layer_structure [1, 2, 2, 1]``, relu, layer norm, dropout after both
    hidden layers: Sequential indices 0 Linear, 1 ReLU, 2 LayerNorm, 3 Dropout, 4 Linear, 5 ReLU,
    6 LayerNorm, 7 Dropout, 8 Linear, 9 LayerNorm (no activation on the output)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.3

    return {
        "linear.0.weight": r(2 * dim, dim), "linear.0.bias": r(2 * dim),
        "linear.2.weight": 1 + r(2 * dim), "linear.2.bias": r(2 * dim),
        "linear.4.weight": r(2 * dim, 2 * dim), "linear.4.bias": r(2 * dim),
        "linear.6.weight": 1 + r(2 * dim), "linear.6.bias": r(2 * dim),
        "linear.8.weight": r(dim, 2 * dim), "linear.8.bias": r(dim),
        "linear.9.weight": 1 + r(dim), "linear.9.bias": r(dim),
    }  # fmt: skip


def _deep_reference(state: dict[str, torch.Tensor], x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """A1111's ``x + linear(x) * multiplier`` for :func:`_deep_state`'s structure, in eval mode."""

    def norm(h: torch.Tensor, i: int) -> torch.Tensor:
        return F.layer_norm(h, h.shape[-1:], state[f"linear.{i}.weight"], state[f"linear.{i}.bias"])

    h = norm(torch.relu(F.linear(x, state["linear.0.weight"], state["linear.0.bias"])), 2)
    h = norm(torch.relu(F.linear(h, state["linear.4.weight"], state["linear.4.bias"])), 6)
    h = norm(F.linear(h, state["linear.8.weight"], state["linear.8.bias"]), 9)
    return x + h * multiplier


def _simple_pair(dim: int, seed: int, scale: float = 0.5) -> tuple[dict[str, torch.Tensor], ...]:
    """``(k, v)`` weights of the default ``[1, 2, 1]`` linear structure."""
    g = torch.Generator().manual_seed(seed)
    return tuple(
        {
            "linear.0.weight": torch.randn(2 * dim, dim, generator=g) * scale,
            "linear.0.bias": torch.randn(2 * dim, generator=g) * scale,
            "linear.1.weight": torch.randn(dim, 2 * dim, generator=g) * scale,
            "linear.1.bias": torch.randn(dim, generator=g) * scale,
        }
        for _ in range(2)
    )


def _save_simple(
    path: Path, dims: tuple[int, ...], seed: int
) -> dict[int, tuple[dict[str, torch.Tensor], ...]]:
    pairs = {dim: _simple_pair(dim, seed + dim) for dim in dims}
    path.parent.mkdir(parents=True, exist_ok=True)
    saved: dict[object, object] = {"layer_structure": [1, 2, 1], "activation_func": "linear", "step": 10}
    for dim, pair in pairs.items():
        saved[dim] = pair
    torch.save(saved, path)
    return pairs


class _Payload:
    """Any non-tensor object: unpickling it needs this module, which ``weights_only`` refuses."""

    def __init__(self) -> None:
        self.ran = True


def test_file_loads_weights_only_and_matches_a1111_module(tmp_path: Path) -> None:
    k_state, v_state = _deep_state(CONTEXT, 1), _deep_state(CONTEXT, 2)
    torch.save({
        CONTEXT: (k_state, v_state), "layer_structure": [1, 2, 2, 1], "activation_func": "relu",
        "is_layer_norm": True, "use_dropout": True, "last_layer_dropout": True, "activate_output": False,
        "weight_initialization": "Normal", "name": "deep", "step": 3, "optional_info": None,
    }, tmp_path / "deep.pt")  # fmt: skip
    network = load_file(tmp_path / "deep.pt")
    assert list(network.layers) == [CONTEXT]
    k, v = network.layers[CONTEXT]
    assert [type(m).__name__ for m in k.linear] == [
        "Linear", "ReLU", "LayerNorm", "Dropout", "Linear", "ReLU", "LayerNorm", "Dropout", "Linear",
        "LayerNorm",
    ]  # fmt: skip
    x = torch.randn(2, 7, CONTEXT, generator=torch.Generator().manual_seed(0))
    for module, state in ((k, k_state), (v, v_state)):
        for multiplier in (1.0, 0.35):
            torch.testing.assert_close(module(x, multiplier), _deep_reference(state, x, multiplier))
        assert torch.equal(module(x, 0.0), x)


def test_old_keys_defaults_and_refusals(tmp_path: Path) -> None:
    """The first hypernetwork format (``linear1``/``linear2``, no options: ``[1, 2, 1]``, no activation)."""
    k, v = _simple_pair(8, 0)
    renamed = [
        {f"linear{1 + int(n.split('.')[1])}.{n.split('.')[2]}": t for n, t in s.items()} for s in (k, v)
    ]
    torch.save({8: tuple(renamed)}, tmp_path / "old.pt")
    (module, _) = load_file(tmp_path / "old.pt").layers[8]
    x = torch.randn(1, 3, 8)
    hidden = F.linear(x, k["linear.0.weight"], k["linear.0.bias"])
    torch.testing.assert_close(module(x), x + F.linear(hidden, k["linear.1.weight"], k["linear.1.bias"]))

    torch.save({CONTEXT: _simple_pair(CONTEXT, 1), "extra": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(HypernetworkError, match=r"^evil\.pt: refused, not a weights-only torch file$"):
        load_file(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(HypernetworkError, match=r"^junk\.pt: "):
        load_file(tmp_path / "junk.pt")
    torch.save({8: _simple_pair(8, 0), "layer_structure": [1, 3, 1]}, tmp_path / "shape.pt")
    with pytest.raises(HypernetworkError, match=r"^shape\.pt: width 8: "):
        load_file(tmp_path / "shape.pt")


def test_library_lists_as_a1111(tmp_path: Path) -> None:
    root = tmp_path / "hypernetworks"
    for rel in ("b.pt", "A/z.pt", "c/b.pt", "None.pt", "notes.txt", "x.safetensors"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    library = HypernetworkLibrary(root)
    # sorted by lower-cased path, a later duplicate stem wins, None.pt left out, only *.pt
    assert library.files() == {"z": root / "A/z.pt", "b": root / "c/b.pt"}
    with pytest.raises(HypernetworkError, match="no hypernetwork file of that name"):
        library.load("nope")


@pytest.fixture(scope="module")
def sd1(make_tiny: MakeTiny) -> Components:
    return loader.load_checkpoint(make_tiny(Family.SD1).path, device=torch.device("cpu"), dtype=torch.float32)


def test_hooks_transform_k_and_v_inputs_of_matching_widths(sd1: Components, tmp_path: Path) -> None:
    pairs = _save_simple(tmp_path / "hn" / "h.pt", (CONTEXT,), seed=4)
    library = HypernetworkLibrary(tmp_path / "hn")
    params = GenerationParams(prompt="a <hypernet:h:0.5> b <hypernet:h:2>", steps=1, width=64, height=64)
    attentions = {n: m for n, m in sd1.unet.named_modules() if isinstance(m, Attention)}
    cross = attentions["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    wide = attentions["down_blocks.1.attentions.0.transformer_blocks.0.attn1"]  # width 128: no layer
    x = torch.randn(2, 5, CONTEXT)

    def reference(state: dict[str, torch.Tensor], h: torch.Tensor, multiplier: float) -> torch.Tensor:
        hidden = F.linear(h, state["linear.0.weight"], state["linear.0.bias"])
        return h + F.linear(hidden, state["linear.1.weight"], state["linear.1.bias"]) * multiplier

    before = (cross.to_k(x), cross.to_v(x))
    warnings: list[str] = []
    with torch.no_grad(), hypernets.applied(library, params, [sd1, None], warnings):
        for linear, state in ((cross.to_k, pairs[CONTEXT][0]), (cross.to_v, pairs[CONTEXT][1])):
            expected = F.linear(reference(state, reference(state, x, 0.5), 2.0), linear.weight, linear.bias)
            torch.testing.assert_close(linear(x), expected)
        y = torch.randn(1, 3, 128)
        assert torch.equal(wide.to_k(y), F.linear(y, wide.to_k.weight, wide.to_k.bias))
    assert warnings == []
    with torch.no_grad():
        assert torch.equal(cross.to_k(x), before[0])
        assert torch.equal(cross.to_v(x), before[1])
    assert all(not m._forward_pre_hooks for m in sd1.unet.modules())


def test_unusable_tags_are_skipped_with_warnings(sd1: Components, tmp_path: Path) -> None:
    root = tmp_path / "hn"
    _save_simple(root / "wide.pt", (999,), seed=0)
    torch.save({CONTEXT: _simple_pair(CONTEXT, 1), "x": _Payload()}, root / "evil.pt")
    params = GenerationParams(
        prompt="a <hypernet:nope:1> <hypernet:evil> <hypernet:wide:1>", steps=2, seed=3, width=64, height=64
    )
    identity = ModelIdentity("tiny", "0123456789")
    plain = run(dataclasses.replace(params, prompt="a").resolved(), sd1, identity=identity)
    result = run(params.resolved(), sd1, identity=identity, hypernetworks=HypernetworkLibrary(root))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    assert result.warnings == [
        f"hypernetwork 'nope' skipped: no hypernetwork file of that name in {root}",
        "hypernetwork 'evil' skipped: evil.pt: refused, not a weights-only torch file",
        "hypernetwork 'wide' has no layer for this model's attention widths ([999])",
    ]
    assert "Hypernet" not in infotext.parse(result.infotexts[0])  # A1111 1.10 writes no hypernet key


@pytest.fixture(scope="module")
def server(make_tiny: MakeTiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hypernet")
    settings = build_root(make_tiny, root)
    folder = settings.models_dir / "hypernetworks"
    _save_simple(folder / "style.pt", (CONTEXT, 128), seed=7)
    (folder / "sub").mkdir()
    torch.save({CONTEXT: _simple_pair(CONTEXT, 1), "x": _Payload()}, folder / "sub" / "evil.pt")
    shutil.copyfile(folder / "style.pt", folder / "None.pt")
    with serve(settings) as served:
        yield served


def _image(client: httpx.Client, prompt: str) -> tuple[np.ndarray, dict[str, Any]]:
    body = generate(client, "txt2img", {**TXT2IMG_BASE, "prompt": prompt, "seed": 5, "steps": 3})
    return np.asarray(decode(body["images"][0])), body["info"]


def test_hypernet_jobs_over_http(server: Served) -> None:
    with httpx.Client(base_url=server.base, timeout=300) as client:
        folder = server.jobs.manager.settings.models_dir / "hypernetworks"
        listed = client.get("/sdapi/v1/hypernetworks").json()
        assert listed == [
            {"name": "style", "path": str(folder / "style.pt")},
            {"name": "evil", "path": str(folder / "sub" / "evil.pt")},
        ]
        base, _ = _image(client, "a red circle")
        styled, info = _image(client, "a red circle <hypernet:style:1>")
        zero, _ = _image(client, "a red circle <hypernet:style:0>")
        skipped, _ = _image(client, "a red circle <hypernet:nope:1><hypernet:evil:1>")
        again, _ = _image(client, "a red circle")
    assert not np.array_equal(styled, base)
    assert np.array_equal(zero, base)
    assert np.array_equal(skipped, base)
    assert np.array_equal(again, base)
    assert info["prompt"] == "a red circle <hypernet:style:1>"
    assert "Hypernet" not in infotext.parse(info["infotexts"][0])


def test_controlnet_attentions_are_hooked_too(sd1: Components, tmp_path: Path) -> None:
    """A1111 patches the LDM attention class itself, so a ControlNet's attentions get the layers too."""
    _save_simple(tmp_path / "hn" / "h.pt", (CONTEXT,), seed=4)
    net = ControlNetModel.from_unet(sd1.unet)
    control = ControlNetwork(tmp_path / "c.safetensors", None, net)  # no file info needed here
    params = GenerationParams(prompt="a <hypernet:h>", steps=1, width=64, height=64)
    cross = net.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    x = torch.randn(1, 5, CONTEXT)
    with torch.no_grad():
        plain = cross.to_k(x)
        with hypernets.applied(HypernetworkLibrary(tmp_path / "hn"), params, [sd1, control], []):
            assert not torch.equal(cross.to_k(x), plain)
        assert torch.equal(cross.to_k(x), plain)
