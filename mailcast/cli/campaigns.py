"""Campaign commands: validate, preview, send, resume, retry, runs, report."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from mailcast.cli.common import (
    DbOpt,
    SpecArg,
    app,
    guarded,
    open_ledger,
    out,
    print_table,
    safe,
    settings_for,
    tracking_line,
)
from mailcast.cli.flowrun import check_transport, run_flow, transport_params
from mailcast.errors import SpecError
from mailcast.settings import Settings

SmtpOpt = Annotated[
    str | None, typer.Option(help="smtp://user@host:port?security=... (same as --transport)")
]
SmtpBlockOpt = Annotated[str | None, typer.Option(help="Name of a saved SMTP block")]
TransportOpt = Annotated[
    str | None,
    typer.Option(
        help="The transport by URL, no secret in it: smtp://…, ses://REGION, sendgrid://…"
    ),
]
TransportBlockOpt = Annotated[
    str | None,
    typer.Option(help="A saved transport block: NAME or KIND/NAME (smtp/…, ses/…, …)"),
]


def prepare(spec_path: Path, db: str | None = None) -> tuple[Any, Any, Any]:
    """Load the spec, read and check recipients and templates: no Prefect, no network. Addresses
    on the ledger's suppression list are skipped (``suppressed:<reason>``)."""
    from mailcast.compose.mime import MessageBuilder
    from mailcast.compose.templates import CampaignTemplates
    from mailcast.engagement.suppression import suppressed_for
    from mailcast.recipients.prepare import checked_recipients
    from mailcast.spec import load_spec

    spec = load_spec(spec_path)
    url = settings_for(db).ledger_url()
    suppressed = suppressed_for(url)
    with checked_recipients(spec, suppressed=suppressed, database_url=url) as checked:
        templates = CampaignTemplates(spec, checked.columns)
        MessageBuilder(spec)  # sender, attachments, sizes
        if spec.dkim is not None and spec.dkim.key_file:  # a key block is read when sending
            from mailcast.compose.dkim import read_key

            read_key(spec)
        table = checked.table()
    return spec, table, templates


@app.command()
@guarded
def validate(
    spec: SpecArg,
    show: Annotated[int, typer.Option(help="How many rejected rows to list")] = 50,
    smtp: SmtpOpt = None,
    smtp_block: SmtpBlockOpt = None,
    transport: TransportOpt = None,
    transport_block: TransportBlockOpt = None,
    dns: Annotated[
        bool,
        typer.Option(
            "--dns",
            help="Also check the domains' SPF, DKIM and DMARC records (exit 1 on a problem)",
        ),
    ] = False,
    sending_ip: Annotated[
        list[str] | None,
        typer.Option(help="--dns: a public address mail leaves from (a local relay's); repeatable"),
    ] = None,
) -> None:
    """Check the spec, templates and every recipient row; list the rejected rows. With a
    transport (the options or the settings), check what can be checked without sending: the
    URL's form, that the block exists, the region, credentials present. With --dns, the
    sender's and the bounce domain's SPF, DKIM and DMARC records too."""
    started = time.monotonic()
    campaign, table, templates = prepare(spec)
    chosen = {"smtp": smtp, "smtp_block": smtp_block, "transport": transport}
    chosen["transport_block"] = transport_block
    settings = settings_for(None)
    configured = (settings.transport_url, settings.transport_block, settings.smtp_url)
    if any(chosen.values()) or any(configured) or settings.smtp_block:
        validate_transport(transport_params(settings, **chosen))
    rejected = table.rejected
    out.print(
        f"[bold]{safe(campaign.name)}[/]: {len(table.rows)} rows from {safe(table.source)} "
        f"({len(table.columns)} columns); templates ok: {safe(', '.join(templates.names))}"
    )
    out.print(f"  to send: [green]{len(table.valid)}[/]   rejected: [yellow]{len(rejected)}[/]")
    out.print(f"  {tracking_line(campaign)}")
    out.print(f"  {dkim_line(campaign)}")
    if rejected:
        grid = Table("row", "address", "reason", box=None, pad_edge=False)
        for r in rejected[:show]:
            grid.add_row(str(r.row), safe(r.address), safe(r.reason or ""))
        print_table(grid)
        if len(rejected) > show:
            out.print(f"  … and {len(rejected) - show} more (--show N)")
    out.print(f"[dim]checked in {time.monotonic() - started:.1f}s[/]")
    if dns:
        dns_checks(campaign, transport_params(settings, **chosen), sending_ip or [])


