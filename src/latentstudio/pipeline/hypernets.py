"""The prompt's ``<hypernet:name:multiplier>`` tags, in force on the UNets for one job (A1111's
``apply_hypernetworks``): every attention's ``to_k`` and ``to_v`` input ``[B, T, dim]`` (the cross-attention
context, or the hidden states in self-attention) goes through the ``k`` resp. ``v`` module of each tagged
hypernetwork with a layer of that width, in tag order. Forward pre-hooks do it; they are removed when the
job ends, so the shared, cached models are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
from diffusers.models.attention_processor import Attention

from latentstudio.control.networks import ControlNetwork
from latentstudio.models.hypernetworks import HypernetworkError, HypernetworkLibrary, HypernetworkModule
from latentstudio.models.loader import Components
from latentstudio.pipeline.hires import HiresModel
from latentstudio.pipeline.params import GenerationParams
from latentstudio.prompts.networks import extract_networks, hypernet_tags
from latentstudio.prompts.parser import strip_comments

Chain = Sequence[tuple[HypernetworkModule, float]]


def apply_chain(chain: Chain, x: torch.Tensor) -> torch.Tensor:
    """``x [B, T, dim]`` through each ``(module, multiplier)`` in turn, in the modules' dtype, returned in
    ``x``'s dtype (A1111 casts around each module)."""
    for module, multiplier in chain:
        dtype = next(module.parameters()).dtype
        x = module(x.to(dtype), multiplier).to(x.dtype)
    return x


def _pre_hook(chain: Chain, _module: torch.nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
    first = args[0]
    assert isinstance(first, torch.Tensor)
    return (apply_chain(chain, first), *args[1:])


def _module_of(model: Components | HiresModel | ControlNetwork | None) -> torch.nn.Module | None:
    module: torch.nn.Module | None = None
    if isinstance(model, Components):
        module = model.unet
    elif isinstance(model, HiresModel):
        module = model.components.unet
    elif model is not None:
        module = model.module
    return module


@contextmanager
def applied(
    library: HypernetworkLibrary | None,
    params: GenerationParams,
    models: Sequence[Components | HiresModel | ControlNetwork | None],
    warnings: list[str],
) -> Iterator[None]:
    """The hypernetworks ``params.prompt`` tags, hooked into the job's ``models`` (its checkpoint's UNet,
    the hires checkpoint's, its ControlNets': A1111 patches every LDM attention class) until the block
    ends. A tag that cannot be used is skipped (as A1111 does) with a line appended to ``warnings``;
    without a library every tag is."""
    _, networks = extract_networks(strip_comments(params.prompt))
    raw = networks.get("hypernet", [])
    if library is None:
        reason = "'hypernet' networks are not supported"
        warnings.extend(f"<hypernet:{':'.join(args)}> ignored: {reason}" for args in raw)
        yield
        return
    unets = list({id(m): m for m in map(_module_of, models) if m is not None}.values())
    device = next(unets[0].parameters()).device if unets else torch.device("cpu")
    loaded = []
    for tag in hypernet_tags(networks):
        try:
            network = library.load(tag.name)
        except HypernetworkError as error:
            warnings.append(f"hypernetwork {tag.name!r} skipped: {error}")
            continue
        for pair in network.layers.values():
            for module in pair:
                module.to(device)
        loaded.append((network, tag.multiplier))
    with ExitStack() as stack:
        used: set[str] = set()
        for unet in unets:
            for attention in (m for m in unet.modules() if isinstance(m, Attention)):
                if not isinstance(attention.to_k, torch.nn.Linear) or attention.to_v is None:
                    continue
                dim = attention.to_k.in_features
                chains = [[(n.layers[dim][i], m) for n, m in loaded if dim in n.layers] for i in (0, 1)]
                used.update(n.name for n, _ in loaded if dim in n.layers)
                for linear, chain in zip((attention.to_k, attention.to_v), chains, strict=True):
                    if chain:
                        stack.enter_context(linear.register_forward_pre_hook(partial(_pre_hook, chain)))
        warnings.extend(
            f"hypernetwork {n.name!r} has no layer for this model's attention widths ({sorted(n.layers)})"
            for n in dict.fromkeys(n for n, _ in loaded)
            if n.name not in used
        )
        yield
