"""The end of a run: count every recipient by status and reason, and say where things are.

Reasons are grouped once what names one recipient is taken out (addresses, row numbers, attempt
counts): a run where 3,000 addresses bounced says "hard bounce: 550 5.1.1 <address> ... 3000",
not 3,000 lines; the addresses are in the report (``mailcast report``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailcast.ledger.models import DeliveryStatus, RunStatus
from mailcast.ledger.store import Ledger
from mailcast.transport.factory import channel_of, describe_record


@dataclass
class RunSummary:
    run_id: str
    campaign: str
    dry_run: bool
    status: str
    counts: dict[str, int]
    reasons: list[tuple[str, str, int]] = field(default_factory=list)
    transport: str | None = None
    ledger: str = ""
    note: str | None = None  # why a paused run stopped
    channel: str = "SMTP"  # how the messages left: SMTP, Amazon SES …

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def markdown(self) -> str:
        mode = "dry run (outbox)" if self.dry_run else f"sent over {self.channel}"
        lines = [
            f"# {self.campaign}: run `{self.run_id}`",
            "",
            f"**{self.status}**, {mode} via {self.transport}; ledger: `{self.ledger}`",
            "",
        ]
        if self.note:
            lines += [f"Stopped: {self.note}. `mailcast resume {self.run_id}` continues it.", ""]
        lines += [
            "| status | recipients |",
            "|---|---:|",
        ]
        lines += [f"| {s} | {n} |" for s, n in self.counts.items() if n]
        lines.append(f"| **total** | **{self.total}** |")
        if self.reasons:
            lines += ["", "| status | reason | rows |", "|---|---|---:|"]
            lines += [f"| {s} | {r.replace('|', '/')} | {n} |" for s, r, n in self.reasons]
        return "\n".join(lines)


_PER_ROW = (
    # an address, with its angle brackets when it has them
    (
        re.compile(r"<[^<>\s]*@[^<>\s]*>|[^\s<>()\[\]\"',;:]+@[\w\-\[\]:]+(?:\.[\w\-\[\]:]+)*"),
        "<address>",
    ),
    (re.compile(r"\bduplicate of row \d+"), "duplicate of an earlier row"),
    (re.compile(r" \(attempt \d+ of \d+\)"), ""),
    (re.compile(r"\b(The domain name) \S+ (does not|is not)"), r"\1 <domain> \2"),
)


def reason_group(reason: str) -> str:
    """A reason without what names one recipient (its address, row, attempt)."""
    for pattern, replacement in _PER_ROW:
        reason = pattern.sub(replacement, reason)
    return reason


def group_reasons(rows: Iterable[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """(status, reason, count) grouped by ``reason_group``, most frequent first: every reason."""
    counts: dict[tuple[str, str], int] = {}
    for status, reason, n in rows:
        key = (status, reason_group(reason))
        counts[key] = counts.get(key, 0) + n
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(status, reason, n) for (status, reason), n in ordered]


def summarize_run(ledger: Ledger, run_id: str) -> RunSummary:
    run = ledger.run(run_id)
    return RunSummary(
        run_id=run.id,
        campaign=run.campaign,
        dry_run=run.dry_run,
        status=run.status,
        counts=ledger.counts(run.id),
        reasons=group_reasons(ledger.reasons(run.id, limit=None)),
        transport=describe_record(run.transport),
        channel=channel_of(run.transport),
        ledger=ledger.where,
        note=run.note if run.status == RunStatus.PAUSED else None,
    )


def finish_run(ledger: Ledger, run_id: str) -> RunSummary:
    """Close the run: completed when no row is left open, else paused (resume continues). A
    real run of a campaign with a ``key`` records the addresses it sent it to
    (``contact_sends``)."""
    from mailcast.ledger.campaign_audience import record_sends
    from mailcast.ledger.models import utcnow

    record_sends(ledger.engine, run_id)

    counts = ledger.counts(run_id)
    still_open = counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING]
    status = RunStatus.COMPLETED if still_open == 0 else RunStatus.PAUSED
    ledger.set_run(run_id, status=status, finished_at=utcnow())
    if counts[DeliveryStatus.SENDING] == 0:  # nothing left in flight: its journals are done
        from mailcast.engine.journal import remove_run
        from mailcast.settings import Settings

        remove_run(Settings().journals(), run_id)
    return summarize_run(ledger, run_id)
