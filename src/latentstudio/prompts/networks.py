"""A1111 extra-network tags (``<lora:name:0.8>``, ``<hypernet:name>``): removed from the prompt and read.

:func:`extract_networks` is A1111's ``extra_networks.parse_prompt``; :func:`lora_tags` and
:func:`hypernet_tags` read its args as A1111's Lora extension and hypernetwork code do, with a
:class:`~latentstudio.prompts.errors.PromptError` where A1111 would crash on a malformed number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from latentstudio.prompts.errors import PromptError, check_length

_EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")


class LoraTag(NamedTuple):
    """One ``<lora:name:te:unet:dyn>`` with A1111's Lora defaults applied."""

    name: str
    te_multiplier: float
    unet_multiplier: float
    dyn_dim: int | None


class HypernetTag(NamedTuple):
    """One ``<hypernet:name:multiplier>``."""

    name: str
    multiplier: float


def extract_networks(prompt: str) -> tuple[str, dict[str, list[list[str]]]]:
    """A1111 ``extra_networks.parse_prompt``: the prompt without its ``<kind:arg:…>`` tags, and the args.

    The tag pattern is ``<(\\w+):([^>]+)>`` (names may hold spaces, args may not hold ``>``); args are split
    on ``:`` and kept as text, in order, kinds in order of first appearance:
    ``"a <lora:x:0.5> b"`` → ``("a  b", {"lora": [["x", "0.5"]]})``.
    """
    check_length(prompt)
    networks: dict[str, list[list[str]]] = {}

    def found(m: re.Match[str]) -> str:
        networks.setdefault(m.group(1), []).append(m.group(2).split(":"))
        return ""

    last = prompt.rfind(">") + 1  # searching only up to the last ">" keeps the regex linear
    return _EXTRA_NETWORK_RE.sub(found, prompt[:last]) + prompt[last:], networks


def split_network_args(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """A1111 ``ExtraNetworkParams``: ``k=v`` (exactly one ``=``) is named, the rest positional; last wins."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return positional, named


def _number_arg(tag: str, value: str, convert: type[float] | type[int]) -> float:
    """``float(value)`` / ``int(value)`` as A1111 converts tag args, but finite and with a clear error."""
    try:
        number = convert(value)
    except ValueError:
        raise PromptError(f"{tag}: {value!r} is not a valid {convert.__name__}") from None
    if not math.isfinite(number):
        raise PromptError(f"{tag}: {value!r} is not finite")
    return number


def lora_tags(networks: Mapping[str, Sequence[Sequence[str]]]) -> list[LoraTag]:
    """The ``lora``/``lyco`` (alias) tags of :func:`extract_networks`, as A1111's Lora extension reads them.

    Positional ``name:te:unet:dyn``; ``te`` defaults to 1.0, ``unet`` to the (final) ``te``; named ``te=``,
    ``unet=`` and ``dyn=`` override the positional values. Like A1111, the ``lora`` and ``lyco`` lists are
    concatenated in order of the kinds' first appearance.

    Raises:
        PromptError: a tag with no name, or a multiplier/dim that is not a finite number.
    """
    tags: list[LoraTag] = []
    for kind, params in networks.items():
        for args in params if kind in ("lora", "lyco") else ():
            tag = f"<{kind}:{':'.join(args)}>"
            positional, named = split_network_args(args)
            if not positional:
                raise PromptError(f"{tag}: no network name")
            te = _number_arg(tag, positional[1], float) if len(positional) > 1 else 1.0
            te = _number_arg(tag, named["te"], float) if "te" in named else te
            unet = _number_arg(tag, positional[2], float) if len(positional) > 2 else te
            unet = _number_arg(tag, named["unet"], float) if "unet" in named else unet
            dyn = int(_number_arg(tag, positional[3], int)) if len(positional) > 3 else None
            dyn = int(_number_arg(tag, named["dyn"], int)) if "dyn" in named else dyn
            tags.append(LoraTag(positional[0], te, unet, dyn))
    return tags


def hypernet_tags(networks: Mapping[str, Sequence[Sequence[str]]]) -> list[HypernetTag]:
    """The ``hypernet`` tags as A1111 reads them: ``name:multiplier`` (raw items, default 1.0)."""
    tags: list[HypernetTag] = []
    for args in networks.get("hypernet", ()):
        tag = f"<hypernet:{':'.join(args)}>"
        tags.append(HypernetTag(args[0], _number_arg(tag, args[1], float) if len(args) > 1 else 1.0))
    return tags
