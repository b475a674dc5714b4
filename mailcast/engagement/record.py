"""Recording what recipients do: the unsubscribe rule (an ``unsubscribe`` event once per
delivery, and a suppression of its address; for a campaign sent to a list, leaving that list
instead). The statements themselves are in the ledger
(``mailcast.ledger.events``, ``mailcast.ledger.suppressions``); their names are re-exported
here for the modules that record through this one."""

from __future__ import annotations

from dataclasses import dataclass
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
    "unsubscribe_from",
    "url_hash",
]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """What an unsubscribe did: ``list_name`` is the list left (a list campaign); None when the
    address went on the suppression list (every campaign skips it)."""

    info: DeliveryInfo
    list_name: str | None = None


def unsubscribe_from(engine: Engine, delivery_id: int, source: str) -> Unsubscribed | None:
    """Unsubscribe the recipient of a delivery (a one-click POST, the unsubscribe page, a
    mailto unsubscribe): an ``unsubscribe`` event (once per delivery), then

    * for a campaign sent to a list (the run's spec ``recipients: {list: NAME}``), the contact
      leaves that list only: membership ``unsubscribed`` and a consent record (method
      ``one_click``, source ``source``); their other lists are unchanged;
    * otherwise (a file or SQL campaign, or the list or the contact is gone), the address goes
      on the suppression list, as it always did.

    None when there is no such delivery."""
    from mailcast.ledger import subscriptions
    from mailcast.ledger.models import ConsentMethod

    info = delivery(engine, delivery_id)
    if info is None:
        return None
    audience = subscriptions.delivery_audience(engine, delivery_id)
    list_name = audience[1].get("list") if audience is not None else None
    if isinstance(list_name, str) and list_name and info.address_key:
        lst = subscriptions.find_list(engine, list_name)
        contact = subscriptions.contact_by_key(engine, info.address_key)
        if lst is not None and contact is not None:
            change = subscriptions.unsubscribe(
                engine, contact.id, lst.id, method=ConsentMethod.ONE_CLICK, source=source
            )
            if change is not None:
                _event(engine, info, {"source": source, "list": lst.name})
                return Unsubscribed(info, lst.name)
    unsubscribe(engine, delivery_id, source)
    return Unsubscribed(info)


def _event(engine: Engine, info: DeliveryInfo, detail: dict[str, str]) -> None:
    with engine.begin() as conn:
        if not has_event(conn, info.id, UNSUBSCRIBE):
            record_events(
                conn,
                [
                    {
                        "delivery_id": info.id,
                        "run_id": info.run_id,
                        "kind": UNSUBSCRIBE,
                        "detail": detail,
                        "occurred_at": utcnow(),
                    }
                ],
            )


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
