"""The house limits on size (STYLE.md): no module of the package over 500 lines and no
function over 50, counted from the syntax tree (a function's lines include its docstring
and nested functions)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 50


def oversized(source: str, name: str) -> list[str]:
    """The module ``name`` if it is too long, and each function in it that is."""
    out = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        out.append(f"{name}: {len(source.splitlines())} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return out


def test_no_module_or_function_of_the_package_is_too_long():
    found = []
    for path in sorted((ROOT / "ebm_vs_score").rglob("*.py")):
        found += oversized(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, found


def test_the_check_finds_a_long_function_and_a_long_module():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert oversized(f"def f():\n{body}\n", "m.py") == ["m.py:1 f: 51 lines"]
    assert oversized("x = 1\n" * (MAX_MODULE_LINES + 1), "m.py") == ["m.py: 501 lines"]
    assert oversized("def f():\n    return 1\n", "m.py") == []
