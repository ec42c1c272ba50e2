"""Small enough to read (issue 16): every module of ``src/latentstudio`` at most 400 lines, every function
(methods and nested functions included, decorators and docstring counted) at most 80."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "latentstudio"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """``(name, first line, length)`` of every function longer than ``limit`` lines, decorators included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > limit:
                found.append((node.name, first, length))
    return found


def test_modules_are_at_most_400_lines() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p, n in sizes.items() if n > MAX_MODULE_LINES]
    assert not long, "split these modules along their seams:\n" + "\n".join(long)


def test_functions_are_at_most_80_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name}: {length} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in long_functions(path.read_text(encoding="utf-8"), MAX_FUNCTION_LINES)
    ]
    assert not long, "split these functions:\n" + "\n".join(long)


def test_the_checker_counts_methods_nested_functions_and_decorators() -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(3))
    source = f"class A:\n    @staticmethod\n    def f():\n        def g():\n            pass\n{body}\n"
    assert long_functions(source, 5) == [("f", 2, 7)]
    assert long_functions(source, 1) == [("f", 2, 7), ("g", 4, 2)]
