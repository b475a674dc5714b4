"""Finding the delivery a provider's webhook event is about: by the id the provider gave the
message (``deliveries.provider_message_id``), else by mailcast's own Message-ID
(``<run.delivery@domain>``, which names the delivery). One statement for each, whatever the
number of events; every statement works on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Table, select

from mailcast.ledger.models import Delivery

D = cast(Table, Delivery.__table__)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What an event says about its message: the provider's ids for it (most specific first),
    mailcast Message-IDs it carries as (run, delivery), and the recipient's address."""

    key: str
    provider_ids: tuple[str, ...] = ()
    mailcast_ids: tuple[tuple[str, int], ...] = ()
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class Found:
    delivery_id: int
    run_id: str
    address_key: str | None
    matched_by: str  # "provider-id" or "message-id"


def _bare(value: str) -> str:
    """An id without the angle brackets a Message-ID-like id may or may not carry."""
    return value.strip().removeprefix("<").removesuffix(">")


def _pick(candidates: list[Found], recipient: str | None) -> Found | None:
    """The one delivery of ``candidates`` (several when the provider gave one id to a batch of
    messages: then the recipient's)."""
    if len(candidates) == 1:
        return candidates[0]
    if recipient:
        mine = [c for c in candidates if c.address_key == recipient.strip().lower()]
        if len(mine) == 1:
            return mine[0]
    return None


def find(conn: Connection, lookups: Sequence[Lookup]) -> dict[str, Found]:
    """``Lookup.key -> Found`` for the lookups whose delivery exists."""
    wanted = {_bare(i) for lk in lookups for i in lk.provider_ids if i and _bare(i)}
    variants = sorted(wanted | {f"<{i}>" for i in wanted})
    by_provider_id: dict[str, list[Found]] = {}
    if variants:
        query = select(D.c.id, D.c.run_id, D.c.address_key, D.c.provider_message_id).where(
            D.c.provider_message_id.in_(variants)
        )
        for i, run, key, pmid in conn.execute(query).all():
            by_provider_id.setdefault(_bare(pmid), []).append(Found(i, run, key, "provider-id"))
    ids = sorted({d for lk in lookups for _run, d in lk.mailcast_ids})
    by_pk: dict[int, tuple[str, str | None]] = {}
    if ids:
        query2 = select(D.c.id, D.c.run_id, D.c.address_key).where(D.c.id.in_(ids))
        by_pk = {i: (run, key) for i, run, key in conn.execute(query2).all()}
    found: dict[str, Found] = {}
    for lk in lookups:
        for pid in lk.provider_ids:
            hit = _pick(by_provider_id.get(_bare(pid), []), lk.recipient)
            if hit is not None:
                found[lk.key] = hit
                break
        else:
            for run, d in lk.mailcast_ids:
                if d in by_pk and by_pk[d][0] == run:
                    found[lk.key] = Found(d, run, by_pk[d][1], "message-id")
                    break
    return found
