"""The suppression list: addresses mailcast never sends to again, in any campaign.

``validate`` skips them with the reason ``suppressed:<reason>``. Reasons: ``unsubscribed``
(the tracking service), ``hard_bounce`` and ``complaint`` (``process_bounces``, SMTP-time
rejections), ``manual`` (``mailcast suppress add|import``). Addresses are compared on their key:
the normalized address lower-cased, as ``validate`` computes it (``deliveries.address_key``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from mailcast.errors import SourceError, SpecError
from mailcast.ledger import suppressions
from mailcast.ledger.models import MANUAL, SUPPRESSION_REASONS
from mailcast.ledger.suppressions import Entry, suppress_rows, suppressed

__all__ = [
    "Entry",
    "ImportResult",
    "add",
    "address_key",
    "check_reason",
    "counts",
    "entries",
    "import_file",
    "remove",
    "suppressed",
    "suppressed_for",
]


def address_key(address: str) -> str:
    """The key of an address (email-validator's normalized form, lower-cased); ValueError with
    email-validator's explanation for an address that is not valid."""
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return str(result.normalized).lower()


def check_reason(reason: str) -> str:
    if reason not in SUPPRESSION_REASONS:
        raise SpecError(
            f"unknown reason {reason!r}",
            where="--reason",
            hint="one of: " + ", ".join(SUPPRESSION_REASONS),
        )
    return reason


def add(engine: Engine, addresses: Iterable[str], reason: str = MANUAL, source: str = "cli") -> int:
    """Suppress addresses (ValueError for an invalid one, before anything is written); returns
    how many were not suppressed yet."""
    check_reason(reason)
    keys = [address_key(a) for a in addresses]
    with engine.begin() as conn:
        return suppress_rows(
            conn, ({"address_key": k, "reason": reason, "source": source} for k in keys)
        )


def remove(engine: Engine, addresses: Iterable[str]) -> int:
    """Take addresses off the list; returns how many were on it."""
    keys = []
    for a in addresses:
        try:
            keys.append(address_key(a))
        except ValueError:
            keys.append(a.strip().lower())
    return suppressions.remove_keys(engine, keys)


def entries(engine: Engine, *, reason: str | None = None, limit: int | None = None) -> list[Entry]:
    """The list, newest first (only ``reason``'s entries, at most ``limit``, when given)."""
    return suppressions.entries(
        engine, reason=check_reason(reason) if reason else None, limit=limit
    )


def counts(engine: Engine) -> dict[str, int]:
    """``reason -> how many addresses``."""
    return suppressions.counts(engine)


def suppressed_for(database_url: str) -> dict[str, str]:
    """The suppression list of the ledger at ``database_url``; empty when that ledger does not
    exist yet (a SQLite file not created), so checking a campaign creates nothing."""
    from mailcast.ledger.store import Ledger

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database
        if not path or path == ":memory:" or not Path(path).exists():
            return {}
    from mailcast.ledger.schema import current_revision, get_engine

    try:
        if current_revision(get_engine(database_url)) is None:
            return {}  # an empty database: nothing suppressed yet, and nothing created here
    except Exception:
        pass  # unreachable or broken: Ledger() below says so, with the URL
    return suppressed(Ledger(database_url, create=False).engine)


# -- importing a file ---------------------------------------------------------------------------


@dataclass
class ImportResult:
    read: int = 0
    added: int = 0
    already: int = 0
    invalid: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, why)


def _rows(text: str, where: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, address, reason or None) from a list of addresses, one a line (``#`` comments),
    or a CSV with a header naming an ``email`` (or ``address``) column and optionally ``reason``."""
    lines = text.splitlines()
    first = next((x for x in lines if x.strip() and not x.lstrip().startswith("#")), "")
    try:
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t") if first else None
    except csv.Error:
        dialect = None
    header = [h.strip().lower() for h in next(csv.reader([first], dialect))] if dialect else []
    column = next((h for h in ("email", "address", "email_address") if h in header), None)
    if dialect is None or column is None:
        if dialect is not None and len(header) > 1:
            raise SourceError(
                f"a CSV needs an `email` column (columns: {', '.join(header)})", where=where
            )
        for n, line in enumerate(lines, start=1):
            item = line.strip()
            if item and not item.startswith("#"):
                yield n, item, None
        return
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    reader.fieldnames = [h.strip().lower() for h in reader.fieldnames or []]
    for row in reader:
        address = (row.get(column) or "").strip()
        if address:
            yield reader.line_num, address, (row.get("reason") or "").strip() or None


def import_file(
    engine: Engine, path: Path, *, reason: str = MANUAL, source: str | None = None
) -> ImportResult:
    """Suppress every address of a file (one a line, or a CSV with an ``email`` column and an
    optional ``reason`` column); invalid lines are reported, the rest imported in one
    transaction."""
    check_reason(reason)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SourceError("no such file", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read: {exc}", where=str(path)) from None
    result = ImportResult()
    rows = []
    for line, address, row_reason in _rows(text, str(path)):
        result.read += 1
        why = row_reason or reason
        if why not in SUPPRESSION_REASONS:
            result.invalid.append((line, address, f"unknown reason {why!r}"))
            continue
        try:
            key = address_key(address)
        except ValueError as exc:
            result.invalid.append((line, address, str(exc)))
            continue
        rows.append({"address_key": key, "reason": why, "source": source or f"import {path.name}"})
    with engine.begin() as conn:
        result.added = suppress_rows(conn, rows)
    result.already = len({r["address_key"] for r in rows}) - result.added
    return result
