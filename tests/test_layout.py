"""The package's shape: no import cycle (function-level imports included), checkpoint I/O below its users,
one name per module (the layout block of docs/design.md: tests/test_docs.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.files import REPO

PACKAGE = REPO / "leak_lightning"


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *(module.split(".") if module else [])])


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports, anywhere in the file (module level or inside functions)."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = (_resolve(name, path.name == "__init__.py", node.level, node.module) if node.level
                        else node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "leak_lightning":  # the root is only a version
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert graph["leak_lightning.cli.leak_cli"] >= {"leak_lightning.checkpoint.io", "leak_lightning.training.module"}
    assert not cycles(graph), cycles(graph)


def test_checkpoint_io_sits_below_callbacks_export_predict_and_the_cli():
    graph = import_graph()
    above = ("leak_lightning.training.callbacks", "leak_lightning.inference.export", "leak_lightning.inference.predict",
             "leak_lightning.cli",
             "leak_lightning.cli.leak_cli", "leak_lightning.training.module")
    assert not [m for m in graph["leak_lightning.checkpoint.io"] if m.startswith(above)]
    for user in ("leak_lightning.inference.export", "leak_lightning.inference.predict", "leak_lightning.cli.leak_cli"):
        assert "leak_lightning.checkpoint.io" in graph[user], user
    # no callback is a utility library
    for user in ("leak_lightning.inference.export", "leak_lightning.inference.predict"):
        assert not [m for m in graph[user] if m.startswith("leak_lightning.training.callbacks")], user
    import leak_lightning.training.callbacks.checkpointing as callbacks
    from leak_lightning.checkpoint import io as checkpoint_io

    for name in ("AtomicCheckpointIO", "read_checkpoint", "newest_valid_checkpoint", "resolve_ckpt_path"):
        assert getattr(checkpoint_io, name).__module__ == "leak_lightning.checkpoint.io"
        assert not hasattr(callbacks, name), name


def test_no_two_modules_share_a_name():
    names = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"]
    assert sorted({n for n in names if names.count(n) > 1}) == []
