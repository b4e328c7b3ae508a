"""The shape of the package, read from its own imports: files, the largest, import circles (imports inside
functions included), and the longest CLI command function.

    python benchmarks/house.py [--root .]    # any checkout of rftbench, e.g. a `git worktree` of a release

A measurement for closing notes, not a test: tests/test_layers.py holds the targets.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def module_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    files = {module_of(p, package.parent): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name not in (module, "rftbench"):
                    targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def command_lengths(package: Path) -> list[tuple[int, str]]:
    cli = [package / "cli.py"] if (package / "cli.py").exists() else sorted((package / "cli").rglob("*.py"))
    lengths = []
    for path in cli:
        for node in ast.walk(ast.parse(path.read_text())):
            decorated = isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
                for d in node.decorator_list
            )
            if decorated:
                lengths.append((node.end_lineno - node.lineno + 1, node.name))
    return sorted(lengths, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    package = parser.parse_args().root.resolve() / "rftbench"
    sizes = sorted(
        (len(p.read_text().splitlines()), p.relative_to(package.parent)) for p in package.rglob("*.py")
    )
    graph = import_graph(package)
    print(f"python files: {len(sizes)}, lines: {sum(n for n, _ in sizes)}")
    print(f"largest: {sizes[-1][1]} ({sizes[-1][0]} lines); over 400 lines: {sum(n > 400 for n, _ in sizes)}")
    print(f"import arrows: {sum(map(len, graph.values()))}")
    found = circles(graph)
    print(f"import circles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    commands = command_lengths(package)
    print(
        f"CLI commands: {len(commands)}; longest: {commands[0][1]} ({commands[0][0]} lines); "
        f"over 40 lines: {sum(n > 40 for n, _ in commands)}"
    )


if __name__ == "__main__":
    main()
