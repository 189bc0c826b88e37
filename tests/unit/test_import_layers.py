"""The import layers: ``streamrec.shared`` <- the services <- ``streamrec`` (client, CLI, dev stack).

``shared/`` imports no service and no ``streamrec`` top-level module; a service (``streamrec.ingest``,
``.trainer``, ``.scorer``, ``.api``) imports ``streamrec.shared`` and services, never a ``streamrec``
top-level module. Every import counts, the ones inside functions and under ``TYPE_CHECKING`` too:
read from the source with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = "shared"
SERVICES = frozenset({"ingest", "trainer", "scorer", "api"})


def modules() -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module of the packages pyproject.toml maps onto folders."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}
    for package in setuptools["packages"]:
        # A subpackage not in package-dir lives in its parent's folder (streamrec.trainer.evaluation).
        parent, _, rest = package.rpartition(".")
        folder = folders.get(package) or folders[parent] / rest
        folders[package] = folder
        for path in sorted(folder.glob("*.py")):
            yield (package if path.stem == "__init__" else f"{package}.{path.stem}"), path


def layer(module: str) -> str:
    """ "shared", "service" or "top" (a streamrec top-level module) for a module of streamrec."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == SHARED:
        return "shared"
    if len(parts) > 1 and parts[1] in SERVICES:
        return "service"
    return "top"


def imported(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every streamrec module ``path`` imports, relative imports resolved."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from streamrec import cli` imports the module streamrec.cli.
            targets = [f"{base}.{alias.name}" for alias in node.names] if base == "streamrec" else [base]
        else:
            continue
        for target in targets:
            if target == "streamrec" or target.startswith("streamrec."):
                yield node.lineno, target


def violations() -> list[str]:
    found = []
    for module, path in modules():
        own = layer(module)
        if own == "top":
            continue  # may import anything below it
        for line, target in imported(module, path):
            other = layer(target)
            if (own == "shared" and other != "shared") or (own == "service" and other == "top"):
                found.append(f"{path.relative_to(ROOT)}:{line}: {own} module {module} imports {target}")
    return found


def test_every_layer_is_found() -> None:
    layers = {layer(module) for module, _ in modules()}
    names = {module for module, _ in modules()}
    assert layers == {"shared", "service", "top"}
    assert {"streamrec.shared.settings", "streamrec.api.app", "streamrec.trainer.evaluation.runner"} <= names


def test_shared_and_the_services_import_nothing_above_them() -> None:
    assert violations() == []
