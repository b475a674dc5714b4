"""Lists: create, edit, delete, show, and export their members (CSV or JSON).

Like :mod:`mailcast.recipients.contacts`, every function takes a Ledger, an Engine or a URL.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection

from mailcast.errors import AudienceConflictError, AudienceError
from mailcast.ledger import audiences as sql
from mailcast.ledger.models import MembershipStatus, OptIn
from mailcast.recipients.contacts import _list, _membership_status, transaction

__all__ = [
    "ListInfo",
    "all_lists",
    "create_list",
    "delete_list",
    "edit_list",
    "export_members",
    "get_list",
    "members",
]

EXPORT_FORMATS = ("csv", "json")


@dataclass(frozen=True, slots=True)
class ListInfo:
    """A list and its members by status (``{"confirmed": 120, "unsubscribed": 3}``)."""

    id: int
    name: str
    description: str | None
    optin: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    members: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "optin": self.optin,
            "tags": self.tags,
            "members": self.members,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _info(conn: Connection, row: Mapping[Any, Any]) -> ListInfo:
    counts = sql.member_counts(conn, row["id"])
    return ListInfo(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        optin=row["optin"],
        tags=list(row["tags"] or []),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        members={s.value: counts.get(s.value, 0) for s in MembershipStatus},
    )


def _optin(optin: str) -> str:
    try:
        return OptIn(optin).value
    except ValueError:
        raise AudienceError(
            f"unknown opt-in {optin!r}", where="--optin", hint="single or double"
        ) from None


def _name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise AudienceError(
            "a list name is 1 to 200 characters", where="list", hint="e.g. `newsletter`"
        )
    return name


def create_list(
    target: Any,
    name: str,
    *,
    description: str | None = None,
    optin: str = OptIn.SINGLE,
    tags: Iterable[str] = (),
) -> ListInfo:
    """Create a list (AudienceConflictError if the name is taken)."""
    name, optin = _name(name), _optin(optin)
    with transaction(target) as conn:
        if sql.list_by_name(conn, name) is not None:
            raise AudienceConflictError(
                f"a list {name!r} exists already",
                where="list",
                hint="`mailcast lists edit` changes it",
            )
        sql.insert_list(conn, name=name, description=description, optin=optin, tags=list(tags))
        return _info(conn, _list(conn, name))


def get_list(target: Any, name: str) -> ListInfo:
    """The list with its member counts (AudienceNotFoundError if there is none)."""
    with transaction(target) as conn:
        return _info(conn, _list(conn, name))


def all_lists(target: Any) -> list[ListInfo]:
    with transaction(target) as conn:
        return [_info(conn, row) for row in sql.all_lists(conn)]


def edit_list(
    target: Any,
    name: str,
    *,
    new_name: str | None = None,
    description: str | None = None,
    optin: str | None = None,
    tags: Iterable[str] | None = None,
) -> ListInfo:
    """Change what is given: the name, the description, the opt-in kind, the tags."""
    values: dict[str, Any] = {}
    if new_name is not None:
        values["name"] = _name(new_name)
    if description is not None:
        values["description"] = description or None
    if optin is not None:
        values["optin"] = _optin(optin)
    if tags is not None:
        values["tags"] = list(tags)
    with transaction(target) as conn:
        row = _list(conn, name)
        renamed = values.get("name", name)
        if renamed != name and sql.list_by_name(conn, renamed) is not None:
            raise AudienceConflictError(f"a list {renamed!r} exists already", where="--name")
        if values:
            sql.update_list(conn, row["id"], **values)
        return _info(conn, _list(conn, values.get("name", name)))


def delete_list(target: Any, name: str) -> ListInfo:
    """Delete a list and its memberships (its consent records keep, without the list); returns
    what it was."""
    with transaction(target) as conn:
        row = _list(conn, name)
        info = _info(conn, row)
        sql.delete_list(conn, row["id"])
        return info


def members(target: Any, name: str, *, status: str | None = None) -> Iterator[dict[str, Any]]:
    """The list's members (by address), each a dict: address, name, status (on the list),
    contact_status, attributes, joined (ISO 8601), updated."""
    if status is not None:
        _membership_status(status)
    with transaction(target) as conn:
        lst = _list(conn, name)
        for row in sql.list_members(conn, lst["id"], status=status):
            yield {
                "address": row["address"],
                "name": row["name"],
                "status": row["status"],
                "contact_status": row["contact_status"],
                "attributes": dict(row["attributes"] or {}),
                "joined": row["created_at"].isoformat(),
                "updated": row["updated_at"].isoformat(),
            }


def export_members(
    target: Any,
    name: str,
    out: IO[str],
    *,
    fmt: str = "csv",
    status: str | None = None,
    neutralize_formulas: bool = True,
) -> int:
    """Write the list's members to ``out``: CSV (one column per attribute, after address,
    name, status, contact_status, joined, updated; text that a spreadsheet would read as a
    formula gets a leading ``'``) or JSON (an array of objects). Returns how many."""
    from mailcast.export import neutralize_formula

    if fmt not in EXPORT_FORMATS:
        raise AudienceError(f"unknown format {fmt!r}", where="--format", hint="csv or json")
    get_list(target, name)  # an unknown list fails before anything is written
    rows = members(target, name, status=status)
    n = 0
    if fmt == "json":
        out.write("[")
        for row in rows:
            out.write(("," if n else "") + "\n" + json.dumps(row, ensure_ascii=False))
            n += 1
        out.write("\n]\n" if n else "]\n")
        return n
    # Attribute columns: those of every member (a first pass over the list, by address).
    keys: dict[str, None] = {}
    for row in members(target, name, status=status):
        keys.update(dict.fromkeys(row["attributes"]))
    fixed = ["address", "name", "status", "contact_status", "joined", "updated"]
    columns = fixed + [k for k in keys if k not in fixed]
    writer = csv.writer(out)
    header = [neutralize_formula(c) if neutralize_formulas else c for c in columns]
    writer.writerow(header)
    for row in rows:
        values = [_cell(row[c] if c in fixed else row["attributes"].get(c)) for c in columns]
        if neutralize_formulas:
            values = [neutralize_formula(v) for v in values]
        writer.writerow(values)
        n += 1
    return n


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def export_to_path(target: Any, name: str, path: Path, **options: Any) -> int:
    get_list(target, name)  # no file for a list that does not exist
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        return export_members(target, name, fh, **options)
