"""Drop repeated recipients: the first row with an address is sent, later ones are skipped."""

from __future__ import annotations

from mailcast.recipients import RecipientTable
from tasks._prefect import task


def dedupe_recipients(table: RecipientTable) -> RecipientTable:
    """Among rows still to be sent, keep the first of each ``key`` (the lower-cased normalized
    address set by validate; the lower-cased address if validate did not run). Later rows get
    ``reason = "duplicate of row N"``. Rejected rows are untouched. Mutates and returns ``table``.
    """
    first: dict[str, int] = {}
    for r in table.rows:
        if r.reason is not None:
            continue
        key = r.key if r.key is not None else r.address.strip().lower()
        seen = first.get(key)
        if seen is None:
            first[key] = r.row
        else:
            r.reason = f"duplicate of row {seen}"
    return table


@task(name="dedupe", retries=0, persist_result=False)
def dedupe_task(table: RecipientTable) -> RecipientTable:
    return dedupe_recipients(table)
