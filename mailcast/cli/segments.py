"""``mailcast segments``: saved filters over contacts (create, edit, delete, show, count, list).

A thin layer over ``mailcast.recipients.segments``; ``--json`` prints one JSON document for
scripts. No Prefect import."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from mailcast.cli.common import DbOpt, guarded, open_ledger, out, print_table, safe, settings_for

segments_app = typer.Typer(
    help="Segments: saved filters over contacts (attributes, lists, engagement).",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")]
NameArg = Annotated[str, typer.Argument(help="The segment's name", show_default=False)]


def _engine(db: str | None) -> Any:
    return open_ledger(settings_for(db)).engine


def _json(data: Any) -> None:
    # ensure_ascii: no control character or bidi override reaches the terminal
    typer.echo(json.dumps(data, ensure_ascii=True, indent=2))


def _show(info: Any) -> None:
    out.print(f"[bold]{safe(info.name)}[/]")
    out.print(f"  expression:  {safe(info.expression)}")
    if info.description:
        out.print(f"  description: {safe(info.description)}")
    out.print(
        f"  created {info.created_at:%Y-%m-%d %H:%M}, changed {info.updated_at:%Y-%m-%d %H:%M}"
    )


@segments_app.command("create")
@guarded
def create(
    name: NameArg,
    expression: Annotated[str, typer.Argument(help="The filter, e.g. 'city = \"Paris\"'")],
    description: Annotated[str | None, typer.Option(help="What the segment is for")] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Save a segment (the expression is checked: a mistake is reported with its column)."""
    from mailcast.recipients import segments

    info = segments.create(_engine(db), name, expression, description)
    if as_json:
        _json(info.as_json())
    else:
        out.print(f"created segment {safe(info.name)}")


@segments_app.command("edit")
@guarded
def edit(
    name: NameArg,
    expression: Annotated[str | None, typer.Option(help="A new filter")] = None,
    description: Annotated[str | None, typer.Option(help="A new description")] = None,
    rename: Annotated[str | None, typer.Option(help="A new name")] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Change a segment's filter, description or name."""
    from mailcast.recipients import segments

    info = segments.edit(
        _engine(db), name, expression=expression, description=description, rename=rename
    )
    if as_json:
        _json(info.as_json())
    else:
        _show(info)


@segments_app.command("delete")
@guarded
def delete(name: NameArg, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """Delete a segment (its contacts are untouched)."""
    from mailcast.recipients import segments

    segments.delete(_engine(db), name)
    if as_json:
        _json({"deleted": name})
    else:
        out.print(f"deleted segment {safe(name)}")


@segments_app.command("show")
@guarded
def show(name: NameArg, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """Show a segment's filter and description."""
    from mailcast.recipients import segments

    info = segments.show(_engine(db), name)
    if as_json:
        _json(info.as_json())
    else:
        _show(info)


@segments_app.command("count")
@guarded
def count(
    name: Annotated[str | None, typer.Argument(help="A saved segment", show_default=False)] = None,
    expression: Annotated[
        str | None, typer.Option("--expr", help="Count an expression instead of a saved segment")
    ] = None,
    sample: Annotated[int, typer.Option(help="Also list the first N addresses")] = 0,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Count the contacts of a segment (or of --expr): all, and those a campaign may reach."""
    from mailcast.errors import SegmentError
    from mailcast.recipients import segments

    if (name is None) == (expression is None):
        raise SegmentError(
            "give a segment's name or --expr EXPRESSION (one of them)", where="segments count"
        )
    counted = segments.count(_engine(db), name, expression=expression, sample=max(sample, 0))
    if as_json:
        _json(counted.as_json())
        return
    label = safe(name) if name else "the expression"
    blocked = counted.contacts - counted.enabled
    out.print(
        f"{label}: {counted.contacts:,} contacts"
        + (f" ({blocked:,} blocklisted: never sent to)" if blocked else "")
        + f" [dim]({counted.seconds * 1000:.0f} ms)[/]"
    )
    for address in counted.sample:
        out.print(f"  {safe(address)}")


@segments_app.command("list")
@guarded
def list_(as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """List the saved segments."""
    from mailcast.recipients import segments

    found = segments.all_segments(_engine(db))
    if as_json:
        _json([s.as_json() for s in found])
        return
    grid = Table("segment", "expression", "description", box=None, pad_edge=False)
    for s in found:
        grid.add_row(safe(s.name), safe(s.expression), safe(s.description or ""))
    print_table(grid)
    out.print(f"[dim]{len(found)} segment(s)[/]")
