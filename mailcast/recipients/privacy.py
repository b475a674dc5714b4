"""Privacy requests: everything held about a person (``mailcast contacts export ADDRESS``), and
their erasure (``mailcast contacts erase ADDRESS``).

Erasure deletes the contact and its memberships and anonymizes what the ledger keeps of the
person's messages: in their deliveries the address becomes a placeholder,
``erased-<12 hex of the hash>@invalid`` (in ``address``, ``address_key``, and in ``fields``,
whose other values are emptied; the address in a recorded reason or reply is replaced too), and
their events' and bounce reports' details lose the address and the user agent. Rows are
rewritten, never deleted: counts, statuses and campaign figures stay right. The SHA-256 of the
address key goes into ``erased_contacts``, so that a later import reports the person instead of
adding them back. Both requests are logged as consent records (an erasure's without the address:
its contact is gone). The suppression list keeps the address unless asked
(``drop_suppression``): it is what stops any campaign from mailing the person again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mailcast.errors import AudienceError
from mailcast.ledger import audiences as sql
from mailcast.ledger.models import ConsentAction, ConsentMethod, utcnow
from mailcast.recipients.contacts import _method, normalize_address, transaction

__all__ = ["erase_person", "export_person", "placeholder_for"]

# Keys of an event's detail that identify the person's device (dropped on erasure).
_DEVICE_KEYS = ("user_agent", "ip", "remote_addr", "client_ip")


def _key(address: str) -> str:
    try:
        return normalize_address(address)[1]
    except AudienceError:  # look up what is stored, even an address validation refuses
        return (address or "").strip().lower()


def placeholder_for(address_key: str) -> str:
    """The fixed stand-in for an erased address: ``erased-<12 hex>@invalid``."""
    return f"erased-{sql.address_hash(address_key)[:12]}@invalid"


def _plain(value: Any) -> Any:
    """JSON-ready: datetimes as ISO 8601, mappings and sequences walked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def export_person(
    target: Any, address: str, *, method: str = ConsentMethod.API, source: str | None = "api"
) -> dict[str, Any]:
    """Everything held about ``address``: the contact, memberships, consent records, deliveries
    (with their fields), events, bounce reports, the suppression entry, the campaign keys
    received, and whether the address was erased. Logged as an ``export`` consent record."""
    key = _key(address)
    method = _method(method)
    with transaction(target) as conn:
        contact = sql.contact_by_key(conn, key)
        deliveries = sql.deliveries_of(conn, key)
        ids = [d["id"] for d in deliveries]
        held: dict[str, Any] = {
            "address": key,
            "exported_at": utcnow().isoformat(),
            "contact": None,
            "memberships": [],
            "consent_records": [],
            "deliveries": [dict(d) for d in deliveries],
            "events": [dict(e) for e in sql.events_of(conn, ids)],
            "bounce_reports": [dict(r) for r in sql.inbound_of(conn, ids)],
            "suppression": None,
            "campaign_keys": [dict(r) for r in sql.contact_sends_of(conn, key)],
            "erased": bool(sql.gone_since(conn, [sql.address_hash(key)])),
        }
        suppression = sql.suppression_of(conn, key)
        if suppression is not None:
            held["suppression"] = dict(suppression)
        if contact is not None:
            held["contact"] = {
                k: contact[k]
                for k in ("address", "name", "attributes", "status", "created_at", "updated_at")
            }
            held["memberships"] = [dict(m) for m in sql.memberships_of(conn, contact["id"])]
            held["consent_records"] = [
                {k: v for k, v in dict(r).items() if k != "id"}
                for r in sql.consent_records_of(conn, contact["id"])
            ]
        sql.record_consent(
            conn,
            contact_id=contact["id"] if contact is not None else None,
            list_id=None,
            action=ConsentAction.EXPORT,
            method=method,
            source=source,
        )
    return _plain(held)  # type: ignore[no-any-return]


def _scrub(value: Any, pattern: re.Pattern[str], placeholder: str) -> Any:
    if isinstance(value, str):
        return pattern.sub(placeholder, value)
    if isinstance(value, Mapping):
        return {
            k: _scrub(v, pattern, placeholder) for k, v in value.items() if k not in _DEVICE_KEYS
        }
    if isinstance(value, list):
        return [_scrub(v, pattern, placeholder) for v in value]
    return value


def erase_person(
    target: Any,
    address: str,
    *,
    method: str = ConsentMethod.API,
    source: str | None = "api",
    drop_suppression: bool = False,
) -> dict[str, Any]:
    """Erase ``address`` (see the module's text). Returns what was done: ``placeholder``,
    ``contact`` (whether there was one), ``memberships``, ``deliveries``, ``events``,
    ``bounce_reports`` (rows rewritten), ``suppression`` (kept, dropped or none)."""
    key = _key(address)
    method = _method(method)
    placeholder = placeholder_for(key)
    pattern = re.compile(re.escape(key), re.IGNORECASE)
    done: dict[str, Any] = {"placeholder": placeholder}
    with transaction(target) as conn:
        contact = sql.contact_by_key(conn, key)
        done["contact"] = contact is not None
        done["memberships"] = 0
        if contact is not None:
            done["memberships"] = len(sql.memberships_of(conn, contact["id"]))
            sql.delete_contact(conn, contact["id"])
        deliveries = sql.deliveries_of(conn, key)
        rewritten = []
        for d in deliveries:
            fields = {
                k: placeholder if isinstance(v, str) and pattern.fullmatch(v.strip()) else ""
                for k, v in dict(d["fields"] or {}).items()
            }
            rewritten.append(
                {
                    "id": d["id"],
                    "address": placeholder,
                    "address_key": placeholder,
                    "fields": fields,
                    "reason": _scrub(d["reason"], pattern, placeholder),
                    "smtp_reply": _scrub(d["smtp_reply"], pattern, placeholder),
                }
            )
        sql.anonymize_deliveries(conn, rewritten)
        ids = [d["id"] for d in deliveries]
        events = sql.events_of(conn, ids)
        sql.rewrite_details(
            conn, "events", [(e["id"], _scrub(e["detail"], pattern, placeholder)) for e in events]
        )
        reports = sql.inbound_of(conn, ids)
        sql.rewrite_details(
            conn,
            "inbound_messages",
            [(r["id"], _scrub(r["detail"], pattern, placeholder)) for r in reports],
        )
        sql.rename_contact_sends(conn, key, placeholder)
        done.update(deliveries=len(deliveries), events=len(events), bounce_reports=len(reports))
        suppression = sql.suppression_of(conn, key)
        if suppression is None:
            done["suppression"] = "none"
        elif drop_suppression:
            sql.drop_suppression(conn, key)
            done["suppression"] = "dropped"
        else:
            done["suppression"] = "kept"
        sql.mark_gone(conn, [sql.address_hash(key)])
        sql.record_consent(
            conn,
            contact_id=None,
            list_id=None,
            action=ConsentAction.ERASE,
            method=method,
            source=source,
        )
    return done
