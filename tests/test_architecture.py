"""ARCHITECTURE.md's import rules: its layer table, read from the file itself, and no import cycles.

Every igptlib module is parsed with ast, so imports inside functions count as much as those at the top.
"""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_layers(text: str) -> dict[str, tuple[int, str]]:
    """module -> (layer number from the bottom, layer name), from the table under "## The layers"."""
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("|")][2:]  # after the header and |---|
    return {module: (number, cells[1].strip()) for number, cells in enumerate(rows)
            for module in re.findall(r"`(\w+)`", cells[2])}


def imported_modules(path: Path) -> set[str]:
    """What a file imports from igptlib: module names, or "igptlib" for the package's own API."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else "igptlib" + (f".{node.module}" if node.module else "")
            # `from igptlib import plots` imports the module plots; `from igptlib.plots import x`, the same module.
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "igptlib" else [base]
        else:
            continue
        found.update(name.split(".")[1] if "." in name else name for name in names if name.split(".")[0] == "igptlib")
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (a depth-first search)."""
    state = {}  # module -> "open" while the modules it imports are followed, then "done"

    def visit(path: list[str]) -> list[str] | None:
        state[path[-1]] = "open"
        for imported in sorted(graph.get(path[-1], ())):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(path + [imported])):
                return cycle
        state[path[-1]] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit([module])):
            return cycle
    return None


LAYERS = read_layers((REPO / "ARCHITECTURE.md").read_text())
GRAPH = {path.stem: imported_modules(path) for path in sorted((REPO / "igptlib").glob("*.py")) if path.stem != "__init__"}


def test_every_module_has_one_layer_in_architecture_md():
    assert set(GRAPH) - set(LAYERS) == set(), "modules missing from ARCHITECTURE.md's layer table"
    assert set(LAYERS) - set(GRAPH) == set(), "ARCHITECTURE.md's layer table names modules that do not exist"


def test_modules_import_modules_never_the_package_api():
    # igptlib/__init__.py imports every layer: a module that imported it would import them all.
    wrong = {module: sorted(imported - set(GRAPH)) for module, imported in GRAPH.items() if imported - set(GRAPH)}
    assert wrong == {}


def test_config_imports_nothing_of_igptlib():
    assert GRAPH["config"] == set()


def test_no_module_imports_a_higher_layer():
    upward = [f"{module} ({LAYERS[module][1]}) imports {imported} ({LAYERS[imported][1]})"
              for module, imports in GRAPH.items() for imported in sorted(imports)
              if imported in LAYERS and LAYERS[imported][0] > LAYERS[module][0]]
    assert not upward, "; ".join(upward)


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_checks_find_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    table = "## The layers\n| layer | modules | what |\n|---|---|---|\n| low | `a`, `b` | `not_a_module` |\n| high | `c` | |\n"
    assert read_layers(table) == {"a": (0, "low"), "b": (0, "low"), "c": (1, "high")}
