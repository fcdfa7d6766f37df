"""The layers point one way — web → service → model and hub → images, config — read from the source's imports
(those inside functions too), so a crossing fails here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from catdog_model.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "catdog_model"
# Each of these may import only the modules listed (besides the standard library and third parties).
ALLOWED = {
    "errors": set(),
    "layout": set(),
    "atomic": {"errors"},
    "config": {"errors"},
    "images": {"config", "errors"},
    "prediction": {"__init__"},
    "hub": {"atomic", "config", "errors", "layout"},
}
WEB = {"web", "app", "gradio_sessions"}  # and Gradio: the web layer, which nothing below it may use


def imports_of(path: Path) -> set[str]:
    """The top-level names a file imports, and for the package's own modules 'catdog_model.<module>'."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package
                if node.module:
                    found.add(f"catdog_model.{node.module.split('.')[0]}")
                else:
                    found.update(f"catdog_model.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return {name if name.startswith("catdog_model.") else name.split(".")[0] for name in found} | {
        f"catdog_model.{name.split('.')[1]}" for name in found if name.startswith("catdog_model.")}


def package_graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {name: {imported.split(".")[1] for imported in imports_of(path)
                   if imported.startswith("catdog_model.") and imported.split(".")[1] in modules} - {name}
            for name, path in modules.items()}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_the_lowest_modules_import_nothing_above_them(module):
    assert package_graph()[module] <= ALLOWED[module]


def test_nothing_in_the_package_imports_the_web_layer_but_the_web_layer():
    graph = package_graph()
    for name, path in ((name, PACKAGE / f"{name}.py") for name in graph if name not in WEB):
        assert not graph[name] & WEB, f"{name} imports the web layer"
        assert "gradio" not in imports_of(path), f"{name} imports Gradio"


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            assert state.get(imported) != "open", "import cycle: " + " → ".join(path + [name, imported])
            if imported not in state:
                visit(imported, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("folder, forbidden", [
    ("catdog_model", {"tests", "bench", "app"}),
    ("catdog", {"tests", "bench", "app"}),
    ("bench", {"tests"}),  # the Docker image has no tests/
])
def test_shipped_code_never_imports_the_tests(folder, forbidden):
    for path in (PROJECT_ROOT / folder).glob("*.py"):
        assert not imports_of(path) & forbidden, f"{path.relative_to(PROJECT_ROOT)} imports {imports_of(path) & forbidden}"


def test_the_hub_stores_folders_and_refs_and_reads_nothing_of_a_model():
    # Of a version's files it may know the one that marks a folder as a version and the card it writes.
    from catdog_model import layout

    model_files = {name: value for name, value in vars(layout).items()
                   if name.endswith("_FILE") and name not in {"REFS_FILE", "CONFIG_FILE", "CARD_FILE"}}
    tree = ast.parse((PACKAGE / "hub.py").read_text())
    docstrings = {id(body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  for body in [node.body] if body and isinstance(body[0], ast.Expr)}
    strings = [node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    names = {getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", None)
             for node in ast.walk(tree) if isinstance(node, (ast.Name, ast.Attribute, ast.alias))}
    assert not names & set(model_files)
    assert not [value for value in model_files.values() if any(value in text for text in strings)]
