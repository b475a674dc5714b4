"""Importing contacts into a list from a CSV/TSV/XLSX file or a SQL query (``mailcast lists
import``).

The rows are read by the campaigns' own sources (:func:`mailcast.recipients.sources.open_recipients`)
and checked by the campaigns' own validation (:class:`~mailcast.recipients.validate.RowChecker`),
so an import accepts and rejects what a campaign would, with the same messages. Each valid row
upserts its contact on the address (attributes merged into the stored ones, or replacing them)
and, when new to the list, a membership with a consent record (method ``import``, the source
named). Rows not imported are reported, each with its row, address and reason:

- what a campaign rejects (an invalid address, a missing required field, a duplicate …);
- a blocklisted contact, a member who unsubscribed from the list, a deleted contact and an
  erased person (their address' hash): recorded decisions an import never undoes.

Run twice, an import changes nothing the second time (0 new, 0 changed, 0 joined). A dry run
does the same work in a transaction it rolls back: the same report, nothing written.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mailcast.errors import AudienceError
from mailcast.ledger.audience_import import Outcome, StagedRow, Target, import_rows
from mailcast.ledger.models import MembershipStatus, utcnow
from mailcast.recipients.contacts import _list, engine_of, initial_status
from mailcast.recipients.model import Recipient, gc_paused
from mailcast.recipients.validate import RowChecker, reason_category
from mailcast.spec import RecipientSource

__all__ = ["ImportReport", "import_list", "write_report"]

PROGRESS_EVERY = 10_000


@dataclass(slots=True)
class ImportReport:
    """What an import did (or, with ``dry_run``, would do)."""

    list_name: str
    source: str
    attributes: str  # merge or replace
    dry_run: bool
    read: int = 0  # data rows read
    new: int = 0  # contacts created
    changed: int = 0  # existing contacts updated (name or attributes)
    unchanged: int = 0  # existing contacts already as imported
    joined: int = 0  # new members of the list
    already: int = 0  # rows whose contact was a member already
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (row, address, reason)
    seconds: float = 0.0

    @property
    def imported(self) -> int:
        return self.read - len(self.rows)

    def skipped(self) -> dict[str, int]:
        """Rows not imported, by kind of reason (``invalid address``, ``duplicate``,
        ``unsubscribed from the list``, ``erased`` …)."""
        counts: dict[str, int] = {}
        for _, _, reason in self.rows:
            kind = reason_category(reason)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def as_json(self) -> dict[str, Any]:
        return {
            "list": self.list_name,
            "source": self.source,
            "attributes": self.attributes,
            "dry_run": self.dry_run,
            "read": self.read,
            "imported": self.imported,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "joined": self.joined,
            "already_members": self.already,
            "skipped": self.skipped(),
            "seconds": round(self.seconds, 3),
            "rows": [{"row": r, "address": a, "reason": why} for r, a, why in self.rows],
        }


def _staged(
    rows: Iterator[Recipient],
    check: RowChecker,
    email_column: str,
    name_column: str | None,
    attribute_names: Sequence[str],
    report: ImportReport,
    progress: Callable[[int], None] | None,
) -> Iterator[StagedRow]:
    """Validate and dedupe the rows as they pass (the campaigns' rules); the valid ones become
    staged contacts (their attribute values in ``attribute_names`` order, None when empty),
    the others go into the report."""
    first: dict[str, int] = {}
    reported = report.rows
    n = 0
    for r in rows:
        n += 1
        if progress is not None and n % PROGRESS_EVERY == 0:
            progress(n)
        check(r)
        key = r.key
        if r.reason is None and key is not None:
            seen = first.setdefault(key, r.row)
            if seen != r.row:
                r.reason = f"duplicate of row {seen}"
        if r.reason is not None or key is None:
            reported.append((r.row, str(r.address or ""), r.reason or "invalid address"))
            continue
        fields = r.fields
        name = (fields.get(name_column) or None) if name_column else None
        values = [fields.get(k) or None for k in attribute_names]
        yield (r.row, r.address, key, name, *values)
    report.read = n
    if progress is not None:
        progress(n)


def import_list(
    target: Any,
    list_name: str,
    source: RecipientSource,
    *,
    base_dir: str | Path = ".",
    attributes: str = "merge",
    status: str | None = None,
    dry_run: bool = False,
    consent_text: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import ``source``'s rows into the list ``list_name`` (see the module's text).

    ``attributes``: ``merge`` (the row's non-empty columns overwrite those keys, other stored
    attributes stay) or ``replace`` (the stored attributes become the row's non-empty
    columns). Every column but the email column (and ``source.name_column``, which sets the
    contact's name) is an attribute. ``status``: the new members' status (default: confirmed
    on a single opt-in list, unconfirmed on a double opt-in one). ``progress`` is called with
    the number of rows read so far. Problems with the source as a whole (no such file, no
    email column, a line that cannot be parsed) raise SourceError naming the file and line.
    """
    from mailcast.recipients.sources import open_recipients

    if attributes not in ("merge", "replace"):
        raise AudienceError(
            f"unknown attributes mode {attributes!r}",
            where="--attributes",
            hint="merge or replace",
        )
    if status is not None and status not in (
        MembershipStatus.CONFIRMED,
        MembershipStatus.UNCONFIRMED,
    ):
        raise AudienceError(
            f"an import adds members as confirmed or unconfirmed, not {status!r}",
            where="--status",
            hint="confirmed or unconfirmed",
        )
    engine = engine_of(target)
    started = time.perf_counter()
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            lst = _list(conn, list_name)
            with open_recipients(source, base_dir) as stream:
                check = RowChecker(stream.columns, required=source.required_columns)
                skip = (source.email_column, source.name_column)
                names = [c for c in stream.columns if c not in skip]
                report = ImportReport(
                    list_name=list_name,
                    source=stream.source,
                    attributes=attributes,
                    dry_run=dry_run,
                )
                where = target_for(lst, status, attributes, stream.source, consent_text, names)
                with gc_paused():
                    staged = _staged(
                        iter(stream),
                        check,
                        source.email_column,
                        source.name_column,
                        names,
                        report,
                        progress,
                    )
                    outcome = import_rows(conn, staged, where)
            _merge(report, outcome)
        except BaseException:
            trans.rollback()
            raise
        if dry_run:
            trans.rollback()
        else:
            trans.commit()
    report.seconds = time.perf_counter() - started
    return report


def target_for(
    lst: Any,
    status: str | None,
    attributes: str,
    source: str,
    consent_text: str | None,
    attribute_names: Sequence[str],
) -> Target:
    return Target(
        attribute_names=tuple(attribute_names),
        list_id=lst["id"],
        status=status or initial_status(lst["optin"]).value,
        replace=attributes == "replace",
        source=f"import {source}",
        consent_text=consent_text,
        now=utcnow(),
    )


def _merge(report: ImportReport, outcome: Outcome) -> None:
    report.new, report.changed, report.unchanged = outcome.new, outcome.changed, outcome.unchanged
    report.joined, report.already = outcome.joined, outcome.already
    report.rows.extend(outcome.reported)
    report.rows.sort(key=lambda r: r[0])


def write_report(report: ImportReport, out: IO[str]) -> int:
    """The rows not imported as CSV (row, address, reason), formula-escaped for spreadsheets;
    returns how many."""
    from mailcast.export import neutralize_formula

    writer = csv.writer(out)
    writer.writerow(["row", "address", "reason"])
    for row, address, reason in report.rows:
        writer.writerow([row, neutralize_formula(address), neutralize_formula(reason)])
    return len(report.rows)


def summary_lines(report: ImportReport) -> Sequence[str]:
    """The report in a few lines of plain text (what the CLI prints)."""
    verb = "would import" if report.dry_run else "imported"
    lines = [
        f"{verb} {report.imported:,} of {report.read:,} row(s) into {report.list_name!r} "
        f"(attributes {report.attributes}): {report.new:,} new, {report.changed:,} changed, "
        f"{report.unchanged:,} unchanged contact(s); {report.joined:,} joined the list, "
        f"{report.already:,} already on it",
    ]
    skipped = report.skipped()
    if skipped:
        detail = ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items()))
        lines.append(f"not imported: {len(report.rows):,} ({detail})")
    return lines