def dns_checks(campaign: Any, params: dict[str, Any], ips: list[str]) -> None:
    """Print one line per SPF, DKIM and DMARC finding; exit 1 when any is a problem. The
    sending host: the transport URL's, or a provider block's kind (``ses/NAME`` → ses://)."""
    from mailcast.dnscheck import Resolver, check_campaign

    url = params["transport_url"]
    kind, slash, _name = (params["transport_block"] or "").partition("/")
    if url is None and slash:
        url = f"{kind}://"
    resolver = Resolver.from_settings()
    try:
        findings = check_campaign(campaign, resolver, url=url, ips=ips)
    except ValueError as exc:  # an --sending-ip that is no address
        raise SpecError(str(exc), where="--sending-ip") from None
    out.print(f"DNS ({safe(resolver.where)}):")
    for f in findings:
        mark = "[green]ok[/]     " if f.ok else "[red]problem[/]"
        out.print(f"  {mark} {f.check:<5} {safe(f.text)}")
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


def validate_transport(params: dict[str, Any]) -> None:
    """``validate``'s check of the transport (none given: nothing to check)."""
    from mailcast.transport.factory import Target, check_target

    if not (params["transport_url"] or params["transport_block"]):
        return
    target = Target(url=params["transport_url"], block=params["transport_block"])
    out.print(f"  transport: {safe(check_target(target))} (checked without sending)")


def dkim_line(spec: Any) -> str:
    """Whether the campaign is DKIM-signed, and how."""
    if spec.dkim is None:
        return "DKIM: not signed (no `dkim` section)"
    from mailcast.compose.dkim import describe

    return safe(describe(spec))


