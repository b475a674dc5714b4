"""``mailcast suppress``: the suppression list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailcast.cli.common import DbOpt, guarded, open_ledger, out, print_table, safe, settings_for
from mailcast.errors import SpecError

suppress_app = typer.Typer(
    help="The suppression list: addresses never sent to.", no_args_is_help=True
)
ReasonOpt = Annotated[str, typer.Option(help="unsubscribed, hard_bounce, complaint or manual")]


@suppress_app.command("add")
@guarded
def suppress_add(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to suppress")],
    reason: ReasonOpt = "manual",
    db: DbOpt = None,
) -> None:
    """Suppress addresses in every campaign."""
    from mailcast.engagement import suppression

    ledger = open_ledger(settings_for(db))
    try:
        n = suppression.add(ledger.engine, addresses, reason, source="cli")
    except ValueError as exc:
        raise SpecError(str(exc), where="address", hint="give valid email addresses") from None
    out.print(f"suppressed {n} new address(es) ({len(addresses) - n} already on the list)")


@suppress_app.command("remove")
@guarded
def suppress_remove(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to take off the list")],
    db: DbOpt = None,
) -> None:
    """Take addresses off the suppression list (they can be sent to again)."""
    from mailcast.engagement import suppression

    ledger = open_ledger(settings_for(db))
    n = suppression.remove(ledger.engine, addresses)
    out.print(f"removed {n} address(es) from the suppression list")


@suppress_app.command("list")
@guarded
def suppress_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first; 0: all)")] = 100,
    db: DbOpt = None,
) -> None:
    """List suppressed addresses, newest first."""
    from mailcast.engagement import suppression

    ledger = open_ledger(settings_for(db))
    rows = suppression.entries(ledger.engine, reason=reason, limit=limit or None)
    grid = Table("address", "reason", "source", "since", box=None, pad_edge=False)
    for e in rows:
        grid.add_row(
            safe(e.address_key),
            safe(e.reason),
            safe(e.source or ""),
            e.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    print_table(grid)
    counts = suppression.counts(ledger.engine)
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    out.print(f"[dim]{total} suppressed ({detail or 'none'}); ledger: {safe(ledger.where)}[/]")


@suppress_app.command("import")
@guarded
def suppress_import(
    file: Annotated[Path, typer.Argument(help="One address a line, or a CSV with an email column")],
    reason: ReasonOpt = "manual",
    db: DbOpt = None,
) -> None:
    """Suppress every address of a file (a CSV `reason` column overrides --reason)."""
    from mailcast.engagement import suppression

    ledger = open_ledger(settings_for(db))
    result = suppression.import_file(ledger.engine, file, reason=reason)
    out.print(
        f"read {result.read}: suppressed {result.added} new, {result.already} already on the"
        f" list, {len(result.invalid)} invalid"
    )
    for line, address, why in result.invalid[:20]:
        out.print(f"  line {line}: {safe(address)}: {safe(why)}")
    if len(result.invalid) > 20:
        out.print(f"  … and {len(result.invalid) - 20} more")
