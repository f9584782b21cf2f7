"""The package picture of docs/architecture.md, checked on the source (issue 12).

Every import is read from the syntax tree (deferred imports inside functions and ``TYPE_CHECKING`` blocks
count too: they are arrows all the same). The layers, bottom to top: ``drivers`` -> ``local_store`` ->
``sync`` -> ``gateway`` (the core: config, daemon, runtime, ...) -> ``webui`` -> ``cli`` (``gateway.cli``,
``gateway.__main__`` and ``gateway.commands``, which assemble the daemon and hand it its web server). Arrows
point down only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("drivers", "local_store", "sync", "gateway", "webui")
ORDER = ("drivers", "local_store", "sync", "gateway", "webui", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """The project modules (or packages) ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return out


def _layer(module: str) -> str:
    if module in ("gateway.cli", "gateway.__main__", "gateway.commands") or module.startswith("gateway.commands."):
        return "cli"
    return module.split(".")[0]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {t for t in _imports(name, path) if t != name} for name, path in modules.items()}


def test_arrows_point_down_only_and_there_is_no_cycle() -> None:
    upward = []
    layers: dict[str, set[str]] = {layer: set() for layer in ORDER}
    for module, targets in _graph().items():
        for target in targets:
            a, b = _layer(module), _layer(target)
            if a != b:
                layers[a].add(b)
            if ORDER.index(b) > ORDER.index(a):
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports against the one-way arrows"
    # no cycle in the package picture (with arrows only downwards there can be none; checked anyway)
    seen: dict[str, int] = {}

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"cycle: {' -> '.join((*path, layer))}"
        if seen.get(layer):
            return
        for nxt in layers[layer]:
            visit(nxt, (*path, layer))
        seen[layer] = 1

    for layer in ORDER:
        visit(layer, ())


def test_webui_imports_from_gateway_only_the_service_interface() -> None:
    offending = sorted(f"{module} -> {target}" for module, targets in _graph().items() if module.startswith("webui")
                       for target in targets
                       if target.split(".")[0] in ("drivers", "local_store", "sync")
                       or (target.startswith("gateway") and not target.startswith("gateway.runtime")))
    assert offending == []


def test_the_daemon_does_not_import_the_web_ui() -> None:
    graph = _graph()
    assert not any(t.startswith("webui") for t in graph["gateway.daemon"] | graph["gateway.runtime"])


def test_lower_layers_import_nothing_upwards() -> None:
    graph = _graph()
    for module, targets in graph.items():
        layer = _layer(module)
        if layer == "drivers":
            assert {t.split(".")[0] for t in targets} <= {"drivers"}, module
        if layer == "local_store":
            assert {t.split(".")[0] for t in targets} <= {"drivers", "local_store"}, module


def test_the_checker_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    """The checks above would pass vacuously if imports inside functions were missed."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from webui import create_app\nfrom . import sibling\n", encoding="utf-8")
    assert _imports("gateway.mod", source) == {"webui", "webui.create_app", "gateway", "gateway.sibling"}


def test_no_module_imports_itself_round_a_circle() -> None:
    """Within a layer too: local_store.db -> local_store.pipeline -> local_store.db was one (a TYPE_CHECKING
    import of ``Store``). A package's ``__init__`` re-exporting its own modules is not counted."""
    modules = _modules()
    edges = {name: {t for t in targets if t in modules and not name.startswith(t + ".")}
             for name, targets in _graph().items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"cycle: {' -> '.join((*path[path.index(module):], module))}"
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, (*path, module))
        done.add(module)

    for module in sorted(edges):
        visit(module, ())
