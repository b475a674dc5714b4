"""The run's progress artifact: how far sending is, and the limits it runs under.

Shown on the flow run's *Artifacts* tab in the Prefect UI (key ``<campaign>-progress``): a
progress bar updated as each chunk finishes, and a description naming the server's concurrency
limit (its state is on the UI's *Concurrency* page), the run's rate limit, and the counts so far.
Updating it is best-effort: a Prefect API hiccup never fails a send.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mailcast.progress")


@dataclass
class Limits:
    """What bounds the run's sending (for the description)."""

    connections: int
    workers: int
    threads: int  # connections per chunk task
    concurrency_limit: str | None = None  # the Prefect global concurrency limit's name
    concurrency_size: int | None = None  # its size (None: inactive or none)
    rate_limit: float | None = None

    def describe(self) -> str:
        how = (
            f"{self.workers} worker processes × {self.threads} connections"
            if self.workers > 1
            else f"{self.connections} connections from the flow's process"
        )
        lines = [f"- connections: {self.connections} ({how})"]
        if self.concurrency_limit:
            size = (
                f"{self.concurrency_size} slots"
                if self.concurrency_size is not None
                else "inactive: holds nothing back"
            )
            lines.append(
                f"- concurrency limit `{self.concurrency_limit}` ({size}); this run holds up to "
                f"{self.connections}; live state: Prefect UI → Concurrency"
            )
        else:
            lines.append("- concurrency limit: none (dry run, or `server_limit: false`)")
        rate = (
            f"{self.rate_limit:g} msgs/s for the whole run, one slot every "
            f"{1 / self.rate_limit:.3g} s, shared by its worker processes"
            if self.rate_limit
            else "none"
        )
        lines.append(f"- rate limit: {rate}")
        return "\n".join(lines)


class RunProgress:
    """Creates the artifact when sending starts; ``advance`` after each chunk."""

    def __init__(self, campaign: str, total: int, limits: Limits) -> None:
        self.total = total
        self.limits = limits
        self.sent = 0
        self.failed = 0
        self.chunks = 0
        self._id: Any = None
        self.key = _key(campaign)
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import FlowRunContext

            if FlowRunContext.get() is None:  # not in a flow run: nothing to attach it to
                return
            self._id = create_progress_artifact(
                0.0 if total else 100.0, key=self.key, description=self.describe()
            )
        except Exception as exc:  # best effort
            log.debug("progress artifact not created: %s", exc)

    @property
    def percent(self) -> float:
        return (
            100.0 if not self.total else min(100.0, 100.0 * (self.sent + self.failed) / self.total)
        )

    def describe(self) -> str:
        return (
            f"**Sending** {self.total:,} rows: sent {self.sent:,}, failed {self.failed:,} "
            f"({self.chunks} chunks done)\n\n{self.limits.describe()}"
        )

    def advance(self, sent: int, failed: int) -> None:
        self.sent += sent
        self.failed += failed
        self.chunks += 1
        if self._id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._id, self.percent, description=self.describe())
        except Exception as exc:  # best effort
            log.debug("progress artifact not updated: %s", exc)


def _key(campaign: str) -> str:
    """An artifact key from the campaign's name: lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9]+", "-", campaign.lower()).strip("-") or "campaign"
    return f"{key}-progress"
