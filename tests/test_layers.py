"""The house in layers (docs/ARCHITECTURE.md), read from the code's own imports: every import, inside
functions too, runs one way down the layers; no two modules import each other, however far round; no module
passes 400 lines; no CLI command function passes 40."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rftbench"

# Lower numbers sit lower. A module imports from its own folder or from a lower layer, never from a peer
# at the same height: models, data and attacks know nothing of each other; nor do execution and reports.
LAYERS = {
    "errors": 0,
    "version": 0,
    "core": 1,
    "models": 2,
    "data": 2,
    "attacks": 2,
    "engine": 3,
    "results": 4,
    "experiments": 5,
    "execution": 6,
    "reports": 6,
    "cli": 7,
}
MAX_LINES = 400
MAX_COMMAND_LINES = 40


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The rftbench modules `path` imports anywhere in it (functions and TYPE_CHECKING blocks included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("rftbench."):
            found.add(name)
    return found


def folder(module: str) -> str:
    return module.split(".")[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # The package's facade names every public function lazily, for users; nothing inside imports it.
    return {m: imported(p, known) - {m} for m, p in mods.items() if m != "rftbench"}


def test_every_folder_has_a_layer():
    unplaced = {folder(m) for m in graph()} - set(LAYERS)
    assert not unplaced, f"{unplaced}: a new folder needs its place in LAYERS and in docs/ARCHITECTURE.md"


def test_imports_run_one_way_down():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if target == "rftbench" or folder(target) == folder(module):
                continue
            if LAYERS[folder(target)] >= LAYERS[folder(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not run down the layers:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    edges = {m: {t for t in ts if t != "rftbench"} for m, ts in graph().items()}
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_layer_check_sees_circles_and_upward_imports(tmp_path):
    """The checks above read real imports: a planted function-level import is found."""
    (tmp_path / "rftbench" / "core").mkdir(parents=True)
    planted = tmp_path / "rftbench" / "core" / "x.py"
    planted.write_text("def f():\n    from rftbench.cli.app import app\n    import rftbench.results.store\n")
    assert imported(planted, {"rftbench.cli.app", "rftbench.results.store", "rftbench.cli"}) == {
        "rftbench.cli.app",
        "rftbench.results.store",
    }


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_passes_400_lines(module):
    lines = len(modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: it holds two concerns, give each a file"


def command_functions() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted((PACKAGE / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
                for d in node.decorator_list
            ):
                found.append((module_name(path), node.name, node.end_lineno - node.lineno + 1))
    return found


def test_cli_commands_are_thin():
    commands = command_functions()
    assert len(commands) >= 12, "the command functions were not found: the check would pass on nothing"
    long = [f"{m}.{name}: {n} lines" for m, name, n in commands if n > MAX_COMMAND_LINES]
    assert not long, "commands that do more than parse, call and print:\n" + "\n".join(long)
