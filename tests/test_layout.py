"""The package layout holds: every efpn module imports only downward, no import cycle, and app/ uses public names.

The layers, bottom to top (docs/architecture.md draws them): vocab and config; data, det and layers; models;
zoo; checkpoint; infer; evaluation; explain; engine; cli. A module may import its own package and any lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EFPN = REPO / "efpn"

#: component (top-level module or sub-package of efpn) -> layer
LAYERS: dict[str, int] = {
    "vocab": 0, "config": 0, "runtime": 0, "_limits": 0, "files": 0, "storage": 0,
    "data": 1, "det": 1, "layers": 1,
    "models": 2,
    "zoo": 3,
    "checkpoint": 4,
    "infer": 5,
    "evaluation": 6,
    "explain": 7,
    "engine": 8,
    "cli": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module imported, names imported from it, line)`` for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _component(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "efpn" and len(parts) > 1 else None


EFPN_FILES = sorted(EFPN.rglob("*.py"))


def test_every_component_has_a_layer() -> None:
    found = {p.relative_to(EFPN).parts[0].removesuffix(".py") for p in EFPN_FILES} - {"__init__"}
    assert found == set(LAYERS), f"add new components to LAYERS (and to docs/architecture.md): {found ^ set(LAYERS)}"


@pytest.mark.parametrize("path", EFPN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_go_downward(path: Path) -> None:
    own = _component(_module_name(path))
    if own is None:  # efpn/__init__.py: the public face may import anything
        return
    for module, names, line in _imports(path):
        other = _component(module)
        if module == "efpn":  # `from efpn import zoo` style
            for name in names:
                if name in LAYERS and name != own:
                    assert LAYERS[name] < LAYERS[own], f"{path}:{line} imports efpn.{name} (layer above or beside)"
            continue
        if other is None or other == own:
            continue
        assert LAYERS[other] < LAYERS[own], (
            f"{path.relative_to(REPO)}:{line}: efpn.{own} (layer {LAYERS[own]}) imports {module} "
            f"(layer {LAYERS[other]}); move the code down or the import up"
        )


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in EFPN_FILES}
    for path in EFPN_FILES:
        src = _module_name(path)
        deps = set()
        for module, names, _ in _imports(path):
            for cand in [f"{module}.{n}" for n in names] + [module]:
                if cand in modules and cand != src:
                    deps.add(cand)
                    break
        graph[src] = deps
    # a package __init__ re-exports its own modules; an edge into one's own package init is not a cycle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt == node.rsplit(".", 1)[0] or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _public(package: str) -> set[str]:
    """Names a package's ``__init__`` exports (its ``__all__``)."""
    init = EFPN.joinpath(*package.split(".")[1:], "__init__.py") if package != "efpn" else EFPN / "__init__.py"
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {ast.literal_eval(e) for e in node.value.elts}  # type: ignore[attr-defined]
    return set()


@pytest.mark.parametrize("path", sorted((REPO / "app").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_app_imports_only_public_names(path: Path) -> None:
    for module, names, line in _imports(path):
        if not (module == "efpn" or module.startswith("efpn.")):
            continue
        package_dir = EFPN.joinpath(*module.split(".")[1:])
        assert module == "efpn" or (package_dir / "__init__.py").is_file(), (
            f"{path.relative_to(REPO)}:{line} imports the module {module}; import from efpn or a sub-package"
        )
        public = _public(module)
        private = [n for n in names if n not in public and n != "*"]
        assert not private, f"{path.relative_to(REPO)}:{line}: {private} are not in {module}.__all__"
