"""``mailcast lists``: lists, their import and export (a thin layer over
``mailcast.recipients.lists`` and ``mailcast.recipients.list_import``). No Prefect."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mailcast.cli.common import DbOpt, err, guarded, open_ledger, out, safe, settings_for
from mailcast.cli.contacts import JsonOpt, emit_json
from mailcast.errors import AudienceError

lists_app = typer.Typer(
    help="Lists: create, edit, delete, show; import contacts into one, export its members.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The list's name", show_default=False)]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeat for more)")]


def print_list(info: Any) -> None:
    counts = ", ".join(f"{k} {v:,}" for k, v in info.members.items())
    tags = f"  tags: {', '.join(safe(t) for t in info.tags)}" if info.tags else ""
    out.print(f"[bold]{safe(info.name)}[/]  opt-in {info.optin}  members: {counts}{tags}")
    if info.description:
        out.print(f"  {safe(info.description)}")


@lists_app.command("create")
@guarded
def lists_create(
    name: NameArg,
    description: Annotated[str | None, typer.Option(help="What the list is for")] = None,
    optin: Annotated[
        str, typer.Option(help="single or double (confirm through a link)")
    ] = "single",
    tag: TagOpt = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Create a list."""
    from mailcast.recipients import lists

    info = lists.create_list(
        open_ledger(settings_for(db)), name, description=description, optin=optin, tags=tag or []
    )
    if as_json:
        emit_json(info.as_json())
    else:
        out.print(f"created list {safe(info.name)}")
        print_list(info)


