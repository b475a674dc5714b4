"""Bounces into the ledger: asynchronous reports read from the bounce mailbox
(:func:`process_mailbox`), and SMTP-time rejections of a run (:func:`record_smtp_bounces`).

Each mailbox message is parsed (``mailcast.engagement.bounces``), matched to a delivery and, in one
transaction per batch: recorded in ``inbound_messages`` (so each message counts once, whatever
happens to it afterwards), turned into an event (``bounce`` with ``{"type": "hard"|"soft"}``,
``complaint``, ``deferral`` or ``unsubscribe``), and its address suppressed at once for a hard
bounce, a complaint or an unsubscribe, or after ``soft_bounce_limit`` soft bounces in a row (its
last N sent messages all bounced). Then the message is moved out of the inbox.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, text

from mailcast.engagement import bounces
from mailcast.engagement.bounces import Report
from mailcast.engagement.mailbox import Inbox
from mailcast.engagement.record import insert_ignoring_duplicates, record_events, suppress_rows
from mailcast.ledger.models import (
    BOUNCE,
    COMPLAINT,
    DEFERRAL,
    DELIVERED,
    HARD_BOUNCE,
    SENT,
    SUPPRESSED_COMPLAINT,
    UNSUBSCRIBE,
    UNSUBSCRIBED,
    Delivery,
    Event,
    InboundMessage,
    utcnow,
)

log = logging.getLogger("mailcast.bounces")

D = cast(Table, Delivery.__table__)
E = cast(Table, Event.__table__)
IM = cast(Table, InboundMessage.__table__)

_EVENT_KIND = {
    bounces.HARD: BOUNCE,
    bounces.SOFT: BOUNCE,
    bounces.COMPLAINT: COMPLAINT,
    bounces.DEFERRAL: DEFERRAL,
    bounces.UNSUBSCRIBE: UNSUBSCRIBE,
    bounces.DELIVERED: DELIVERED,
}
_SUPPRESS_AT_ONCE = {
    bounces.HARD: HARD_BOUNCE,
    bounces.COMPLAINT: SUPPRESSED_COMPLAINT,
    bounces.UNSUBSCRIBE: UNSUBSCRIBED,
}


@dataclass
class BounceSummary:
    mailbox: str
    read: int = 0
    recorded: int = 0  # new messages that became an event
    already: int = 0  # seen before (counted once)
    ignored: int = 0  # not a report, or no delivery found
    suppressed: int = 0  # addresses newly suppressed
    outcomes: Counter[str] = field(default_factory=Counter)
    runs: set[str] = field(default_factory=set)

    def table(self) -> list[dict[str, Any]]:
        return [{"outcome": k, "messages": v} for k, v in sorted(self.outcomes.items())]


@dataclass(frozen=True, slots=True)
class Match:
    delivery_id: int
    run_id: str
    address_key: str | None
    matched_by: str


def _match(conn: Connection, reports: Sequence[Report]) -> dict[str, Match]:
    """message_key → the delivery a report is about: by VERP token, by mailcast Message-ID, by
    the failed recipient's latest sent delivery."""
    wanted: set[int] = set()
    for r in reports:
        if r.token_delivery is not None:
            wanted.add(r.token_delivery)
        wanted.update(d for _run, d in r.mailcast_ids)
    rows: dict[int, tuple[str, str | None]] = {}
    if wanted:
        query = select(D.c.id, D.c.run_id, D.c.address_key).where(D.c.id.in_(sorted(wanted)))
        rows = {i: (run, key) for i, run, key in conn.execute(query).all()}
    found: dict[str, Match] = {}
    by_address: dict[str, list[Report]] = {}
    for r in reports:
        if r.token_delivery is not None and r.token_delivery in rows:
            run, key = rows[r.token_delivery]
            found[r.message_key] = Match(r.token_delivery, run, key, "verp")
            continue
        hit = next(((run, d) for run, d in r.mailcast_ids if rows.get(d, ("",))[0] == run), None)
        if hit is not None:
            found[r.message_key] = Match(hit[1], hit[0], rows[hit[1]][1], "message-id")
            continue
        for address in r.recipients[:1]:
            by_address.setdefault(address.lower(), []).append(r)
    if by_address:
        query = (
            select(D.c.id, D.c.run_id, D.c.address_key, D.c.sent_at)
            .where(D.c.address_key.in_(sorted(by_address)), D.c.status == SENT)
            .order_by(D.c.sent_at.desc(), D.c.id.desc())
        )
        latest: dict[str, tuple[int, str]] = {}
        for row in conn.execute(query).all():
            latest.setdefault(row.address_key, (row.id, row.run_id))
        for key, reps in by_address.items():
            if key in latest:
                for r in reps:
                    found[r.message_key] = Match(latest[key][0], latest[key][1], key, "address")
    return found


