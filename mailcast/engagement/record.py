"""Recording what recipients do: the unsubscribe rule (an ``unsubscribe`` event once per
delivery, and a suppression of its address). The statements themselves are in the ledger
(``mailcast.ledger.events``, ``mailcast.ledger.suppressions``); their names are re-exported
here for the modules that record through this one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailcast.ledger.events import (
    DeliveryInfo,
    delivery,
    has_event,
    insert_ignoring_duplicates,
    link_target,
    record_event,
    record_events,
    register_links,
    url_hash,
)
from mailcast.ledger.models import UNSUBSCRIBE, UNSUBSCRIBED, utcnow
from mailcast.ledger.suppressions import suppress_rows

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = [
    "DeliveryInfo",
    "delivery",
    "insert_ignoring_duplicates",
    "link_target",
    "record_event",
    "record_events",
    "register_links",
    "suppress_rows",
    "unsubscribe",
    "url_hash",
]


def unsubscribe(engine: Engine, delivery_id: int, source: str) -> DeliveryInfo | None:
    """Unsubscribe the address of a delivery: an ``unsubscribe`` event (once per delivery) and
    a suppression. None when there is no such delivery."""
    info = delivery(engine, delivery_id)
    if info is None:
        return None
    with engine.begin() as conn:
        if not has_event(conn, delivery_id, UNSUBSCRIBE):
            record_events(
                conn,
                [
                    {
                        "delivery_id": info.id,
                        "run_id": info.run_id,
                        "kind": UNSUBSCRIBE,
                        "detail": {"source": source},
                        "occurred_at": utcnow(),
                    }
                ],
            )
        suppress_rows(
            conn,
            [
                {
                    "address_key": info.address_key or info.address.lower(),
                    "reason": UNSUBSCRIBED,
                    "source": source,
                    "delivery_id": info.id,
                }
            ],
        )
    return info
