"""Imports flow one way, as ../shared/DESIGN.md draws it: ``api, ui, cli → jobs → pipeline → samplers,
prompts, models``, with the value types the bottom packages share in one neutral module below them.

Every ``import`` / ``from … import`` in ``src/latentstudio`` counts: at module level, inside functions and
under ``if TYPE_CHECKING:`` alike (an import hidden in a function is still a dependency; one under
TYPE_CHECKING still ties the packages' types together). Relative imports are resolved; ``from pkg import
name`` is an import of ``pkg.name`` when that is a module, else of ``pkg``. The parent packages Python runs
on the way (``latentstudio/api/__init__.py`` for ``latentstudio.api.errors``) are not counted.

Two checks: each import goes from a module's layer to one that :data:`MAY_IMPORT` lists (or stays in its
own layer), and no modules import each other in a cycle, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "latentstudio"

# The layers, bottom up. ``base``: latentstudio/__init__, ``core`` (the value types models, samplers and
# prompts share: prediction type, family, conditioning), ``config`` and ``storage``; they import nothing of
# ours. In ``api``: ``api.sdapi`` (the A1111 door) and ``api.native`` (``native.py`` + ``schemas.py``, the
# /api/v1 door) stand on ``api.shared`` (errors, image codecs, services, security, the request pieces both
# doors use) and never on each other; ``api`` itself is the assembly (``app``, ``health``, ``__init__``).
# ``server`` is the composition root (app + UI + the UI's backend); only ``cli`` imports it.
_BOTTOM = "base models samplers prompts infotext postprocess control"
_API = f"{_BOTTOM} pipeline jobs api.shared"
MAY_IMPORT: dict[str, str] = {  # layer: the other layers it may import
    "base": "",
    "models": "base",
    "samplers": "base",
    "prompts": "base models",  # encoding runs the checkpoint's tokenizers and text encoders
    "infotext": "base prompts",  # the A1111 PNG text; reads prompts with the prompt parser
    "postprocess": "base models infotext",
    "control": "base models",  # preprocessors (pure image operations); ControlNet/adapter files and units
    "pipeline": _BOTTOM,
    "jobs": f"{_BOTTOM} pipeline",
    "api.shared": f"{_BOTTOM} pipeline jobs",
    "api.sdapi": _API,
    "api.native": _API,
    "api": f"{_API} api.sdapi api.native",
    "ui": "base jobs",  # a client of the job layer, never of models, samplers or pipeline
    # pipeline: sample images to evaluate; control: the preprocessors, hint fitting and network files that
    # control training makes conditions with and writes
    "train": "base models samplers prompts control pipeline",
    "server": f"{_API} api.sdapi api.native api ui",
    "cli": f"{_BOTTOM} pipeline train server",  # generate runs the pipeline directly; serve via server
}

_BASE = {"core", "config", "storage", "asgi"}  # asgi: middleware helpers, base too
_API_SHARED = {"errors", "imageio", "state", "security", "common", "control_units"}


def layer(module: str) -> str:
    """The layer of a module of ours (``latentstudio.api.sdapi.routes`` → ``api.sdapi``)."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in _BASE:
        return "base"
    if parts[0] == "api" and len(parts) > 1:
        if parts[1] == "sdapi":
            return "api.sdapi"
        if parts[1] in {"native", "schemas"}:
            return "api.native"
        if parts[1] in _API_SHARED:
            return "api.shared"
    if parts[0] in {"cli", "cli_train", "cli_train_control", "cli_control", "cli_run"}:
        return "cli"
    return parts[0]


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``file:line``."""

    source: str
    target: str
    where: str


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool, modules: set[str]) -> Iterator[tuple[str, int]]:
    """``(imported module of ours, line)`` for every import statement anywhere in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _known(alias.name, modules), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                full = f"{origin}.{alias.name}"
                yield (full if full in modules else _known(origin, modules)), node.lineno


def _known(name: str, modules: set[str]) -> str:
    """``name`` or its longest prefix that is a module of ours ('' for a third-party module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return ""


def edges() -> list[Edge]:
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)
    found: dict[Edge, None] = {}  # one per import statement and target, in order
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for target, line in imports(path.read_text(encoding="utf-8"), module, is_package, modules):
            if target and target != module:
                found[Edge(module, target, f"{path.relative_to(SRC.parent)}:{line}")] = None
    return list(found)


def test_every_layer_is_in_the_table() -> None:
    layers = {layer(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert layers <= set(MAY_IMPORT), f"place these in MAY_IMPORT: {sorted(layers - set(MAY_IMPORT))}"
    assert all(set(v.split()) <= set(MAY_IMPORT) for v in MAY_IMPORT.values())


def test_imports_flow_one_way() -> None:
    bad = [
        f"{e.where}: {layer(e.source)} imports {layer(e.target)} ({e.target})"
        for e in edges()
        if layer(e.target) != layer(e.source) and layer(e.target) not in MAY_IMPORT[layer(e.source)].split()
    ]
    assert not bad, "imports against the layers (tests/test_layering.py MAY_IMPORT):\n" + "\n".join(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    all_edges = edges()
    graph: dict[str, set[str]] = {module_name(p): set() for p in PACKAGE.rglob("*.py")}
    for e in all_edges:
        graph[e.source].add(e.target)
    messages = []
    for component in cycles(graph):
        members = set(component)
        inside = [
            f"  {e.where}: {e.source} → {e.target}" for e in all_edges if {e.source, e.target} <= members
        ]
        messages.append(f"cycle of {len(component)} modules:\n" + "\n".join(inside))
    assert not messages, "\n".join(messages)


def test_the_checker_sees_every_kind_of_import() -> None:
    """Relative, function-level and TYPE_CHECKING imports are all found, ``from pkg import module`` is the
    module, ``from pkg import name`` the package, and third-party imports are skipped."""
    modules = {"latentstudio.a", "latentstudio.a.b", "latentstudio.a.c", "latentstudio.d"}
    source = (
        "from typing import TYPE_CHECKING\nimport torch\nfrom . import c\nfrom .. import d\n"
        "if TYPE_CHECKING:\n    from latentstudio.a.c import Thing\n"
        "def f():\n    from latentstudio.a import NAME\n    import latentstudio.d.e\n"
    )
    found = [(target, line) for target, line in imports(source, "latentstudio.a.b", False, modules) if target]
    assert found == [
        ("latentstudio.a.c", 3),
        ("latentstudio.d", 4),
        ("latentstudio.a.c", 6),
        ("latentstudio.a", 8),
        ("latentstudio.d", 9),
    ]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert layer("latentstudio.api.sdapi.routes") == "api.sdapi"
    assert layer("latentstudio.api.schemas") == "api.native"
    assert layer("latentstudio.core") == "base"
