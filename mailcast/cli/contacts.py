"""``mailcast contacts``: the people mailcast keeps (a thin layer over
``mailcast.recipients.contacts`` and ``mailcast.recipients.privacy``). No Prefect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mailcast.cli.common import (
    DbOpt,
    err,
    guarded,
    open_ledger,
    out,
    print_table,
    safe,
    settings_for,
)
from mailcast.errors import AudienceError

contacts_app = typer.Typer(
    help="Contacts: add, edit, delete, show, search; privacy export and erasure.",
    no_args_is_help=True,
)

AddressArg = Annotated[str, typer.Argument(help="The contact's email address", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts)")]
AttrOpt = Annotated[
    list[str] | None,
    typer.Option("--attr", help="An attribute KEY=VALUE (repeat for more)", show_default=False),
]
AttrsJsonOpt = Annotated[
    str | None,
    typer.Option(
        "--attributes-json", help='Attributes as a JSON object, e.g. \'{"city": "Paris"}\''
    ),
]
CLI = "cli"


def parse_attributes(pairs: list[str] | None, as_json: str | None) -> dict[str, Any] | None:
    """``--attr KEY=VALUE`` options and ``--attributes-json``, merged (None when neither)."""
    if not pairs and as_json is None:
        return None
    attributes: dict[str, Any] = {}
    if as_json is not None:
        try:
            value = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise AudienceError(
                f"not JSON: {exc.msg} at column {exc.colno}", where="--attributes-json"
            ) from None
        if not isinstance(value, dict):
            raise AudienceError("must be a JSON object", where="--attributes-json")
        attributes.update(value)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AudienceError(
                f"{pair!r} is not KEY=VALUE", where="--attr", hint="e.g. --attr city=Paris"
            )
        attributes[key.strip()] = value
    return attributes


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def print_contact(info: Any) -> None:
    out.print(f"[bold]{safe(info.address)}[/]" + (f"  {safe(info.name)}" if info.name else ""))
    out.print(f"  status: {safe(info.status)}")
    for key, value in sorted(info.attributes.items()):
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        out.print(f"  {safe(key)}: {safe(shown)}")
    for name, status in sorted(info.lists.items()):
        out.print(f"  list {safe(name)}: {safe(status)}")
    out.print(
        f"[dim]  created {info.created_at:%Y-%m-%d %H:%M}, updated {info.updated_at:%Y-%m-%d %H:%M}[/]"
    )


@contacts_app.command("add")
@guarded
def contacts_add(
    address: AddressArg,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    attr: AttrOpt = None,
    attributes_json: AttrsJsonOpt = None,
    lists: Annotated[
        list[str] | None, typer.Option("--list", help="Subscribe to this list (repeat for more)")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Membership status on --list (default: by the list's opt-in)"),
    ] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Add a contact (and subscribe it to lists, each recorded as consent from the CLI)."""
    from mailcast.recipients import contacts

    ledger = open_ledger(settings_for(db))
    info = contacts.add_contact(
        ledger,
        address,
        name=name,
        attributes=parse_attributes(attr, attributes_json),
        lists=lists or [],
        status=status,
        method=CLI,
        source=CLI,
    )
    if as_json:
        emit_json(info.as_json())
    else:
        out.print(f"added {safe(info.address)}")
        print_contact(info)


