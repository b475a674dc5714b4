"""The ledger store: the runs' and the deliveries' queries (planning, the send engine's claims
and outcomes, recovery, the CLI's reading). Every statement against the ledger belongs in this
package (tests/test_hygiene.py checks it): the tracking service's and the bounce processor's in
``events.py``, the suppression list's in ``suppressions.py``, the report's in ``reports.py``,
the views in ``views.py``.

The send engine depends only on the ``Store`` protocol (claim, record, requeue); ``Ledger``
implements it with SQLAlchemy Core bulk statements (one statement per batch, never per message)
and works on SQLite and Postgres. On Postgres claims use ``FOR UPDATE SKIP LOCKED`` so two
processes resuming the same run never take the same row.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

import psycopg
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    String,
    Table,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from mailcast.errors import LedgerUnavailable, RunNotFoundError
from mailcast.ledger.models import (
    COMPLAINT,
    FAILED,
    PENDING,
    SENDING,
    SENT,
    SKIPPED,
    STATUSES,
    UNKNOWN,
    Campaign,
    Delivery,
    DeliveryStatus,
    Event,
    Run,
    RunStatus,
    SmtpStage,
    utcnow,
)
from mailcast.ledger.reports import summary_row
from mailcast.ledger.schema import ensure_schema, get_engine
from mailcast.recipients import Recipient
from mailcast.redact import redact_url
from mailcast.settings import get_settings

D = cast(Table, Delivery.__table__)
EV = cast(Table, Event.__table__)
R = cast(Table, Run.__table__)
C = cast(Table, Campaign.__table__)


# How the engine's reason for a temporary failure made final starts (whatever the transport).
TEMPORARY_FAILURE = "temporary failure"


def retryable_failure(t: Any) -> Any:
    """Failed rows that ``mailcast retry --failed`` sends again, told apart by their recorded
    reply (``smtp_code``, ``smtp_stage``), not by their reason's text: temporary failures (a
    final 4xx, or the connection lost during a stage, before any reply) and the sender's own
    refusals (a 5xx to MAIL: the sender's address, its policy or its authentication, not the
    recipient). Not: refusals of the recipient or the message, mailcast's own refusals (no code,
    no stage), messages that could not be built.

    An API provider's refusals have no SMTP code or stage; the temporary ones (retries used
    up, a 5xx or throttling answer) are told apart by the engine's own reason prefix,
    ``TEMPORARY_FAILURE`` (never the provider's text, which comes after it)."""
    temporary = t.c.smtp_code.between(400, 499) | (
        t.c.smtp_code.is_(None) & t.c.smtp_stage.is_not(None)
    )
    sender = (t.c.smtp_stage == SmtpStage.MAIL) & t.c.smtp_code.between(500, 599)
    provider = (
        t.c.smtp_code.is_(None)
        & t.c.smtp_stage.is_(None)
        & t.c.reason.startswith(TEMPORARY_FAILURE, autoescape=True)
    )
    return temporary | sender | provider


PLAN_BATCH = 5_000


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery row taken for sending (now marked ``sending``)."""

    id: int
    row_no: int
    address: str
    fields: dict[str, Any]
    attempts: int  # including this one


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one claimed row."""

    id: int
    status: DeliveryStatus  # sent, failed, unknown, or pending (to be retried, or not attempted)
    reason: str | None = None
    smtp_code: int | None = None  # the server's reply code (None: no reply from the server)
    smtp_reply: str | None = None
    message_id: str | None = None
    smtp_stage: SmtpStage | None = None  # the command smtp_code answers (or the reply lost at)
    provider_message_id: str | None = None  # an API provider's id of the accepted message


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: str
    campaign: str
    status: str
    dry_run: bool
    spec: dict[str, Any]
    transport: str | None
    recipients: int
    note: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


PLAN_COLUMNS = (
    "run_id", "row_no", "address", "address_key", "fields", "status", "reason", "attempts",
    "created_at", "updated_at",
)  # fmt: skip


def _delivery_rows(
    run_id: str, recipients: Iterable[Recipient], now: datetime
) -> Iterator[tuple[Any, ...]]:
    """The delivery row of each recipient, values in ``PLAN_COLUMNS`` order (the INSERT and the
    COPY path both write these): pending for a valid recipient, skipped with its reason
    otherwise."""
    for r in recipients:
        ok = r.reason is None
        yield (
            run_id, r.row, r.address[:998], r.key if ok else None, r.fields,
            PENDING if ok else SKIPPED, r.reason, 0, now, now,
        )  # fmt: skip


_FIELDS = PLAN_COLUMNS.index("fields")


def _batched(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy_deliveries(
    conn: Connection, run_id: str, recipients: Iterable[Recipient], now: datetime
) -> int:
    """COPY … FROM STDIN on the transaction's own psycopg connection (binary-safe: psycopg
    quotes every value; ``fields`` goes as JSON text into the jsonb column)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    n = 0
    with raw.cursor() as cur:
        sql = f"COPY deliveries ({', '.join(PLAN_COLUMNS)}) FROM STDIN"
        with cur.copy(sql) as copy:
            for row in _delivery_rows(run_id, recipients, now):
                copy.write_row((*row[:_FIELDS], dumps(row[_FIELDS]), *row[_FIELDS + 1 :]))
                n += 1
    return n


# The send engine's two statements per batch on Postgres, as plain SQL (no statement building
# per batch; psycopg prepares them after a few uses). Same effect as ``_claim`` and ``record``.
# A claim takes pending rows, and rows this sender (``token``) reserved but has not handed over:
# a claim retried after a lost reply from the database takes its own rows again. Its time is
# the database's (``now()``): a resume compares it with the server's start (``mark_unknown``).
_PG_CLAIM_IDS = """
WITH pick AS (
    SELECT id FROM deliveries
    WHERE id = ANY(%(ids)s) AND (run_id || '') = %(run)s AND (status = %(pending)s
        OR (status = %(sending)s AND claim_token = %(token)s AND handed_at IS NULL))
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries AS d
SET status = %(sending)s, updated_at = now(), claim_token = %(token)s, handed_at = NULL,
    attempts = d.attempts + CASE WHEN d.status = %(pending)s THEN 1 ELSE 0 END
FROM pick
WHERE d.id = pick.id
RETURNING d.id, d.row_no, d.address, d.fields, d.attempts
"""
# The hand-over: the message of a claimed row is about to go on the wire. Only a row this
# sender still holds (a resume elsewhere may have taken a reserved row back).
_PG_HAND_OVER = """
UPDATE deliveries SET handed_at = %(now)s
WHERE id = ANY(%(hand)s) AND status = %(sending)s AND claim_token = %(token)s
RETURNING id
"""
# Starts like SQLAlchemy's "UPDATE deliveries SET status=…" (tests/test_chaos.py finds open
# outcome commits in pg_stat_activity by that, and by smtp_code).
_PG_RECORD_FROM = (
    "UPDATE deliveries SET status=v.status, reason=v.reason, smtp_code=v.code,"
    " smtp_reply=v.reply, smtp_stage=v.stage,"
    " message_id=coalesce(v.mid, deliveries.message_id),"
    " provider_message_id=coalesce(v.pmid, deliveries.provider_message_id), updated_at=%(now)s,"
    " sent_at=CASE WHEN v.status = %(sent)s THEN %(now)s ELSE deliveries.sent_at END"
    " FROM {source} AS v(id, status, reason, code, reply, stage, mid, pmid)"
    " WHERE deliveries.id = v.id"
    " AND (%(token)s::text IS NULL OR deliveries.claim_token = %(token)s)"
)
# A batch of outcomes as arrays; one outcome (the hand-over's common case) as plain values,
# which psycopg sends with far less work than ten one-element arrays.
_PG_RECORD = _PG_RECORD_FROM.format(
    source="unnest(%(ids)s::bigint[], %(status)s::text[], %(reason)s::text[], %(code)s::int[],"
    " %(reply)s::text[], %(stage)s::text[], %(mid)s::text[], %(pmid)s::text[])"
)
_PG_RECORD_ONE = _PG_RECORD_FROM.format(
    source="(VALUES (%(id1)s::bigint, %(status1)s::text, %(reason1)s::text, %(code1)s::int,"
    " %(reply1)s::text, %(stage1)s::text, %(mid1)s::text, %(pmid1)s::text))"
)


# A hand-over on Postgres: the outcomes not yet recorded and the hand-over in one autocommit
# statement (no BEGIN/COMMIT round trips), on a connection of its own (``_HandOverLine``).
_PG_RECORD_AND_HAND_OVER = f"WITH recorded AS ({_PG_RECORD} RETURNING 1) {_PG_HAND_OVER}"
_PG_RECORD_ONE_AND_HAND_OVER = f"WITH recorded AS ({_PG_RECORD_ONE} RETURNING 1) {_PG_HAND_OVER}"


class _HandOverLine:
    """A sender's own connection for hand-overs (Postgres): autocommit, ``synchronous_commit``
    off, and the two hand-over statements prepared once and run through libpq with text
    parameters (half the CPU of psycopg's query layer, which is most of a hand-over's cost on
    the sender's side; libpq releases the GIL while it waits). Used by one thread at a time (a
    ClaimGroup's leader, or the one engine loop)."""

    def __init__(self, url: str) -> None:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("SET synchronous_commit TO OFF")
        self.pg = self.conn.pgconn
        self._one = self._prepare(b"mailcast_hand_over_one", _PG_RECORD_ONE_AND_HAND_OVER)
        self._many = self._prepare(b"mailcast_hand_over", _PG_RECORD_AND_HAND_OVER)

    def _prepare(self, name: bytes, statement: str) -> tuple[bytes, list[str]]:
        sql, names = _numbered(statement)
        self._check(self.pg.prepare(name, sql), psycopg.pq.ExecStatus.COMMAND_OK)
        return name, names

    def _check(self, result: Any, expected: Any) -> None:
        if result.status == expected:
            return
        message = (result.error_message or b"").decode(errors="replace").strip()
        if self.pg.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError(message or "the connection was lost")
        raise psycopg.DatabaseError(message)

    def hand_over(
        self, ids: Sequence[int], token: str | None, record: Sequence[Outcome]
    ) -> set[int]:
        if len(record) <= 1:  # the common case: the previous message's outcome, or none
            params = _record_one_params(record[0] if record else None, token)
            name, names = self._one
        else:
            params = _record_params(record, token)
            name, names = self._many
        params["hand"] = list(ids)
        params["sending"] = str(SENDING)
        values: Any = [_text_param(params[n]) for n in names]  # None is SQL NULL for libpq
        result = self.pg.exec_prepared(name, values)
        self._check(result, psycopg.pq.ExecStatus.TUPLES_OK)
        return {int(cast(bytes, result.get_value(row, 0))) for row in range(result.ntuples)}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _numbered(statement: str) -> tuple[bytes, list[str]]:
    """A ``%(name)s`` statement in libpq's ``$n`` form, and the parameter names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s", number, statement).encode(), names


def _text_param(value: Any) -> bytes | None:
    """A parameter in Postgres's text input form (arrays as ``{...}`` literals)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = []
        for v in value:
            if v is None:
                items.append("NULL")
            else:
                text_ = str(v).replace("\\", "\\\\").replace('"', '\\"')
                items.append(f'"{text_}"')
        return ("{" + ",".join(items) + "}").encode()
    if isinstance(value, datetime):
        return value.isoformat().encode()
    return str(value).encode()


def _record_one_params(o: Outcome | None, token: str | None) -> dict[str, Any]:
    """``_PG_RECORD_ONE``'s parameters (no outcome: an id that matches no row)."""
    return {
        "id1": o.id if o else None,
        "status1": str(o.status) if o else None,
        "reason1": o.reason if o else None,
        "code1": o.smtp_code if o else None,
        "reply1": o.smtp_reply if o else None,
        "stage1": str(o.smtp_stage) if o and o.smtp_stage else None,
        "mid1": o.message_id if o else None,
        "pmid1": o.provider_message_id if o else None,
        "now": utcnow(),
        "sent": str(SENT),
        "token": token,
    }


def _record_params(outcomes: Sequence[Outcome], token: str | None) -> dict[str, Any]:
    return {
        "ids": [o.id for o in outcomes],
        "status": [str(o.status) for o in outcomes],
        "reason": [o.reason for o in outcomes],
        "code": [o.smtp_code for o in outcomes],
        "reply": [o.smtp_reply for o in outcomes],
        "stage": [o.smtp_stage and str(o.smtp_stage) for o in outcomes],
        "mid": [o.message_id for o in outcomes],
        "pmid": [o.provider_message_id for o in outcomes],
        "now": utcnow(),
        "sent": str(SENT),
        "token": token,
    }


_RECORD = (
    update(D)
    .where(
        D.c.id == bindparam("b_id"),
        or_(bindparam("b_token", type_=String) == None, D.c.claim_token == bindparam("b_token")),  # noqa: E711
    )
    .values(
        status=bindparam("b_status"),
        reason=bindparam("b_reason"),
        smtp_code=bindparam("b_code"),
        smtp_reply=bindparam("b_reply"),
        smtp_stage=bindparam("b_stage"),
        message_id=func.coalesce(bindparam("b_mid"), D.c.message_id),
        provider_message_id=func.coalesce(bindparam("b_pmid"), D.c.provider_message_id),
        updated_at=bindparam("b_now", type_=DateTime(timezone=True)),
        sent_at=func.coalesce(bindparam("b_sent", type_=DateTime(timezone=True)), D.c.sent_at),
    )
)


def _unindexed(column: Any) -> Any:
    """``column || ''``: the same value, but no index on ``column`` can serve the condition."""
    return column.concat("")


@dataclass
class Exchanged:
    """What one ledger transaction of the engine did: the rows it claimed, and the ids it
    handed over (those the sender still held)."""

    claims: list[Claim] = field(default_factory=list)
    handed: set[int] = field(default_factory=set)


# What a journaled sender's journal says (engine/journal.py): the rows accepted (row → SMTP
# code, Message-ID, provider id) and the rows on the wire when it stopped.
Journaled = tuple[Mapping[int, tuple[int, str | None, str | None]], set[int]]
JOURNAL_TOKEN_PREFIX = "j"  # claim tokens of journaled senders (engine/journal.TOKEN_PREFIX)


class Store(Protocol):
    """What the send engine needs from the ledger."""

    def pending_ids(self, run_id: str, lo: int, hi: int) -> list[int]: ...

    def exchange(
        self,
        run_id: str,
        *,
        token: str | None,
        record: Sequence[Outcome] = (),
        claim: Sequence[int] = (),
        hand_over: Sequence[int] = (),
    ) -> Exchanged: ...

    def record(self, outcomes: Sequence[Outcome], *, token: str | None = None) -> None: ...


class Ledger:
    """The SQL implementation of the store, plus the queries the CLI and reports need."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine: Engine = get_engine(url)
        # fault injection for the chaos test (Settings.fault_commit_pause): never set in production
        self._commit_pause = get_settings().fault_commit_pause
        ensure_schema(self.engine, create=create)
        self._lines: dict[str | None, _HandOverLine] = {}
        self._lines_lock = threading.Lock()

    @property
    def where(self) -> str:
        return redact_url(self.url)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        campaign: str,
        spec: dict[str, Any],
        *,
        dry_run: bool,
        transport: str | None,
        run_id: str | None = None,
    ) -> str:
        run_id = run_id or str(uuid.uuid4())
        with self.engine.begin() as conn:
            status = conn.execute(select(R.c.status).where(R.c.id == run_id)).scalar()
            if status == RunStatus.PLANNING:  # an earlier attempt died before its plan committed
                return run_id
            cid = conn.execute(select(C.c.id).where(C.c.name == campaign)).scalar()
            if cid is None:
                cid = conn.execute(
                    insert(C).values(name=campaign, created_at=utcnow()).returning(C.c.id)
                ).scalar_one()
            conn.execute(
                insert(R).values(
                    id=run_id,
                    campaign_id=cid,
                    status=RunStatus.PLANNING,
                    dry_run=dry_run,
                    spec=spec,
                    transport=transport,
                    recipients=0,
                    columns=[],
                    created_at=utcnow(),
                )
            )
        return run_id

    def run(self, run_id: str) -> RunInfo:
        query = (
            select(R, C.c.name.label("campaign"))
            .join(C, C.c.id == R.c.campaign_id)
            .where(R.c.id == run_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
            if row is None and len(run_id) >= 4:  # accept a unique prefix, like git
                rows = (
                    conn.execute(
                        select(R, C.c.name.label("campaign"))
                        .join(C, C.c.id == R.c.campaign_id)
                        .where(R.c.id.like(f"{run_id}%"))
                        .limit(2)
                    )
                    .mappings()
                    .all()
                )
                row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}", where=self.where)
        return RunInfo(**{k: row[k] for k in RunInfo.__slots__})  # type: ignore[attr-defined]

    def runs(self, limit: int = 50) -> list[RunInfo]:
        query = (
            select(R, C.c.name.label("campaign"))
            .join(C, C.c.id == R.c.campaign_id)
            .order_by(R.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [RunInfo(**{k: r[k] for k in RunInfo.__slots__}) for r in rows]  # type: ignore[attr-defined]

    def discard_run(self, run_id: str) -> bool:
        """Remove a run whose plan failed (still ``planning``, no rows written), and its
        campaign if it has no other run. Returns whether it was removed."""
        from sqlalchemy import delete, exists

        with self.engine.begin() as conn:
            row = conn.execute(select(R.c.status, R.c.campaign_id).where(R.c.id == run_id)).first()
            if row is None or row.status != RunStatus.PLANNING:
                return False
            if conn.execute(select(exists().where(D.c.run_id == run_id))).scalar():
                return False
            conn.execute(delete(R).where(R.c.id == run_id))
            if not conn.execute(
                select(exists().where(R.c.campaign_id == row.campaign_id))
            ).scalar():
                conn.execute(delete(C).where(C.c.id == row.campaign_id))
        return True

    def set_run(self, run_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(R).where(R.c.id == run_id).values(**values))

    # -- planning ---------------------------------------------------------------------------

    def plan(
        self, run_id: str, recipients: Iterable[Recipient], columns: Sequence[str] | None = None
    ) -> int:
        """Write one row per recipient: pending for valid rows, skipped (with the reason) for
        the rest, in one transaction. Postgres: COPY (psycopg 3), ~1M rows in seconds;
        elsewhere: executemany in batches of PLAN_BATCH. Returns the number of rows."""
        now = utcnow()
        with self.engine.begin() as conn:
            if self.is_postgres:
                total = _copy_deliveries(conn, run_id, recipients, now)
            else:
                total = 0
                rows = (
                    dict(zip(PLAN_COLUMNS, row, strict=True))
                    for row in _delivery_rows(run_id, recipients, now)
                )
                for batch in _batched(rows, PLAN_BATCH):
                    conn.execute(insert(D), batch)
                    total += len(batch)
            values: dict[str, Any] = {"recipients": total}
            if columns is not None:
                values["columns"] = list(columns)
            conn.execute(update(R).where(R.c.id == run_id).values(**values))
        return total

    # -- the send engine's store -------------------------------------------------------------

    def _claim(
        self,
        run_id: str,
        where: Callable[[Any], Any],
        limit: int | None,
        conn: Connection | None = None,
        token: str | None = None,
    ) -> list[Claim]:
        # Pick in a CTE (materialized once): a plain `IN (SELECT … SKIP LOCKED)` subquery may be
        # rescanned by Postgres and then takes more rows than LIMIT. `where` narrows the ids
        # (a range or a list); the run is checked with `run_id || ''`, which no index serves,
        # so the planner walks the primary key over those ids instead of the (run_id, status)
        # index, which holds every pending row of the run (a fresh run has no statistics, and
        # that plan made each claim scan the whole run: ~30 ms per claim at 20,000 rows).
        P = D.alias("p")
        mine = (P.c.status == SENDING) & (P.c.claim_token == token) & P.c.handed_at.is_(None)
        pick = select(P.c.id).where(
            where(P),
            _unindexed(P.c.run_id) == run_id,
            (P.c.status == PENDING) | mine if token is not None else P.c.status == PENDING,
        )
        pick = pick.order_by(P.c.id)
        if limit is not None:
            pick = pick.limit(limit)
        if self.is_postgres:
            pick = pick.with_for_update(skip_locked=True)
        picked = pick.cte("pick")
        stmt = (
            update(D)
            .where(D.c.id == picked.c.id)
            .values(
                status=SENDING,
                attempts=D.c.attempts + case((D.c.status == PENDING, 1), else_=0),
                updated_at=utcnow(),
                claim_token=token,
                handed_at=None,
            )
            .returning(D.c.id, D.c.row_no, D.c.address, D.c.fields, D.c.attempts)
        )
        if conn is None:
            with self.engine.begin() as conn:
                rows = sorted(conn.execute(stmt).all(), key=lambda r: r[0])
        else:
            rows = sorted(conn.execute(stmt).all(), key=lambda r: r[0])
        return [Claim(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def claim_ids(
        self,
        run_id: str,
        ids: Sequence[int],
        *,
        record: Sequence[Outcome] = (),
        token: str | None = None,
    ) -> list[Claim]:
        """Take those of ``ids`` that are still pending (others may have taken some). With
        ``record``, the previous batch's outcomes are written first, in the same transaction
        (one commit per batch instead of two)."""
        return self.exchange(run_id, token=token, record=record, claim=ids).claims

    def exchange(
        self,
        run_id: str,
        *,
        token: str | None,
        record: Sequence[Outcome] = (),
        claim: Sequence[int] = (),
        hand_over: Sequence[int] = (),
    ) -> Exchanged:
        """The send engine's one transaction: record outcomes, claim rows (pending, or reserved
        earlier by ``token``: marked ``sending``, nothing sent yet), and hand rows over (their
        messages are about to go on the wire: ``handed_at``), in that order.

        A transaction that claims is committed durably before any of its rows is sent. One
        that only records and hands over is committed without waiting for the disk on
        Postgres (``synchronous_commit = off``): it is visible at once and survives a crash of
        mailcast, and a crash of Postgres before it reached the disk is detected by
        ``mark_unknown``, which then trusts no reservation. A lost connection raises
        ``LedgerUnavailable``; the whole exchange can then be tried again as it was."""
        done = Exchanged()
        if not (record or claim or hand_over):
            return done
        with self._reachable(token):
            if self.is_postgres and hand_over and not claim:
                done.handed = self._line(token).hand_over(hand_over, token, record)
                return done
            with self.engine.begin() as conn:
                if self.is_postgres and not claim:
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                if record:
                    self._record(conn, record, token)
                if claim:
                    done.claims = self._claim_ids(conn, run_id, claim, token)
                if hand_over:
                    done.handed = self._hand_over(conn, hand_over, token)
        return done

    @contextlib.contextmanager
    def _reachable(self, token: str | None = None) -> Iterator[None]:
        """Turn a lost or refused database connection into ``LedgerUnavailable`` (the engine
        waits for the database and tries again); other database errors pass unchanged."""
        try:
            yield
        except psycopg.OperationalError as exc:  # a hand-over line's own connection
            self.release(token)
            raise self._unavailable(exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
                raise self._unavailable(exc.orig or exc) from exc
            raise

    def _unavailable(self, exc: BaseException) -> LedgerUnavailable:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return LedgerUnavailable(
            f"the ledger database cannot be reached: {first}",
            where=self.where,
            hint="check that the database is up; a run waits for it and continues",
        )

    def _line(self, token: str | None) -> _HandOverLine:
        with self._lines_lock:
            line = self._lines.get(token)
            if line is None:
                line = self._lines[token] = _HandOverLine(self.url)
            return line

    def release(self, token: str | None) -> None:
        """Close the hand-over connection of sender ``token`` (when its chunk is done)."""
        with self._lines_lock:
            line = self._lines.pop(token, None)
        if line is not None:
            line.close()

    def _claim_ids(
        self, conn: Connection, run_id: str, ids: Sequence[int], token: str | None
    ) -> list[Claim]:
        if not self.is_postgres:
            return self._claim(run_id, lambda t: t.c.id.in_(list(ids)), None, conn, token)
        # the send engine's hot path on Postgres: one prepared statement
        params = {
            "ids": list(ids),
            "run": run_id,
            "pending": PENDING,
            "sending": SENDING,
            "token": token,
        }
        rows = list(conn.exec_driver_sql(_PG_CLAIM_IDS, params).all())
        rows.sort(key=lambda r: r[0])
        return [Claim(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def _hand_over(self, conn: Connection, ids: Sequence[int], token: str | None) -> set[int]:
        if self.is_postgres:
            params = {"hand": list(ids), "sending": str(SENDING), "token": token, "now": utcnow()}
            return {r[0] for r in conn.exec_driver_sql(_PG_HAND_OVER, params)}
        stmt = (
            update(D)
            .where(D.c.id.in_(list(ids)), D.c.status == SENDING, D.c.claim_token == token)
            .values(handed_at=utcnow())
            .returning(D.c.id)
        )
        return set(conn.execute(stmt).scalars())

    def all_pending_ids(self, run_id: str) -> Sequence[int]:
        """Every pending row id of the run, in order, as a compact array (8 bytes a row)."""
        query = select(D.c.id).where(D.c.run_id == run_id, D.c.status == PENDING).order_by(D.c.id)
        ids = array("q")
        with self._reachable(), self.engine.connect() as conn:
            for batch in (
                conn.execution_options(yield_per=50_000).execute(query).scalars().partitions()
            ):
                ids.extend(batch)
        return ids

    def pending_ids(self, run_id: str, lo: int, hi: int) -> list[int]:
        """The ids of the run's pending rows in [lo, hi], in order: what a chunk has to send.
        The engine claims them a batch at a time with ``claim_ids`` (a primary-key lookup per
        row, whatever the size of the run)."""
        query = (
            select(D.c.id)
            .where(D.c.id.between(lo, hi), _unindexed(D.c.run_id) == run_id, D.c.status == PENDING)
            .order_by(D.c.id)
        )
        with self._reachable(), self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def record(self, outcomes: Sequence[Outcome], *, token: str | None = None) -> None:
        """Write the outcomes of a batch: one statement, one commit. With ``token``, only rows
        that sender still holds are written."""
        self.exchange("", token=token, record=outcomes)

    def _record(
        self, conn: Connection, outcomes: Sequence[Outcome], token: str | None = None
    ) -> None:
        now = utcnow()
        if self.is_postgres:  # the batch's outcomes as arrays in one UPDATE … FROM unnest(…)
            conn.exec_driver_sql(_PG_RECORD, _record_params(outcomes, token))
        else:
            params = [
                {
                    "b_id": o.id,
                    "b_status": o.status,
                    "b_reason": o.reason,
                    "b_code": o.smtp_code,
                    "b_reply": o.smtp_reply,
                    "b_stage": o.smtp_stage,
                    "b_mid": o.message_id,
                    "b_pmid": o.provider_message_id,
                    "b_now": now,
                    "b_sent": now if o.status == SENT else None,
                    "b_token": token,
                }
                for o in outcomes
            ]
            conn.execute(_RECORD, params)
        if self._commit_pause:
            time.sleep(self._commit_pause)

    # -- recovery ---------------------------------------------------------------------------

    def mark_unknown(
        self,
        run_id: str,
        journals: Mapping[str, Journaled] | None = None,
        *,
        busy: Iterable[str] = (),
    ) -> int:
        """After a crash: rows whose message was handed over (``sending`` with ``handed_at``)
        may or may not have been delivered: ``unknown``. Rows a sender had only reserved go
        back to pending (nothing of them left), unless the database itself restarted since
        they were claimed (on Postgres a hand-over is committed without waiting for the disk,
        so a crash of the server may have lost one): then they are ``unknown`` too.

        ``journals``: per claim token of a journaled sender (engine/journal.py), what its
        journal says: the rows accepted (row → code, Message-ID, provider id: ``sent``) and
        the rows on the wire (``unknown``); its other rows were only reserved (``pending``).
        A journaled sender's rows without a journal here are all ``unknown``. ``busy``: claim
        tokens of senders still at work (their journals are locked): their rows are theirs.
        Returns how many rows became unknown."""
        held = [D.c.run_id == run_id, D.c.status == SENDING]
        sending = list(held)
        if busy := list(busy):
            sending.append(func.coalesce(D.c.claim_token, "").not_in(busy))
        unknown = 0
        with self.engine.begin() as conn:
            for token, (accepted, in_doubt) in (journals or {}).items():
                if token in busy:  # a live sender's rows are its own
                    continue
                # one token's rows (no expanding NOT IN: its executemany of accepted rows
                # cannot take one)
                unknown += self._settle_journaled(
                    conn, [*held, D.c.claim_token == token], accepted, in_doubt
                )
            reserved = [
                *sending,
                D.c.handed_at.is_(None),
                func.coalesce(D.c.claim_token, "").not_like(f"{JOURNAL_TOKEN_PREFIX}%"),
            ]
            if self._reservations_trusted(conn, reserved):
                conn.execute(
                    update(D)
                    .where(*reserved)
                    .values(
                        status=PENDING,
                        attempts=D.c.attempts - 1,
                        claim_token=None,
                        updated_at=utcnow(),
                    )
                )
            result = conn.execute(
                update(D)
                .where(*sending)
                .values(
                    status=UNKNOWN,
                    reason="in flight when the run was interrupted; may have been delivered",
                    updated_at=utcnow(),
                )
            )
        return unknown + (result.rowcount or 0)

    def _settle_journaled(
        self,
        conn: Connection,
        mine: list[Any],
        accepted: Mapping[int, tuple[int, str | None, str | None]],
        in_doubt: Iterable[int],
    ) -> int:
        now = utcnow()
        if accepted:
            conn.execute(
                update(D)
                .where(*mine, D.c.id == bindparam("b_id"))
                .values(
                    status=SENT,
                    reason=None,
                    smtp_code=bindparam("b_code"),
                    smtp_reply="accepted (recorded from the sender's journal after a crash)",
                    smtp_stage=bindparam("b_stage"),
                    message_id=func.coalesce(bindparam("b_mid"), D.c.message_id),
                    provider_message_id=bindparam("b_pid"),
                    sent_at=now,
                    updated_at=now,
                ),
                [
                    {  # an SMTP code and stage for SMTP; a provider's acceptance has its id
                        "b_id": i,
                        "b_code": code if pid is None else None,
                        "b_stage": SmtpStage.DATA if pid is None else None,
                        "b_mid": mid,
                        "b_pid": pid,
                    }
                    for i, (code, mid, pid) in accepted.items()
                ],
            )
        doubt = [i for i in in_doubt if i not in accepted]
        result = (
            conn.execute(
                update(D)
                .where(*mine, D.c.id.in_(doubt))
                .values(
                    status=UNKNOWN,
                    reason="on the wire when the run was interrupted; may have been delivered",
                    updated_at=now,
                )
            )
            if doubt
            else None
        )
        conn.execute(  # the rest were only reserved: nothing of them left
            update(D)
            .where(*mine)
            .values(status=PENDING, attempts=D.c.attempts - 1, claim_token=None, updated_at=now)
        )
        return (result.rowcount or 0) if result is not None else 0

    def _reservations_trusted(self, conn: Connection, reserved: list[Any]) -> bool:
        """Whether ``handed_at`` can be trusted for the reserved rows: always on SQLite (a commit
        is in the file), on Postgres when the server has been up since the oldest of them was
        claimed (claims take the server's clock)."""
        if not self.is_postgres:
            return True
        oldest = conn.execute(select(func.min(D.c.updated_at)).where(*reserved)).scalar()
        if oldest is None:
            return True
        started = conn.exec_driver_sql("SELECT pg_postmaster_start_time()").scalar()
        return bool(started is not None and started < oldest)

    def reopen(self, run_id: str, statuses: Sequence[str], *, retryable_only: bool = False) -> int:
        """Put rows back to pending (``--resend-unknown``, ``retry --failed``). With
        ``retryable_only``, only the failures worth another try (see ``retryable_failure``)."""
        where = [D.c.run_id == run_id, D.c.status.in_(statuses)]
        if retryable_only:
            where.append(retryable_failure(D))
        with self.engine.begin() as conn:
            result = conn.execute(
                update(D).where(*where).values(status=PENDING, updated_at=utcnow())
            )
        return result.rowcount or 0

    # -- reading ----------------------------------------------------------------------------

    def counts(self, run_id: str) -> dict[str, int]:
        query = select(D.c.status, func.count()).where(D.c.run_id == run_id).group_by(D.c.status)
        with self.engine.connect() as conn:
            found = {s: n for s, n in conn.execute(query).all()}
        return {s: found.get(s, 0) for s in STATUSES}

    def update_run_spec(self, run_id: str, changes: Mapping[str, Any]) -> None:
        """Change fields of a run's recorded spec (an operator's decision at ``resume``, e.g. a
        higher ``max_hard_bounce_rate``): later resumes keep it."""
        with self.engine.begin() as conn:
            spec = conn.execute(select(R.c.spec).where(R.c.id == run_id)).scalar_one()
            conn.execute(update(R).where(R.c.id == run_id).values(spec={**spec, **changes}))

    def complaint_counts(self, run_id: str) -> tuple[int, int]:
        """(spam complaints recorded for the run's messages, messages sent): the run's
        complaint rate, which pauses a run past ``max_complaint_rate``."""
        complaints = select(func.count(func.distinct(EV.c.delivery_id))).where(
            EV.c.run_id == run_id, EV.c.kind == COMPLAINT
        )
        sent = select(func.count()).where(D.c.run_id == run_id, D.c.status == SENT)
        with self._reachable(), self.engine.connect() as conn:
            return int(conn.execute(complaints).scalar_one()), int(conn.execute(sent).scalar_one())

    def reasons(self, run_id: str, limit: int | None = 20) -> list[tuple[str, str, int]]:
        """(status, reason, count) for rows not sent, most frequent first (``limit=None``: all)."""
        cut = func.substr(func.coalesce(D.c.reason, ""), 1, 120).label("why")
        query = (
            select(D.c.status, cut, func.count().label("n"))
            .where(
                D.c.run_id == run_id,
                D.c.status.in_((FAILED, SKIPPED, UNKNOWN))
                | ((D.c.status == PENDING) & D.c.reason.is_not(None)),
            )
            .group_by(D.c.status, cut)
            .order_by(func.count().desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(s, w, n) for s, w, n in conn.execute(query).all()]

    REPORT_COLUMNS = (
        "row_no", "address", "status", "reason", "attempts", "smtp_code", "smtp_reply",
        "message_id", "provider_message_id", "sent_at", "updated_at", "fields",
    )  # fmt: skip

    def deliveries(self, run_id: str, *, batch: int = 10_000) -> Iterator[dict[str, Any]]:
        """Every delivery row of a run in row order, streamed in id batches."""
        cols = [D.c[c] for c in self.REPORT_COLUMNS]
        last = -1
        while True:
            query = (
                select(D.c.id, *cols)
                .where(D.c.run_id == run_id, D.c.id > last)
                .order_by(D.c.id)
                .limit(batch)
            )
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
            if not rows:
                return
            last = rows[-1]["id"]
            for r in rows:
                yield {c: r[c] for c in self.REPORT_COLUMNS}

    def sent_message_ids(self, run_id: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(D.c.message_id).where(D.c.run_id == run_id, D.c.status == SENT)
                ).scalars()
            )

    def columns(self, run_id: str) -> list[str]:
        """The recipient data's columns, in the source's order."""
        with self.engine.connect() as conn:
            cols = conn.execute(select(R.c.columns).where(R.c.id == run_id)).scalar()
            if not cols:  # planned without columns: take them from a row
                fields = conn.execute(
                    select(D.c.fields).where(D.c.run_id == run_id).order_by(D.c.id).limit(1)
                ).scalar()
                cols = list(fields or {})
        return list(cols)

    def campaign_summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's row of the ``campaign_summary`` view (counts and rates), None if absent."""
        with self.engine.connect() as conn:
            return summary_row(conn, run_id)
