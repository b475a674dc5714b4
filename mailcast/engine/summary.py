"""The end of a run: count every recipient by status and reason, and say where things are."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailcast.ledger.models import DeliveryStatus, RunStatus
from mailcast.ledger.store import Ledger


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

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def markdown(self) -> str:
        mode = "dry run (outbox)" if self.dry_run else "sent over SMTP"
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


def summarize_run(ledger: Ledger, run_id: str) -> RunSummary:
    run = ledger.run(run_id)
    return RunSummary(
        run_id=run.id,
        campaign=run.campaign,
        dry_run=run.dry_run,
        status=run.status,
        counts=ledger.counts(run.id),
        reasons=ledger.reasons(run.id),
        transport=run.transport,
        ledger=ledger.where,
        note=run.note if run.status == RunStatus.PAUSED else None,
    )


def finish_run(ledger: Ledger, run_id: str) -> RunSummary:
    """Close the run: completed when no row is left open, else paused (resume continues)."""
    from mailcast.ledger.models import utcnow

    counts = ledger.counts(run_id)
    still_open = counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING]
    status = RunStatus.COMPLETED if still_open == 0 else RunStatus.PAUSED
    ledger.set_run(run_id, status=status, finished_at=utcnow())
    return summarize_run(ledger, run_id)