@contacts_app.command("edit")
@guarded
def contacts_edit(
    address: AddressArg,
    name: Annotated[str | None, typer.Option(help="New display name ('' clears it)")] = None,
    attr: AttrOpt = None,
    attributes_json: AttrsJsonOpt = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the attributes instead of merging")
    ] = False,
    unset: Annotated[
        list[str] | None, typer.Option("--unset", help="Remove this attribute (repeat)")
    ] = None,
    new_address: Annotated[str | None, typer.Option("--address", help="Change the address")] = None,
    block: Annotated[
        bool | None,
        typer.Option("--blocklist/--unblocklist", help="Blocklist (never planned) or enable"),
    ] = None,
    subscribe: Annotated[
        list[str] | None, typer.Option("--subscribe", help="Subscribe to this list (repeat)")
    ] = None,
    unsubscribe: Annotated[
        list[str] | None,
        typer.Option("--unsubscribe", help="Unsubscribe from this list (repeat)"),
    ] = None,
    remove_from: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-from",
            help="Take off this list (the membership is deleted; a later import may add it)",
        ),
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="With --subscribe: the membership status to set")
    ] = None,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Change a contact: name, attributes (merged, or --replace), address, blocklisting, lists.
    Each blocklisting and each (un)subscription is recorded as consent from the CLI."""
    from mailcast.recipients import contacts

    ledger = open_ledger(settings_for(db))
    attributes = parse_attributes(attr, attributes_json)
    if replace and attributes is None:
        attributes = {}
    info = contacts.edit_contact(
        ledger,
        address,
        name=name,
        attributes=attributes,
        mode="replace" if replace else "merge",
        unset=unset or [],
        new_address=new_address,
    )
    current = info.address
    if block is True:
        info = contacts.blocklist(ledger, current, method=CLI, source=CLI)
    elif block is False:
        info = contacts.unblocklist(ledger, current, method=CLI, source=CLI)
    for list_name in subscribe or []:
        contacts.add_member(ledger, current, list_name, status=status, method=CLI, source=CLI)
    for list_name in unsubscribe or []:
        contacts.unsubscribe(ledger, current, list_name, method=CLI, source=CLI)
    for list_name in remove_from or []:
        contacts.remove_member(ledger, current, list_name, method=CLI, source=CLI)
    if subscribe or unsubscribe or remove_from:
        info = contacts.get_contact(ledger, current)
    if as_json:
        emit_json(info.as_json())
    else:
        out.print(f"updated {safe(info.address)}")
        print_contact(info)


@contacts_app.command("delete")
@guarded
def contacts_delete(address: AddressArg, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """Delete a contact and its memberships. Recorded: a later import reports the address
    instead of adding it back (`mailcast contacts add` does)."""
    from mailcast.recipients import contacts

    ledger = open_ledger(settings_for(db))
    contacts.delete_contact(ledger, address, method=CLI, source=CLI)
    if as_json:
        emit_json({"deleted": address.strip()})
    else:
        out.print(f"deleted {safe(address.strip())}")


@contacts_app.command("show")
@guarded
def contacts_show(address: AddressArg, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """Show a contact: status, attributes, lists."""
    from mailcast.recipients import contacts

    info = contacts.get_contact(open_ledger(settings_for(db)), address)
    if as_json:
        emit_json(info.as_json())
    else:
        print_contact(info)


@contacts_app.command("search")
@guarded
def contacts_search(
    text: Annotated[
        str | None, typer.Argument(help="Part of the address or name (any case)")
    ] = None,
    list_name: Annotated[
        str | None, typer.Option("--list", help="Only members of this list")
    ] = None,
    member_status: Annotated[
        str | None, typer.Option(help="With --list: confirmed, unconfirmed or unsubscribed")
    ] = None,
    status: Annotated[str | None, typer.Option(help="enabled or blocklisted")] = None,
    attr: AttrOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all)")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many first")] = 0,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Find contacts by address or name, list, status or attribute values."""
    from rich.table import Table

    from mailcast.recipients import contacts

    attributes = parse_attributes(attr, None)
    found = contacts.search_contacts(
        open_ledger(settings_for(db)),
        text,
        list_name=list_name,
        member_status=member_status,
        status=status,
        attributes={k: str(v) for k, v in (attributes or {}).items()},
        limit=limit or None,
        offset=offset,
    )
    if as_json:
        emit_json([c.as_json() for c in found])
        return
    grid = Table("address", "name", "status", "lists", box=None, pad_edge=False)
    for c in found:
        lists = ", ".join(f"{n} ({s})" for n, s in sorted(c.lists.items()))
        grid.add_row(safe(c.address), safe(c.name or ""), safe(c.status), safe(lists))
    print_table(grid)
    more = " (--limit to see more)" if limit and len(found) == limit else ""
    out.print(f"[dim]{len(found)} contact(s){more}[/]")


@contacts_app.command("export")
@guarded
def contacts_export(
    address: AddressArg,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON here (default: standard output)")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Privacy export: everything held about a person (contact, memberships, consent records,
    deliveries, events, suppression) as JSON. Logged as a consent record."""
    from mailcast.recipients import privacy

    held = privacy.export_person(open_ledger(settings_for(db)), address, method=CLI, source=CLI)
    body = json.dumps(held, ensure_ascii=False, indent=2, default=str)
    if out_file is None:
        typer.echo(body)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(body + "\n", encoding="utf-8")
    err.print(
        f"wrote {safe(out_file)}: {len(held['deliveries'])} delivery(ies), "
        f"{len(held['events'])} event(s), {len(held['consent_records'])} consent record(s)"
    )


@contacts_app.command("erase")
@guarded
def contacts_erase(
    address: AddressArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    drop_suppression: Annotated[
        bool,
        typer.Option(
            "--drop-suppression",
            help="Also take the address off the suppression list (it may then be mailed again)",
        ),
    ] = False,
    as_json: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Erase a person: delete the contact and memberships, anonymize their deliveries and
    events (figures stay right), remember only a hash so that no import brings them back."""
    from mailcast.recipients import privacy

    if not yes and not typer.confirm(
        f"Erase {address.strip()!r}? This cannot be undone", default=False, err=True
    ):
        err.print("nothing erased")
        raise typer.Exit(1)
    done = privacy.erase_person(
        open_ledger(settings_for(db)),
        address,
        method=CLI,
        source=CLI,
        drop_suppression=drop_suppression,
    )
    if as_json:
        emit_json(done)
        return
    out.print(
        f"erased: contact {'deleted' if done['contact'] else 'none'}, "
        f"{done['memberships']} membership(s) deleted; {done['deliveries']} delivery(ies), "
        f"{done['events']} event(s) and {done['bounce_reports']} bounce report(s) now name "
        f"{safe(done['placeholder'])}; suppression: {done['suppression']}"
    )