@app.command()
@guarded
def preview(
    spec: SpecArg,
    limit: Annotated[int, typer.Option(help="How many messages")] = 3,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for .eml and .html files")] = Path(
        "preview"
    ),
) -> None:
    """Write the first N personalized messages as .eml and .html files: the messages a send
    would transmit (tracking included), from the same Composer."""
    from mailcast.compose.composer import Composer

    campaign, table, _templates = prepare(spec)
    composer = Composer.for_preview(campaign, table.columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(table.valid[:limit], start=1):
        composed = composer.compose(i, r.row, r.address, r.fields)
        rendered = composed.rendered
        stem = out_dir / f"{i:03d}-row{r.row}"
        stem.with_suffix(".eml").write_bytes(composed.data)
        if rendered.html is not None:
            stem.with_suffix(".html").write_text(rendered.html, encoding="utf-8")
        out.print(f"{i:3d}. row {r.row} → {safe(r.address)}: {safe(rendered.subject)}")
    out.print(f"wrote {min(limit, len(table.valid))} previews to {safe(out_dir)}/")


@app.command()
@guarded
def send(
    spec: SpecArg,
    really_send: Annotated[
        bool, typer.Option("--send", help="Really send (default: dry run to the outbox)")
    ] = False,
    smtp: SmtpOpt = None,
    smtp_block: SmtpBlockOpt = None,
    transport: TransportOpt = None,
    transport_block: TransportBlockOpt = None,
    db: DbOpt = None,
    outbox: Annotated[Path | None, typer.Option(help="Outbox folder for dry runs")] = None,
    again: Annotated[
        bool,
        typer.Option(
            "--again",
            help="Send even though this campaign was already sent to the same recipients"
            " (a completed real run); without it the command asks",
        ),
    ] = False,
) -> None:
    """Send a campaign (a dry run unless --send)."""
    settings = settings_for(db)
    campaign, table, _ = prepare(spec, db)  # refuse bad templates/attachments before Prefect
    if really_send and not again:
        again = confirm_repeat(settings, campaign)
    out.print(tracking_line(campaign, check_secret=True))
    params = transport_params(
        settings,
        smtp=smtp,
        smtp_block=smtp_block,
        transport=transport,
        transport_block=transport_block,
    )
    if really_send and not (params["transport_url"] or params["transport_block"]):
        raise SpecError(
            "--send needs a transport",
            where="--transport",
            hint="pass --smtp smtp://host:port, --transport ses://REGION, --transport-block NAME"
            " or --smtp-block NAME, or set MAILCAST_TRANSPORT_URL or MAILCAST_SMTP_URL",
        )
    if really_send:
        # a refused port, a wrong password, a bad region: one line now, not after Prefect
        check_transport(params)
    run_id = str(uuid.uuid4())
    out.print(
        f"run [bold]{run_id}[/]: {safe(campaign.name)}, {len(table.valid)} to send, "
        f"{len(table.rejected)} rejected, "
        + ("[bold]sending[/]" if really_send else "dry run (nothing leaves; --send sends)")
    )
    run_flow(
        settings,
        campaign,
        run_id,
        dry_run=not really_send,
        outbox_dir=str(outbox or settings.outbox()),
        again=again,
        **params,
    )


def interactive() -> bool:
    """Whether a person answers on this terminal (stdin is one)."""
    import sys

    return sys.stdin.isatty()


def confirm_repeat(settings: Settings, campaign: Any) -> bool:
    """Whether the user confirmed sending again a campaign already sent to the same recipients
    (True: there was such a run and the user said yes). Asks on a terminal; elsewhere (a
    script, a pipe) the flow refuses the run with one line, after the campaign's other checks
    (``--again`` sends anyway)."""
    from mailcast.recipients.prepare import earlier_runs

    if not interactive():
        return False
    earlier = earlier_runs(settings.ledger_url(), campaign)
    if not earlier:
        return False
    last = earlier[0]
    more = f" (and {len(earlier) - 1} more)" if len(earlier) > 1 else ""
    said = f"already sent to this audience: run {last.id} of {last.created_at:%Y-%m-%d %H:%M}"
    out.print(f"{safe(campaign.name)}: {safe(said + more)}")
    if not typer.confirm("Send it again to the same recipients?", default=False):
        raise typer.Exit(1)
    return True


def _continue(
    run_id: str,
    db: str | None,
    chosen: dict[str, str | None],
    changes: dict[str, Any] | None = None,
    **flags: Any,
) -> None:
    from mailcast.spec import CampaignSpec
    from mailcast.transport.factory import Target

    settings = settings_for(db)
    ledger = open_ledger(settings, create=False)
    run = ledger.run(run_id)
    if changes:  # the operator's decision, kept for later resumes
        ledger.update_run_spec(run.id, changes)
        run = ledger.run(run.id)
        said = ", ".join(f"{k} {v:g}" for k, v in changes.items())
        out.print(f"run {safe(run.id)}: {safe(said)}")
    spec = CampaignSpec.model_validate(run.spec)
    dry = run.dry_run
    recorded = Target.from_record(run.transport)  # where the run sent: no password in it
    outbox = None
    if dry and recorded is not None and recorded.outbox:
        outbox = str(Path(recorded.outbox).parent)
    elif dry and run.transport and run.transport.startswith("outbox "):  # recorded as text
        outbox = str(Path(run.transport.removeprefix("outbox ")).parent)
    out.print(f"resuming run [bold]{safe(run.id)}[/] ({safe(run.campaign)}, {run.status})")
    if any(chosen.values()) or dry or recorded is None or recorded.dry_run:
        params = transport_params(settings, **chosen)
    else:  # the transport the run was sent through (secrets: its block, the settings)
        params = {"transport_url": recorded.url, "transport_block": recorded.block}
        out.print(f"via the run's transport: {safe(recorded.describe())}")
    if not dry:
        check_transport(params)
    run_flow(settings, spec, run.id, resume=True, dry_run=dry, outbox_dir=outbox, **params, **flags)


@app.command()
@guarded
def resume(
    run_id: Annotated[str, typer.Argument(help="The run (or a unique prefix of its id)")],
    resend_unknown: Annotated[
        bool,
        typer.Option(
            help="Also re-send rows whose fate is unknown (in flight at a crash, or the reply to the message never came)"
        ),
    ] = False,
    smtp: SmtpOpt = None,
    smtp_block: SmtpBlockOpt = None,
    transport: TransportOpt = None,
    transport_block: TransportBlockOpt = None,
    db: DbOpt = None,
    max_hard_bounce_rate: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="A new hard-bounce limit for the run (it paused itself on one)"
        ),
    ] = None,
    max_complaint_rate: Annotated[
        float | None,
        typer.Option(min=0, max=1, help="A new complaint-rate limit for the run"),
    ] = None,
) -> None:
    """Continue an interrupted run: sends only to rows not yet sent."""
    chosen = {"smtp": smtp, "smtp_block": smtp_block, "transport": transport}
    chosen["transport_block"] = transport_block
    limits = {
        "max_hard_bounce_rate": max_hard_bounce_rate,
        "max_complaint_rate": max_complaint_rate,
    }
    changes = {k: v for k, v in limits.items() if v is not None}
    _continue(run_id, db, chosen, resend_unknown=resend_unknown, changes=changes)


