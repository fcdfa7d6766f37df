"""What each image's `pip install -r …` puts on disk: the installed size of a requirements file's packages and
everything they depend on, read from this venv's own installation records (no download, no Docker engine).

    python -m bench.install_size [requirements-serve.txt requirements.txt] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import metadata
from pathlib import Path

from catdog_model.config import PROJECT_ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> list[str]:
    """The package names a requirements file asks for, following its -r includes."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names += requirements(path.parent / line[3:].strip())
        elif line:
            names.append(canonical(re.split(r"[\[=<>!~; ]", line, maxsplit=1)[0]))
    return names


def closure(names: list[str]) -> set[str]:
    """The packages and, recursively, what they require (without extras), as installed here."""
    installed = {canonical(dist.metadata["Name"]): dist for dist in metadata.distributions()}
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        for requirement in installed[name].requires or []:
            if "extra ==" not in requirement:
                todo.append(canonical(re.split(r"[\[=<>!~; (]", requirement, maxsplit=1)[0]))
    return seen


def installed_bytes(names: set[str]) -> int:
    installed = {canonical(dist.metadata["Name"]): dist for dist in metadata.distributions()}
    total = 0
    for name in names:
        for file in installed[name].files or []:
            path = Path(installed[name].locate_file(file))
            if path.is_file():
                total += path.stat().st_size
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catdog bench install_size", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", default=["requirements-serve.txt", "requirements.txt"])
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    sizes = {}
    for name in arguments.files:
        packages = closure(requirements(PROJECT_ROOT / name))
        sizes[name] = {"packages": len(packages), "megabytes": round(installed_bytes(packages) / 2**20)}
    if arguments.json:
        print(json.dumps(sizes))
    else:
        for name, size in sizes.items():
            print(f"{name:24} {size['packages']:4} packages  {size['megabytes']:6,} MB installed")


if __name__ == "__main__":
    main()
