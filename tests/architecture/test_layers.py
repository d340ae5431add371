"""Layers point one way: cli -> flows -> steps -> algorithms -> ground. An import (top-level or inside a
function) of a module in a higher layer fails this test; the CLI is imported by nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ebr.home import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "ebr"
LAYERS = {  # the first dotted part under ebr/ -> its layer (higher imports lower)
    "cli": 4,
    "flows": 3,
    "steps": 2,
    **dict.fromkeys(
        (
            "ann",
            "contracts",
            "datasets",
            "evaluation",
            "ingestion",
            "mining",
            "models",
            "ranking",
            "retrieval",
            "selection",
            "simulator",
        ),
        1,
    ),
    **dict.fromkeys(("config", "home", "io", "logs", "registry", "runners", "runs", "schema"), 0),
}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "ebr" or len(parts) < 2:
        return None
    return LAYERS[parts[1]]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [
                (node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "ebr"
            ]
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    packages = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p))
def test_no_import_points_up_a_layer(path: Path) -> None:
    own = _layer(_module(path)) if _module(path) != "ebr" else 0
    upward = [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {name}"
        for line, name in _imports(path)
        if (target := _layer(name)) is not None and target > own
    ]
    assert not upward, "\n".join(upward)


def test_the_cli_is_imported_by_nothing_but_itself() -> None:
    users = [
        f"{p.relative_to(PROJECT_ROOT)}:{line}"
        for p in MODULES
        if not _module(p).startswith("ebr.cli")
        for line, name in _imports(p)
        if name.startswith("ebr.cli")
    ]
    assert not users
