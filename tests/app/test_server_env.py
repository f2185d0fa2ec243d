"""The studio server's process settings: what ``app/streamlit_app.py`` does before anything loads torch."""

from __future__ import annotations

import ast

from studio_helpers import APP


def _first_line(tree: ast.Module, pred) -> int:
    return min((node.lineno for node in ast.walk(tree) if pred(node)), default=10**9)


def test_passive_openmp_is_set_before_torch_loads() -> None:
    """libgomp reads OMP_WAIT_POLICY once, when torch loads it: the default must be set before the first import of
    torch, efpn or the app's modules (which import torch), and only as a default (a user's value is kept)."""
    tree = ast.parse(APP.read_text())

    def sets_default(node: ast.AST) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setdefault"
                and ast.unparse(node.func.value) == "os.environ"
                and [ast.literal_eval(a) for a in node.args] == ["OMP_WAIT_POLICY", "PASSIVE"])

    def loads_torch(node: ast.AST) -> bool:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        return any(n.split(".")[0] in ("torch", "efpn", "app", "torchvision") for n in names)

    set_at, torch_at = _first_line(tree, sets_default), _first_line(tree, loads_torch)
    assert set_at < 10**9, "app/streamlit_app.py no longer sets the OMP_WAIT_POLICY default"
    assert set_at < torch_at, f"OMP_WAIT_POLICY is set at line {set_at}, after torch can load (line {torch_at})"