@app.command()
@guarded
def retry(
    run_id: Annotated[str, typer.Argument(help="The run")],
    failed: Annotated[
        bool,
        typer.Option(
            "--failed",
            help="Re-send rows that failed with a temporary error or were refused at MAIL (the sender's problem)",
        ),
    ] = True,
    smtp: SmtpOpt = None,
    smtp_block: SmtpBlockOpt = None,
    transport: TransportOpt = None,
    transport_block: TransportBlockOpt = None,
    db: DbOpt = None,
) -> None:
    """Re-send to the rows of a run that failed with a temporary error (4xx, a lost connection) or
    whose sender was refused (a 5xx at MAIL); refusals of the recipient stay failed."""
    chosen = {"smtp": smtp, "smtp_block": smtp_block, "transport": transport}
    chosen["transport_block"] = transport_block
    _continue(run_id, db, chosen, retry_failed=failed)


@app.command()
@guarded
def runs(db: DbOpt = None, limit: Annotated[int, typer.Option(help="How many runs")] = 20) -> None:
    """List runs, newest first."""
    from mailcast.ledger.models import DeliveryStatus
    from mailcast.transport.factory import channel_of

    settings = settings_for(db)
    ledger = open_ledger(settings)
    # The id is what report/resume/retry need: never cut it, whatever the width.
    run_col = Column("run", no_wrap=True, min_width=36)
    grid = Table(run_col, "campaign", "status", "mode", "recipients", "sent", "failed", "created")
    for r in ledger.runs(limit):
        c = ledger.counts(r.id)
        grid.add_row(
            safe(r.id), safe(r.campaign), r.status, "dry" if r.dry_run else channel_of(r.transport), str(r.recipients),
            str(c[DeliveryStatus.SENT]), str(c[DeliveryStatus.FAILED]), r.created_at.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    # A pipe or file gets the whole table, not one squeezed to rich's default 80 columns.
    print_table(grid)
    out.print(f"[dim]ledger: {safe(ledger.where)}[/]")


@app.command()
@guarded
def report(
    run_id: Annotated[str, typer.Argument(help="The run")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json, xlsx or parquet")] = "csv",
    out_file: Annotated[Path | None, typer.Option("--out", help="Output file")] = None,
    db: DbOpt = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Write the engagement report page (charts) to this file"),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="CSV: write cells as they are (by default a cell starting with = + - @ gets a "
            "leading ' so spreadsheets do not run it as a formula)",
        ),
    ] = False,
) -> None:
    """Export a run's per-recipient ledger (or, with --html, its engagement report page)."""
    from mailcast.export import export_report

    settings = settings_for(db)
    open_ledger(settings)  # a clear error for a missing or outdated ledger
    if html_out is not None:
        write_html_report(settings, run_id, html_out)
        return
    target, n = export_report(
        settings.ledger_url(),
        run_id,
        fmt,
        str(out_file) if out_file else None,
        neutralize_formulas=not raw,
    )
    out.print(f"wrote {n} rows to {safe(target)}")


def write_html_report(settings: Settings, run_id: str, path: Path) -> None:
    from mailcast.engagement.report_page import write_html_report as write

    write(settings.ledger_url(), run_id, path)
    out.print(f"wrote the report page to {safe(path)}")
