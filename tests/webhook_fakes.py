"""What the webhook tests share: a run whose messages an API provider accepted (provider ids on
the deliveries), ``mailcast serve``'s app on loopback with webhook secrets configured, and what
the ledger holds afterwards."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from mailcast.engagement.suppression import suppressed_for
from mailcast.ledger.models import SENT
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from tests.campaigns import people, write_campaign
from tests.ledger_rows import claim_pending

TRACKING_SECRET = "webhook-tests-tracking-secret-0123"
DOMAIN = "mailcast.example"


@dataclass
class Msg:
    address: str
    delivery_id: int
    message_id: str  # mailcast's Message-ID header
    provider_id: str | None  # what the provider returned at send time


class SentRun:
    """A run whose messages were all accepted by a provider: ``names`` become addresses of
    their own (the Postgres ledger is shared), ``provider_ids`` the ids stored on them (None:
    the provider gave none, only mailcast's Message-ID identifies the message)."""

    def __init__(self, url: str, provider_ids: dict[str, str | None]) -> None:
        self.url = url
        tag = uuid.uuid4().hex[:6]
        names = list(provider_ids)
        addresses = [f"{n}-{tag}@example.net" for n in names]
        ledger = Ledger(url)
        self.run_id = ledger.create_run(f"hooks-{tag}", {}, dry_run=False, transport=None)
        ledger.plan(
            self.run_id,
            [Recipient(i + 2, a, {"email": a}, None, a) for i, a in enumerate(addresses)],
        )
        ids = {c.address: c.id for c in claim_pending(ledger, self.run_id, 1000)}
        self.m: dict[str, Msg] = {}
        for name, address in zip(names, addresses, strict=True):
            i = ids[address]
            self.m[name] = Msg(address, i, f"<{self.run_id}.{i}@{DOMAIN}>", provider_ids[name])
        ledger.record(  # as the engine records a message an API provider accepted
            [
                Outcome(m.delivery_id, SENT, message_id=m.message_id,
                        provider_message_id=m.provider_id)
                for m in self.m.values()
            ]
        )  # fmt: skip

    def events(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """name → [(kind, detail)] of the run's events."""
        by_id = {m.delivery_id: n for n, m in self.m.items()}
        out: dict[str, list[tuple[str, dict[str, Any]]]] = {n: [] for n in self.m}
        for r in rows(
            self.url, "SELECT * FROM events WHERE run_id = :r ORDER BY id", r=self.run_id
        ):
            detail = r["detail"] if isinstance(r["detail"], dict) else json.loads(r["detail"])
            out[by_id[r["delivery_id"]]].append((r["kind"], detail))
        return out

    def inbound(self) -> dict[str, list[str]]:
        """name → outcomes recorded in inbound_messages for its delivery."""
        by_id = {m.delivery_id: n for n, m in self.m.items()}
        out: dict[str, list[str]] = {n: [] for n in self.m}
        ids = ",".join(str(i) for i in by_id)
        for r in rows(self.url, f"SELECT * FROM inbound_messages WHERE delivery_id IN ({ids})"):
            out[by_id[r["delivery_id"]]].append(r["outcome"])
        return out

    def suppressed(self) -> dict[str, str]:
        """name → reason, as the next campaign's validate sees the suppression list."""
        listed = suppressed_for(self.url)
        return {n: listed[m.address] for n, m in self.m.items() if m.address in listed}

    def next_campaign(self, folder: Path) -> str:
        """``mailcast validate`` of a next campaign to every address of the run: its output (the
        rows it rejects, with their reason)."""
        from typer.testing import CliRunner

        from mailcast.cli import app

        rows = [
            dict(p, email=m.address)
            for p, m in zip(people(len(self.m)), self.m.values(), strict=True)
        ]
        spec = write_campaign(folder, rows, attachments=False, name=f"next-{self.run_id[:8]}")
        result = CliRunner().invoke(
            app, ["validate", str(spec), "--show", "50"], env={"MAILCAST_DATABASE_URL": self.url}
        )
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    def counts(self) -> tuple[int, int]:
        """(events, inbound rows) of this run."""
        return sum(len(v) for v in self.events().values()), sum(
            len(v) for v in self.inbound().values()
        )


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with Ledger(url).engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def post(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        url, content=body, headers={"Content-Type": "application/json", **headers}, timeout=20
    )
