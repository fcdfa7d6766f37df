"""The docs say what the code does: the configuration reference matches Settings, the README stays a front door,
and every link between the documents leads somewhere."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from catdog_model.config import PROJECT_ROOT, Settings

CONFIGURATION = PROJECT_ROOT / "docs" / "configuration.md"
CONFIG_SOURCE = (PROJECT_ROOT / "catdog_model" / "config.py").read_text()


def documented() -> dict[str, str]:
    """{variable: its default as the reference writes it} for each `CATDOG_…` and `GRADIO_…` row."""
    rows = re.findall(r"^\| `((?:CATDOG|GRADIO)_[A-Z_]+)` \| ([^|]*) \|", CONFIGURATION.read_text(), re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def read_by_settings() -> dict[str, str]:
    """{variable: the Settings field it sets}, from Settings.from_env (`field=` or a local of the field's name)."""
    fields = {field.name for field in dataclasses.fields(Settings)}
    return {variable: field for field, variable in
            re.findall(r"(\w+) ?= ?(?:_number|_flag|_path|os\.environ\.get)\(\"((?:CATDOG|GRADIO)_[A-Z_]+)\"",
                       CONFIG_SOURCE) if field in fields}


def test_every_variable_settings_reads_is_in_the_reference_and_every_row_is_read_somewhere():
    code = "".join(path.read_text() for folder in ("catdog_model", "bench", "tests") for path in
                   (PROJECT_ROOT / folder).glob("*.py")) + (PROJECT_ROOT / "app.py").read_text()
    assert set(re.findall(r"\"((?:CATDOG|GRADIO)_[A-Z_]+)\"", CONFIG_SOURCE)) <= set(documented())
    assert [name for name in documented() if f'"{name}"' not in code] == []


def test_the_reference_gives_the_defaults_settings_uses(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("CATDOG_", "GRADIO_")):
            monkeypatch.delenv(name)
    settings = Settings.from_env()
    checked = 0
    for variable, field in read_by_settings().items():
        written = documented()[variable]
        value = getattr(settings, field)
        if isinstance(value, bool):
            assert written in ({"1"} if value else {"0", "unset"}), variable
        elif isinstance(value, (int, float)):
            assert float(written) == value, variable
        elif value is None:
            assert not re.fullmatch(r"[\d.]+", written), variable  # "unset", or what stands in, in words
        else:
            continue  # folders inside the repository, names: said in words
        checked += 1
    assert checked >= 25


def test_the_architecture_lists_every_module_and_program():
    layout = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    paths = [path.relative_to(PROJECT_ROOT).as_posix() for folder in ("catdog_model", "bench")
             for path in (PROJECT_ROOT / folder).glob("*.py") if path.name != "__init__.py"]
    assert [path for path in paths if f"`{path}`" not in layout] == []


def test_the_readme_is_a_front_door_of_at_most_15_kb():
    assert len((PROJECT_ROOT / "README.md").read_bytes()) <= 15_000


@pytest.mark.parametrize("document", ["README.md", *(f"docs/{path.name}" for path in
                                                     sorted((PROJECT_ROOT / "docs").glob("*.md")))])
def test_every_link_between_the_documents_leads_to_a_file_and_heading(document):
    path = PROJECT_ROOT / document
    for target, anchor in re.findall(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)", path.read_text()):
        linked = (path.parent / target).resolve() if target else path
        assert linked.exists(), f"{document} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-")
                        for heading in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}
            assert anchor in headings, f"{document} links to {target}#{anchor}, a heading that does not exist"
