"""Project rules checked on the source: Settings is the only reader of the environment."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailcast.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
# the installed distribution: the library and the orchestration folders
PROJECT = ("mailcast", "tasks", "flows", "blocks")


def _sources() -> Iterator[Path]:
    for folder in PROJECT:
        yield from sorted((REPO / folder).rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# -- Settings is the only reader of the environment ---------------------------------------------

# Writing the environment is allowed (configuring Prefect, handing the --smtp password to the
# transport through MAILCAST_SMTP_PASSWORD): these methods of os.environ only write.
_ENV_WRITES = {"setdefault", "update", "pop", "__setitem__", "__delitem__"}


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` / ``os.environb``, or a bare ``environ`` imported from os."""
    if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb"):
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in ("environ", "environb")


def environment_reads(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, what) for every read of the process environment in ``source``."""
    tree = ast.parse(source, filename=filename)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    imported_environ = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "os"
        and any(a.name in ("environ", "environb", "getenv", "getenvb") for a in n.names)
        for n in ast.walk(tree)
    )
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("getenv", "getenvb"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                found.append((node.lineno, f"os.{node.attr}"))
            continue
        if imported_environ and isinstance(node, ast.Name) and node.id in ("getenv", "getenvb"):
            found.append((node.lineno, node.id))
            continue
        if not _is_environ(node) or (isinstance(node, ast.Name) and not imported_environ):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del):
            continue  # os.environ[name] = value / del os.environ[name]
        if (
            isinstance(parent, ast.Attribute)
            and parent.attr in _ENV_WRITES
            and isinstance(parents.get(parent), ast.Call)
        ):
            continue  # os.environ.setdefault(...), .update(...), .pop(...)
        found.append((node.lineno, ast.unparse(parent) if parent is not None else "environ"))
    return sorted(found)


def test_the_environment_reader_check_finds_reads_and_allows_writes() -> None:
    reads = environment_reads(
        "import os\n"
        "a = os.environ.get('A')\n"
        "b = os.environ['B']\n"
        "c = 'C' in os.environ\n"
        "d = os.getenv('D')\n"
        "e = dict(os.environ)\n"
        "os.environ['F'] = 'x'\n"
        "os.environ.setdefault('G', 'y')\n"
        "os.environ.pop('H', None)\n"
        "del os.environ['I']\n"
    )
    assert [line for line, _ in reads] == [2, 3, 4, 5, 6]
    assert [
        line for line, _ in environment_reads("from os import environ\nx = environ['A']\n")
    ] == [2]
    assert environment_reads("from os import getenv\nx = getenv('A')\n") == [(2, "getenv")]


def test_settings_is_the_only_reader_of_the_environment() -> None:
    offenders = [
        f"{_rel(path)}:{line}: reads the environment ({what}); add a field to Settings"
        for path in _sources()
        if path != REPO / "mailcast" / "settings.py"
        for line, what in environment_reads(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not offenders, "\n".join(offenders)


def test_settings_reads_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables keep their names (README); secrets are SecretStr; empty means unset."""
    values = {
        "MAILCAST_TRACKING_SECRET": "a-tracking-secret-0123456789",
        "MAILCAST_TRACKING_SECRET_BLOCK": "tracking-secret",
        "MAILCAST_BOUNCE_MAILDIR": "/var/mail/bounces",
        "MAILCAST_BOUNCE_IMAP_URL": "imaps://bounces@mail.example.com/INBOX",
        "MAILCAST_BOUNCE_IMAP_PASSWORD": "imap-password",
        "MAILCAST_BOUNCE_IMAP_PASSWORD_BLOCK": "imap-block",
        "MAILCAST_FAULT_COMMIT_PAUSE": "0.25",
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = get_settings()
    assert s.tracking_secret is not None
    assert s.tracking_secret.get_secret_value() == values["MAILCAST_TRACKING_SECRET"]
    assert values["MAILCAST_TRACKING_SECRET"] not in repr(s)
    assert s.tracking_secret_block == "tracking-secret"
    assert str(s.bounce_maildir) == "/var/mail/bounces"
    assert s.bounce_imap_url == values["MAILCAST_BOUNCE_IMAP_URL"]
    assert s.bounce_imap_password is not None
    assert s.bounce_imap_password.get_secret_value() == "imap-password"
    assert "imap-password" not in repr(s)
    assert s.bounce_imap_password_block == "imap-block"
    assert s.fault_commit_pause == 0.25
    assert s.prefect_api_url == values["PREFECT_API_URL"]
    for name in values:
        monkeypatch.setenv(name, "")
    s = get_settings()
    assert s.tracking_secret is None and s.bounce_maildir is None and s.prefect_api_url is None
    assert s.fault_commit_pause == 0


# -- one error tree ------------------------------------------------------------------------------

# not importable as plain modules: alembic's migration environment and revision scripts
_NOT_IMPORTED = ("mailcast.ledger.migrations",)


def _project_modules() -> list[str]:
    """Every module of the installed distribution: the library, and tasks/, flows/ and blocks/
    through their installed names (mailcast.tasks, mailcast.flows, mailcast.blocks)."""
    import pkgutil

    import mailcast

    names = []
    for pkg in ("mailcast", "mailcast.tasks", "mailcast.flows", "mailcast.blocks"):
        module = importlib.import_module(pkg)
        names.append(pkg)
        names += [
            info.name
            for info in pkgutil.walk_packages(module.__path__, prefix=f"{pkg}.")
            if not info.name.startswith(_NOT_IMPORTED)
        ]
    assert "mailcast.engagement.tokens" in names and "mailcast.tasks" in names, mailcast
    return sorted(set(names))


def _drawn_in_the_tree() -> set[str]:
    """The class names drawn in the errors module's docstring."""
    import re

    from mailcast import errors

    drawing = (errors.__doc__ or "").split("::", 1)[1].strip("\n").split("\n\n")[0]
    return set(re.findall(r"^\s*(?:[│├└─ ]*)([A-Z]\w+)\s", drawing, re.M))


def test_every_error_of_the_project_is_in_the_one_tree() -> None:
    from mailcast.errors import MailcastError

    drawn = _drawn_in_the_tree()
    assert {"MailcastError", "TrackingError", "MailboxError", "ConnectionLost"} <= drawn
    found: dict[str, type] = {}
    for name in _project_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found[f"{name}.{obj.__qualname__}"] = obj
    assert "mailcast.errors.TrackingError" in found and "mailcast.errors.MailboxError" in found
    outside = [n for n, c in found.items() if not issubclass(c, MailcastError)]
    assert not outside, f"errors outside the MailcastError tree: {outside}"
    undrawn = [n for n, c in found.items() if c.__name__ not in drawn]
    assert not undrawn, f"errors missing from the drawing in mailcast/errors.py: {undrawn}"
    assert all(c.__module__ == "mailcast.errors" for c in found.values()), [
        n for n, c in found.items() if c.__module__ != "mailcast.errors"
    ]


def test_the_moved_errors_are_still_importable_where_they_were() -> None:
    from mailcast import errors
    from mailcast.engagement import mailbox, tokens

    assert tokens.TrackingError is errors.TrackingError
    assert mailbox.MailboxError is errors.MailboxError


# -- all SQL in mailcast/ledger/ -----------------------------------------------------------------

# What builds SQL: SQLAlchemy's statement constructors (from sqlalchemy, sqlalchemy.sql or a
# dialect), and the ledger's tables (the mapped classes of mailcast.ledger.models).
_SQL_BUILDERS = {
    "select", "insert", "update", "delete", "text", "literal", "literal_column", "exists",
    "bindparam", "table", "column", "union", "union_all", "values", "lambda_stmt",
}  # fmt: skip

# Modules outside mailcast/ledger/ that build SQL, and why.
SQL_ALLOWED = {
    # the SQL recipient source runs the campaign's own query against the user's database (not
    # the ledger): text() of that query is the source's job
    "mailcast/recipients/sql_source.py": {"text"},
    # the bounce processor's statements: h-outcomes moves them into mailcast/ledger/ with the
    # bounce outcome work (issue 10); drop this entry then
    "mailcast/engagement/processing.py": {"insert", "select", "text", "bindparam", "tables"},
}


def _ledger_tables() -> set[str]:
    from mailcast.ledger import models

    return {
        name
        for name, obj in vars(models).items()
        if isinstance(obj, type) and hasattr(obj, "__table__")
    }


def sql_builders(
    source: str, tables: set[str], filename: str = "<source>"
) -> list[tuple[int, str]]:
    """(line, what) for every SQL-building import (or table access) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = node.module
            sqlalchemy = module == "sqlalchemy" or module.startswith(
                ("sqlalchemy.sql", "sqlalchemy.dialects")
            )
            for alias in node.names:
                table = module == "mailcast.ledger.models" and alias.name in tables
                models = module == "mailcast.ledger" and alias.name == "models"
                if sqlalchemy and alias.name in _SQL_BUILDERS:
                    found.append((node.lineno, alias.name))
                elif table or models:
                    found.append((node.lineno, "tables"))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name)
                for alias in node.names
                if alias.name in ("sqlalchemy", "mailcast.ledger.models")
            ]
        elif isinstance(node, ast.Attribute) and node.attr in ("__table__", "exec_driver_sql"):
            found.append((node.lineno, node.attr if node.attr != "__table__" else "tables"))
    return sorted(found)


def test_the_sql_check_finds_statement_builders() -> None:
    tables = _ledger_tables()
    assert {"Delivery", "Event", "Suppression"} <= tables
    found = sql_builders(
        "from sqlalchemy import Engine, select\n"
        "from sqlalchemy.dialects.postgresql import insert\n"
        "from mailcast.ledger.models import SENT, Delivery\n"
        "from sqlalchemy.engine import make_url\n"
        "t = Delivery.__table__\n",
        tables,
    )
    assert found == [(1, "select"), (2, "insert"), (3, "tables"), (5, "tables")]


def test_all_sql_is_in_the_ledger_package() -> None:
    tables = _ledger_tables()
    ledger = REPO / "mailcast" / "ledger"
    offenders = []
    for path in _sources():
        if path.is_relative_to(ledger):
            continue
        allowed = SQL_ALLOWED.get(_rel(path), set())
        for line, what in sql_builders(path.read_text(encoding="utf-8"), tables, str(path)):
            if what not in allowed:
                offenders.append(
                    f"{_rel(path)}:{line}: builds SQL ({what}); move it to mailcast/ledger/"
                )
    assert not offenders, "\n".join(offenders)
    for name, allowed in SQL_ALLOWED.items():  # the allow-list holds nothing stale
        used = {what for _, what in sql_builders((REPO / name).read_text(encoding="utf-8"), tables)}
        assert allowed <= used, f"{name}: {sorted(allowed - used)} no longer needed"
