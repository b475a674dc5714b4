"""The report's statements: a run's row of the ``campaign_summary`` view, its transport, its
first send, its ``link_clicks`` rows and the times of its opens and clicks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, select, text

from mailcast.ledger.models import Delivery, Event, Run

D = cast(Table, Delivery.__table__)
E = cast(Table, Event.__table__)
R = cast(Table, Run.__table__)

_SUMMARY = text("SELECT * FROM campaign_summary WHERE run_id = :r")
_LINK_CLICKS = text(
    "SELECT position, url, clicks, unique_clicks FROM link_clicks"
    " WHERE run_id = :r ORDER BY clicks DESC, position, url"
)


def summary_row(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """The run's row of the ``campaign_summary`` view (counts and rates), None if absent."""
    row = conn.execute(_SUMMARY, {"r": run_id}).mappings().first()
    return dict(row) if row is not None else None


def run_transport(conn: Connection, run_id: str) -> str | None:
    """The run's record of where it sent (``runs.transport``)."""
    return cast(str | None, conn.execute(select(R.c.transport).where(R.c.id == run_id)).scalar())


def first_sent(conn: Connection, run_id: str) -> datetime | str | None:
    """When the run's first message was sent (as the database returns it), None if none was."""
    return conn.execute(select(func.min(D.c.sent_at)).where(D.c.run_id == run_id)).scalar()


def link_clicks(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    """The run's tracked links (position, url, clicks, unique_clicks), most clicked first."""
    return [dict(r) for r in conn.execute(_LINK_CLICKS, {"r": run_id}).mappings()]


def event_times(
    conn: Connection, run_id: str, kinds: Iterable[str]
) -> Iterator[tuple[str, datetime | str | None]]:
    """(kind, occurred_at) of each of the run's events of ``kinds``, streamed."""
    query = select(E.c.kind, E.c.occurred_at).where(E.c.run_id == run_id, E.c.kind.in_(list(kinds)))
    for row in conn.execution_options(yield_per=10_000).execute(query):
        yield row[0], row[1]
