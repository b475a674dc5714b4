"""Recording what recipients do: the unsubscribe rule (an ``unsubscribe`` event once per
delivery, and a suppression of its address; for a campaign sent to a list, leaving that list
instead). The statements themselves are in the ledger
(``mailcast.ledger.events``, ``mailcast.ledger.suppressions``); their names are re-exported
here for the modules that record through this one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
      leaves that list only (membership ``unsubscribed``, a consent record with method
      ``one_click`` and ``source``); their other lists are unchanged;
    * for a campaign sent to a segment (``recipients: {segment: NAME}``), the contact leaves
      the lists the segment names that they are on;
    * otherwise (a file or SQL campaign, or the list, the segment or the contact is gone), the
      address goes on the suppression list, as it always did.

    None when there is no such delivery."""
    info = delivery(engine, delivery_id)
    if info is None:
        return None
    left = _leave_lists(engine, info, source)
    if left:
        _event(engine, info, {"source": source, "lists": left})
        return Unsubscribed(info, ", ".join(left))
    unsubscribe(engine, delivery_id, source)
    return Unsubscribed(info)


def _leave_lists(engine: Engine, info: DeliveryInfo, source: str) -> list[str]:
    """The lists of a list or segment campaign's recipient that they leave (the lists they
    are on); [] when the campaign was not sent to a list or a segment, or nothing is left."""
    import contextlib

    from mailcast.errors import AudienceNotFoundError, MailcastError
    from mailcast.ledger import subscriptions
    from mailcast.ledger.models import ConsentMethod, MembershipStatus
    from mailcast.recipients import contacts

    audience = subscriptions.delivery_audience(engine, info.id)
    if audience is None or not info.address_key:
        return []
    recipients = audience[1]
    names: list[str] = []
    one_list = isinstance(recipients.get("list"), str)
    if one_list:
        names = [recipients["list"]]
    elif isinstance(recipients.get("segment"), str):
        with contextlib.suppress(MailcastError):
            from mailcast.recipients import segments

            saved = segments.show(engine, recipients["segment"])
            names = [
                name for name, _column in segments.list_names(segments.parse(saved.expression))
            ]
    if not names:
        return []
    try:
        contact = contacts.get_contact(engine, info.address_key)
    except MailcastError:
        return []
    left = []
    for name in dict.fromkeys(names):
        status = contact.lists.get(name)
        if status is None and not one_list:  # a segment's list they are not on
            continue
        if status != MembershipStatus.UNSUBSCRIBED:
            try:
                contacts.unsubscribe(
                    engine, info.address_key, name, method=ConsentMethod.ONE_CLICK, source=source
                )
            except AudienceNotFoundError:  # the list is gone
                continue
        left.append(name)  # already gone from it: the answer is the same
    return left


def _event(engine: Engine, info: DeliveryInfo, detail: dict[str, Any]) -> None:
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