_SOFT_IN_A_ROW = text(
    """
SELECT x.address_key FROM (
    SELECT d.address_key AS address_key,
           ROW_NUMBER() OVER (PARTITION BY d.address_key ORDER BY d.sent_at DESC, d.id DESC) AS rn,
           CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.delivery_id = d.id AND e.kind = 'bounce')
                THEN 1 ELSE 0 END AS bounced
    FROM deliveries d
    WHERE d.address_key IN :keys AND d.status = 'sent'
) x
WHERE x.rn <= :n
GROUP BY x.address_key
HAVING SUM(x.bounced) >= :n
"""
).bindparams(bindparam("keys", expanding=True))


def _process_batch(
    engine: Engine,
    mailbox: str,
    items: Sequence[tuple[str, Report]],
    soft_bounce_limit: int,
    summary: BounceSummary,
) -> None:
    reports = list({r.message_key: r for _k, r in items}.values())
    with engine.begin() as conn:
        record_reports(conn, mailbox, reports, _match(conn, reports), soft_bounce_limit, summary)


def record_reports(
    conn: Connection,
    mailbox: str,
    reports: Sequence[Report],
    matches: dict[str, Match],
    soft_bounce_limit: int,
    summary: BounceSummary,
    *,
    source: str | None = None,
) -> None:
    """Record reports (unique message keys) and their matches, in the caller's transaction: each
    message key once in ``inbound_messages``; for a new one with a delivery, its event and the
    suppressions it calls for (at once, or after ``soft_bounce_limit`` soft bounces in a row).
    ``source`` names where the reports came from in events and suppressions (default: ``dsn``,
    or ``mailto`` for an unsubscribe request); a ``delivered`` report is a ``delivered`` event."""
    now = utcnow()
    rows = []
    for r in reports:
        m = matches.get(r.message_key)
        outcome = r.outcome if m is not None or r.outcome == bounces.IGNORED else bounces.IGNORED
        detail = r.detail()
        if m is not None:
            detail["matched_by"] = m.matched_by
        elif r.outcome != bounces.IGNORED:
            detail["why"] = "no delivery found for this report"
        if r.why:
            detail["why"] = r.why
        rows.append(
            {
                "message_key": r.message_key,
                "mailbox": mailbox[:500],
                "outcome": outcome,
                "delivery_id": m.delivery_id if m else None,
                "detail": detail,
                "created_at": now,
            }
        )
    stmt = insert_ignoring_duplicates(conn, IM, ("message_key",)).returning(IM.c.message_key)
    new = set(conn.execute(stmt, rows).scalars()) if rows else set()
    summary.already += len(reports) - len(new)
    events: list[dict[str, Any]] = []
    suppress: list[dict[str, Any]] = []
    soft_keys: set[str] = set()
    for r in reports:
        if r.message_key not in new:
            continue
        m = matches.get(r.message_key)
        if m is None or r.outcome == bounces.IGNORED:
            summary.ignored += 1
            summary.outcomes[bounces.IGNORED] += 1
            continue
        summary.recorded += 1
        summary.outcomes[r.outcome] += 1
        summary.runs.add(m.run_id)
        kind = _EVENT_KIND.get(r.outcome)
        if kind is None:
            continue
        label = source or ("mailto" if r.outcome == bounces.UNSUBSCRIBE else "dsn")
        detail = {**r.detail(), "source": label}
        detail["matched_by"] = m.matched_by
        occurred: datetime = r.occurred_at or now
        events.append(
            {
                "delivery_id": m.delivery_id,
                "run_id": m.run_id,
                "kind": kind,
                "detail": detail,
                "occurred_at": occurred,
            }
        )
        key = m.address_key
        if key and r.outcome in _SUPPRESS_AT_ONCE:
            suppress.append(
                {
                    "address_key": key,
                    "reason": _SUPPRESS_AT_ONCE[r.outcome],
                    "source": label,
                    "delivery_id": m.delivery_id,
                }
            )
        elif key and r.outcome == bounces.SOFT:
            soft_keys.add(key)
    record_events(conn, events)
    if soft_keys and soft_bounce_limit > 0:
        hit = conn.execute(_SOFT_IN_A_ROW, {"keys": sorted(soft_keys), "n": soft_bounce_limit})
        suppress += [
            {
                "address_key": k,
                "reason": HARD_BOUNCE,
                "source": f"{soft_bounce_limit} soft bounces in a row",
            }
            for k in hit.scalars()
        ]
    summary.suppressed += suppress_rows(conn, suppress)


