"""The layout's one rule: imports go flows/ → tasks/ → the mailcast library, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPWARD = ("tasks", "flows", "mailcast.tasks", "mailcast.flows")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolved to nothing)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            for arg in node.args:  # importlib.import_module("tasks.x") is an import too
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value))
    return found


def _upward(name: str) -> bool:
    return any(name == u or name.startswith(u + ".") for u in UPWARD)


def test_the_library_never_imports_tasks_or_flows() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in sorted((REPO / "mailcast").rglob("*.py"))
        for line, name in _imports(path)
        if _upward(name)
    ]
    assert not offenders, "\n".join(offenders)


def test_tasks_never_import_flows() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in sorted((REPO / "tasks").rglob("*.py"))
        for line, name in _imports(path)
        if name.startswith(("flows", "mailcast.flows"))
    ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("folder", ["flows", "tasks", "blocks"])
def test_orchestration_imports_the_installed_names(folder: str) -> None:
    """flows/, tasks/ and blocks/ install as mailcast.flows, mailcast.tasks, mailcast.blocks:
    a bare ``import tasks`` would only work from a checkout."""
    offenders = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in sorted((REPO / folder).rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in ("tasks", "flows", "blocks")
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: it finds each form of an upward import."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import tasks.send\nfrom mailcast.flows.campaign import x\n"
        "def f():\n    from mailcast.tasks import limits\n"
        "import importlib\nimportlib.import_module('flows.campaign')\n"
    )
    names = [n for _, n in _imports(bad) if _upward(n)]
    assert {"tasks.send", "mailcast.flows.campaign", "mailcast.tasks", "flows.campaign"} <= set(
        names
    )
