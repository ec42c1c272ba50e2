"""Every third-party module the code imports is a declared dependency: what ``src/latentstudio`` imports
(at module level or inside functions) belongs to ``[project].dependencies``; what ``tests/`` and ``bench/``
import belongs there or to the ``test`` extra. A module missing from the list installs on the developer's
machine by accident and crashes a fresh install (``serve`` once died on ``import gradio`` for every new
user while CI stayed green).

Imports under ``try: … except ImportError`` are optional by construction (they are allowed when some extra
declares them). Each import is mapped to its distribution with ``importlib.metadata``; a module that is
not installed at all is a failure too, unless it is an optional import.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {"latentstudio", "tests", "bench"}


@dataclass(frozen=True)
class Import:
    """One imported top-level module and where (``file:line``); ``optional`` when guarded by ImportError."""

    module: str
    where: str
    optional: bool


def _normalise(name: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {
        _normalise(re.split(r"[\s<>=!~;\[(]", r.strip(), maxsplit=1)[0]) for r in requirements if r.strip()
    }


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """``(runtime distributions, {extra: distributions})`` from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = {
        name: _requirement_names(reqs) for name, reqs in project.get("optional-dependencies", {}).items()
    }
    return _requirement_names(project["dependencies"]), extras


def _guards_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def imports(folder: Path) -> Iterator[Import]:
    """Every absolute import of a non-stdlib module in ``folder``'s Python files, nested ones included."""
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        optional: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(_guards_import_error(h) for h in node.handlers):
                optional |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OWN or top == "__future__":
                    continue
                yield Import(top, f"{path.relative_to(folder.parent)}:{node.lineno}", id(node) in optional)


def undeclared(folder: Path, allowed: set[str], optional_allowed: set[str]) -> list[str]:
    """One line per import whose distribution is not in ``allowed`` (``optional_allowed`` for imports
    guarded by ImportError), or that is not installed at all."""
    distributions = packages_distributions()
    problems = []
    for found in imports(folder):
        dists = {_normalise(d) for d in distributions.get(found.module, [])}
        permitted = optional_allowed if found.optional else allowed
        if found.optional and not dists:
            continue  # an optional extra that is not installed here: nothing to map
        if not dists:
            problems.append(f"{found.module} (not installed; no distribution provides it) at {found.where}")
        elif not dists & permitted:
            problems.append(f"{found.module} (distribution {', '.join(sorted(dists))}) at {found.where}")
    return problems


def test_the_walker_finds_nested_and_guarded_imports(tmp_path: Path) -> None:
    """The check itself: imports inside functions are seen, ImportError guards mark them optional."""
    folder = tmp_path
    (folder / "mod.py").write_text(
        "import os\nimport numpy as np\n\ndef f():\n    import gradio.themes\n"
        "    from yaml import safe_load\n"
        "    try:\n        import spandrel_extra_arches\n    except ImportError:\n        pass\n",
        encoding="utf-8",
    )
    found = {(i.module, i.optional) for i in imports(folder)}
    assert found == {("numpy", False), ("gradio", False), ("yaml", False), ("spandrel_extra_arches", True)}
    problems = undeclared(folder, {"numpy"}, {"numpy"})
    assert any(p.startswith("gradio ") for p in problems)
    assert any(p.startswith("yaml (distribution pyyaml)") for p in problems)


def test_every_runtime_import_is_a_declared_dependency() -> None:
    runtime, extras = _declared()
    optional = runtime | set().union(*extras.values())
    problems = undeclared(ROOT / "src" / "latentstudio", runtime, optional)
    assert not problems, "imported under src/ but not in [project].dependencies:\n" + "\n".join(problems)


def test_every_test_and_bench_import_is_declared() -> None:
    runtime, extras = _declared()
    allowed = runtime | extras["test"]
    problems = [
        *undeclared(ROOT / "tests", allowed, allowed | set().union(*extras.values())),
        *undeclared(ROOT / "bench", allowed, allowed | set().union(*extras.values())),
    ]
    assert not problems, (
        "imported by tests/ or bench/ but not declared (runtime or test extra):\n" + "\n".join(problems)
    )