def process_mailbox(
    inbox: Inbox,
    database_url: str,
    *,
    secret: bytes | None = None,
    soft_bounce_limit: int = 3,
    batch: int = 200,
    limit: int = 100_000,
) -> BounceSummary:
    """Read the inbox, record what it reports, move each message out of it; returns counts.

    ``secret`` (default: the tracking secret, when one is configured) verifies VERP and
    unsubscribe tokens; without it, reports are matched by Message-ID and address only."""
    from mailcast.engagement import tokens
    from mailcast.ledger.store import Ledger

    if secret is None:
        try:
            secret = tokens.load_secret()
        except tokens.TrackingError as exc:
            log.warning("no tracking secret (%s): VERP tokens are not used to match bounces", exc)
    engine = Ledger(database_url, create=False).engine
    summary = BounceSummary(mailbox=inbox.name)
    pending: list[tuple[str, Report]] = []

    def flush() -> None:
        if not pending:
            return
        _process_batch(engine, inbox.name, pending, soft_bounce_limit, summary)
        for key, _r in pending:  # only once the batch is committed
            inbox.done(key)
        pending.clear()

    try:
        for key, data in inbox.messages(limit):
            summary.read += 1
            try:
                report = bounces.parse(data, secret)
            except Exception as exc:  # a message the parser chokes on is kept, not fatal
                log.warning("cannot parse message %s: %s", key, exc)
                continue
            pending.append((key, report))
            if len(pending) >= batch:
                flush()
        flush()
    finally:
        inbox.close()
    log.info(
        "%s: read %d, recorded %d, already counted %d, ignored %d, newly suppressed %d",
        inbox.name, summary.read, summary.recorded, summary.already, summary.ignored,
        summary.suppressed,
    )  # fmt: skip
    return summary


def record_smtp_bounces(database_url: str, run_id: str, *, suppress: bool | None = None) -> int:
    """Turn the run's SMTP-time bounces into ``bounce`` events with ``{"type": "hard",
    "source": "smtp", "stage": ...}``, once each: ``failed`` rows whose recorded reply
    (``smtp_code``, ``smtp_stage``) is the server's 5xx refusal of the recipient (RCPT) or of
    the message (DATA). Not bounces: a refusal at MAIL (the sender's problem, not the
    recipient's), mailcast's own refusals (no reply from the server: no code, no stage),
    temporary failures.

    And, like the same code arriving in a DSN, suppress the address when the server refused the
    *recipient* at RCPT and the reply says the address is bad (5.1.x unknown user and the like,
    not policy blocks or a full mailbox). ``suppress``: None takes the run's campaign setting
    ``suppress_smtp_bounces`` (on by default). Returns how many events were added."""
    from mailcast.ledger.models import FAILED, SmtpStage
    from mailcast.ledger.store import Ledger

    ledger = Ledger(database_url, create=False)
    if suppress is None:
        suppress = bool(ledger.run(run_id).spec.get("suppress_smtp_bounces", True))
    query = select(
        D.c.id, D.c.address_key, D.c.smtp_code, D.c.smtp_reply, D.c.smtp_stage, D.c.updated_at
    ).where(
        D.c.run_id == run_id,
        D.c.status == FAILED,
        D.c.smtp_code.between(500, 599),
        D.c.smtp_stage.in_((SmtpStage.RCPT, SmtpStage.DATA)),
        ~select(E.c.id).where(E.c.delivery_id == D.c.id, E.c.kind == BOUNCE).exists(),
    )
    with ledger.engine.begin() as conn:
        rows = conn.execute(query).all()
        events = []
        to_suppress: list[dict[str, Any]] = []
        for i, key, code, reply, stage, at in rows:
            reply = reply or ""
            status, _code = bounces.status_and_code(reply)
            detail = {"type": "hard", "code": code, "stage": stage, "source": "smtp",
                      "diagnostic": reply[:500]}  # fmt: skip
            if status:
                detail["status"] = status
            events.append(
                {"delivery_id": i, "run_id": run_id, "kind": BOUNCE, "detail": detail,
                 "occurred_at": at or utcnow()}
            )  # fmt: skip
            at_rcpt = stage == SmtpStage.RCPT
            if suppress and key and at_rcpt and bounces.classify(status, code, reply) == "hard":
                to_suppress.append(
                    {"address_key": key, "reason": HARD_BOUNCE, "source": "smtp", "delivery_id": i}
                )
        if events:
            conn.execute(insert(E), [{**e, "created_at": utcnow()} for e in events])
        suppress_rows(conn, to_suppress)
    return len(events)