@lists_app.command("edit")
@guarded
def lists_edit(
    name: NameArg,
    new_name: Annotated[str | None, typer.Option("--name", help="Rename the list")] = None,
    description: Annotated[str | None, typer.Option(help="New description")] = None,
    optin: Annotated[str | None, typer.Option(help="single or double")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Replace the tags (repeat for more)")
    ] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Change a list's name, description, opt-in kind or tags."""
    from mailcast.recipients import lists

    info = lists.edit_list(
        open_ledger(settings_for(db)),
        name,
        new_name=new_name,
        description=description,
        optin=optin,
        tags=tag,
    )
    if as_json:
        emit_json(info.as_json())
    else:
        out.print(f"updated list {safe(info.name)}")
        print_list(info)


@lists_app.command("delete")
@guarded
def lists_delete(
    name: NameArg,
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete even when it has members, without asking")
    ] = False,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Delete a list and its memberships (the contacts stay; consent records stay)."""
    from mailcast.recipients import lists

    ledger = open_ledger(settings_for(db))
    members = sum(lists.get_list(ledger, name).members.values())
    if members and not yes:
        if not sys.stdin.isatty():
            raise AudienceError(
                f"the list {name!r} has {members:,} member(s)",
                where="list",
                hint="add --yes to delete it with its memberships",
            )
        if not typer.confirm(f"Delete {name!r} and its {members:,} membership(s)?", err=True):
            err.print("nothing deleted")
            raise typer.Exit(1)
    info = lists.delete_list(ledger, name)
    if as_json:
        emit_json({"deleted": info.name, "members": info.members})
    else:
        out.print(f"deleted list {safe(info.name)} ({members:,} membership(s))")


@lists_app.command("show")
@guarded
def lists_show(
    name: Annotated[str | None, typer.Argument(help="A list (default: every list)")] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Show one list or all of them, with their members by status."""
    from mailcast.recipients import lists

    ledger = open_ledger(settings_for(db))
    found = [lists.get_list(ledger, name)] if name else lists.all_lists(ledger)
    if as_json:
        emit_json(found[0].as_json() if name else [i.as_json() for i in found])
        return
    for info in found:
        print_list(info)
    if not found:
        out.print("no lists yet: `mailcast lists create NAME`")


@lists_app.command("import")
@guarded
def lists_import(
    name: NameArg,
    file: Annotated[
        Path | None, typer.Argument(help="A .csv, .tsv, .txt or .xlsx file", show_default=False)
    ] = None,
    sql_url: Annotated[
        str | None, typer.Option("--sql-url", help="Import from this database (SQLAlchemy URL)")
    ] = None,
    query: Annotated[str | None, typer.Option(help="With --sql-url: the SELECT")] = None,
    email_column: Annotated[str, typer.Option(help="The column holding the address")] = "email",
    name_column: Annotated[
        str | None, typer.Option(help="The column holding the display name")
    ] = None,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet (default: the first)")] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter (default: sniffed)")] = None,
    encoding: Annotated[str | None, typer.Option(help="File encoding (default: sniffed)")] = None,
    required: Annotated[
        list[str] | None, typer.Option("--required", help="A column that must be non-empty")
    ] = None,
    attributes: Annotated[
        str, typer.Option(help="merge into the stored attributes, or replace them")
    ] = "merge",
    status: Annotated[
        str | None,
        typer.Option(help="New members' status: confirmed or unconfirmed (default: by opt-in)"),
    ] = None,
    consent_text: Annotated[
        str | None, typer.Option(help="The consent text the people agreed to (recorded)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would happen; write nothing")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Write the rows not imported (row, address, reason) to this CSV"),
    ] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Import contacts into a list from a file or a SQL query: upsert on the address, the
    campaigns' validation, a per-row report; unsubscribed, blocklisted, deleted and erased
    people are reported, never (re)subscribed. Running it twice changes nothing."""
    from mailcast.recipients.list_import import import_list, summary_lines, write_report
    from mailcast.spec import RecipientSource, SqlSource

    if (file is None) == (sql_url is None):
        raise AudienceError(
            "give a file or --sql-url (and --query), not both",
            where="source",
            hint="e.g. `mailcast lists import news people.csv`",
        )
    if sql_url is not None and not query:
        raise AudienceError("--sql-url needs --query", where="--query", hint="a SELECT")
    source = RecipientSource(
        path=str(file.resolve()) if file is not None else None,
        sql=SqlSource(url=sql_url, query=query or "") if sql_url else None,
        email_column=email_column,
        name_column=name_column,
        sheet=sheet,
        delimiter=delimiter,
        encoding=encoding,
        required_columns=required or [],
    )
    ledger = open_ledger(settings_for(db))
    show_progress = err.is_terminal and not as_json
    if show_progress:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} rows"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        task = progress.add_task("reading", total=None)
        with progress:
            result = import_list(
                ledger,
                name,
                source,
                attributes=attributes,
                status=status,
                dry_run=dry_run,
                consent_text=consent_text,
                progress=lambda n: progress.update(task, completed=n),
            )
    else:
        result = import_list(
            ledger,
            name,
            source,
            attributes=attributes,
            status=status,
            dry_run=dry_run,
            consent_text=consent_text,
        )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        with report.open("w", encoding="utf-8", newline="") as fh:
            write_report(result, fh)
    if as_json:
        emit_json(result.as_json())
        return
    for line in summary_lines(result):
        out.print(safe(line))
    for row, address, reason in result.rows[:20]:
        out.print(f"  row {row}: {safe(address)}: {safe(reason)}")
    if len(result.rows) > 20:
        more = f"--report FILE lists all {len(result.rows):,}" if report is None else ""
        out.print(f"  … and {len(result.rows) - 20:,} more {more}".rstrip())
    if report is not None:
        out.print(f"[dim]report: {safe(report)} ({len(result.rows):,} row(s))[/]")
    if dry_run:
        out.print("[dim]dry run: nothing was written[/]")
    out.print(f"[dim]{result.seconds:.1f} s; ledger: {safe(ledger.where)}[/]")


@lists_app.command("export")
@guarded
def lists_export(
    name: NameArg,
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: standard output)")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="Only members with this status on the list")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Export a list's members with their attributes (CSV cells that a spreadsheet would read
    as formulas are escaped)."""
    from mailcast.recipients import lists

    ledger = open_ledger(settings_for(db))
    if out_file is None:
        lists.export_members(ledger, name, sys.stdout, fmt=fmt, status=status)
        return
    n = lists.export_to_path(ledger, name, out_file, fmt=fmt, status=status)
    err.print(f"wrote {n:,} member(s) to {safe(out_file)}")
