"""Provider webhook events into the ledger, the way DSNs go in (``processing.record_reports``).

A webhook module turns each event a provider posts into a :class:`ProviderEvent`: a key unique
to that event (so the provider delivering it twice records it once), an outcome (``hard`` /
``soft`` bounce, ``complaint``, ``deferral``, ``unsubscribe``, ``delivered``, or ``ignored``
for events mailcast does not keep, such as opens the provider tracked) and what identifies the
message. :func:`record` finds each event's delivery (the provider's message id first, then
mailcast's Message-ID), and records the events that have one exactly like bounce reports read
from the bounce mailbox: once each in ``inbound_messages`` (mailbox ``webhook <provider>``), a
``bounce`` / ``complaint`` / ``deferral`` / ``unsubscribe`` event, the address suppressed at
once for a hard bounce, a complaint or an unsubscribe, or after ``soft_bounce_limit`` soft
bounces in a row. A ``delivered`` confirmation stays in ``inbound_messages`` (the events table
has no such kind). Events whose delivery is not found (another application's mail through the
same account, or a message of a deleted run) are counted and left: nothing is written for them.

:func:`bounce_outcome` classifies a provider's bounce like a DSN: a temporary failure is soft;
a permanent one is read by its enhanced status or SMTP code (``bounces.classify``: 5.1.1 hard,
5.2.2 mailbox full or 5.7.x policy soft), and hard when the provider gives neither.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from mailcast.engagement import bounces
from mailcast.engagement.processing import BounceSummary, Match, record_reports
from mailcast.ledger import provider_events
from mailcast.ledger.provider_events import Lookup

log = logging.getLogger("mailcast.webhooks")

SOFT_BOUNCE_LIMIT = 3  # process_mailbox's default
MAX_KEY = 400


@dataclass
class ProviderEvent:
    key: str  # unique to the event: "<provider>:<the provider's event id>"
    outcome: str  # bounces.HARD, SOFT, COMPLAINT, DEFERRAL, UNSUBSCRIBE, DELIVERED or IGNORED
    event: str  # the provider's own name for it ("bounce", "failed", "Permanent"...)
    provider_ids: tuple[str, ...] = ()
    message_ids: tuple[str, ...] = ()  # Message-ID header values the event carries
    recipient: str | None = None
    status: str | None = None
    code: int | None = None
    diagnostic: str | None = None
    occurred_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # inbound_messages.message_key holds 400 characters
        if len(self.key) > MAX_KEY:
            provider = self.key.split(":", 1)[0][:20]
            self.key = f"{provider}:sha256:{hashlib.sha256(self.key.encode()).hexdigest()}"

    def report(self) -> bounces.Report:
        extra = {"event": self.event[:100], **self.extra}
        if self.provider_ids:
            extra["provider_message_id"] = self.provider_ids[0][:300]
        return bounces.Report(
            message_key=self.key,
            outcome=self.outcome,
            recipients=[self.recipient[:320]] if self.recipient else [],
            status=self.status,
            code=self.code,
            diagnostic=self.diagnostic,
            occurred_at=self.occurred_at,
            extra=extra,
        )

    def lookup(self) -> Lookup:
        return Lookup(
            key=self.key,
            provider_ids=tuple(i[:300] for i in self.provider_ids if i),
            mailcast_ids=tuple(bounces.find_mailcast_ids(*self.message_ids)),
            recipient=self.recipient,
        )


def bounce_outcome(
    permanent: bool, status: str | None, code: int | None, diagnostic: str | None
) -> tuple[str, str | None, int | None]:
    """(outcome, status, code) of a provider's bounce; status and code read from the diagnostic
    text when the provider does not give them apart."""
    text = diagnostic or ""
    found_status, found_code = bounces.status_and_code(text)
    status = status if status and bounces.status_and_code(status)[0] == status else found_status
    if code is None or not 400 <= code < 600:
        code = found_code
    if not permanent:
        return bounces.SOFT, status, code
    if status is None and code is None:
        return bounces.HARD, status, code
    return bounces.classify(status, code, text), status, code


def timestamp(value: Any) -> datetime | None:
    """A Unix time (seconds, int/float/str) or an ISO 8601 string as an aware datetime."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float) or (isinstance(value, str) and _number(value)):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def record(
    engine: Engine,
    provider: str,
    events: Sequence[ProviderEvent],
    *,
    soft_bounce_limit: int = SOFT_BOUNCE_LIMIT,
) -> BounceSummary:
    """Record one post's events in one transaction (see the module's docstring)."""
    summary = BounceSummary(mailbox=f"webhook {provider}")
    unique = {e.key: e for e in events if e.outcome != bounces.IGNORED}
    summary.read = len(events)
    summary.ignored = len(events) - len(unique)
    if not unique:
        return summary
    with engine.begin() as conn:
        found = provider_events.find(conn, [e.lookup() for e in unique.values()])
        matches = {
            k: Match(f.delivery_id, f.run_id, f.address_key, f.matched_by) for k, f in found.items()
        }
        reports = [e.report() for e in unique.values() if e.key in matches]
        summary.ignored += len(unique) - len(reports)
        record_reports(
            conn, summary.mailbox, reports, matches, soft_bounce_limit, summary, source=provider
        )
    if len(unique) > len(reports):
        log.info(
            "%s: %d event(s) about no delivery of this ledger", provider, len(unique) - len(reports)
        )
    return summary
