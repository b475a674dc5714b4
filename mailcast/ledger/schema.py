"""Connecting to the ledger database and keeping its schema at the head migration."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

from mailcast.errors import LedgerError, SchemaOutdatedError
from mailcast.redact import redact_url

MIGRATIONS = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """postgresql:// and postgres:// mean psycopg 3 (the driver we install)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine(url: str) -> Engine:
    """One engine per URL per process (engines own connection pools)."""
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = make_url(url).database
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 60})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
            _engines[url] = engine
        return engine


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(create_engine("sqlite://"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations (``mailcast db upgrade``)."""
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """A new, empty database is created at head; one that is behind is refused with a hint."""
    try:
        current = current_revision(engine)
    except Exception as exc:
        raise LedgerError(
            f"cannot open the ledger: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
            where=redact_url(str(engine.url)),
        ) from None
    head = head_revision()
    if current == head:
        return
    if current is None:
        if inspect(engine).has_table("deliveries"):
            raise SchemaOutdatedError(
                "the database has mailcast tables but no migration stamp",
                where=redact_url(str(engine.url)),
            )
        if not create:
            raise SchemaOutdatedError("the ledger is empty", where=redact_url(str(engine.url)))
        upgrade(engine)
        return
    raise SchemaOutdatedError(
        f"the ledger schema is at revision {current}, this mailcast needs {head}",
        where=redact_url(str(engine.url)),
    )
