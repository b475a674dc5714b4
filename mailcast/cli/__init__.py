"""The ``mailcast`` command line.

Commands that run no flow (validate, preview, runs, report, init, db) never import Prefect and
answer in about a second; send, resume, retry and demo run the ``send-campaign`` flow.
Every MailcastError becomes one line (``error: <where>: <what>``) and a hint, exit code 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from mailcast.errors import MailcastError, SpecError
from mailcast.settings import Settings

app = typer.Typer(
    help="Personalized bulk email with a delivery ledger, orchestrated by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _version(value: bool) -> None:
    if value:
        from mailcast import __version__

        typer.echo(f"mailcast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Personalized bulk email with a delivery ledger, orchestrated by Prefect."""


out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PACKAGE = Path(__file__).resolve().parents[1]


def example_dir() -> Path:
    """The example campaign: ``mailcast/example`` in an installed wheel, ``deployments/example``
    in a checkout (an editable install)."""
    for folder in (PACKAGE / "example", PACKAGE.parent / "deployments" / "example"):
        if (folder / "campaign.yaml").is_file():
            return folder
    raise SpecError(
        "the example campaign is missing from this installation",
        where=str(PACKAGE / "example"),
        hint="reinstall mailcast (the wheel carries it as package data)",
    )


SpecArg = Annotated[Path, typer.Argument(help="The campaign spec (YAML)", show_default=False)]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Ledger database URL (default: MAILCAST_DATABASE_URL or SQLite)"),
]


def fail(exc: MailcastError) -> None:
    err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    if exc.hint:
        err.print(f"[dim]hint: {exc.hint}[/]")
    raise typer.Exit(2)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn mailcast's errors into one line and a hint instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MailcastError as exc:
            fail(exc)
        except KeyboardInterrupt:
            err.print("interrupted: `mailcast resume RUN_ID` continues a run")
            raise typer.Exit(130) from None

    return wrapper


def settings_for(db: str | None) -> Settings:
    settings = Settings()
    if db:
        settings.database_url = db
    return settings


def open_ledger(settings: Settings, *, create: bool = True) -> Any:
    from mailcast.ledger.store import Ledger

    return Ledger(settings.ledger_url(), create=create)


# -- validate / preview -------------------------------------------------------------------------


def prepare(spec_path: Path, db: str | None = None) -> tuple[Any, Any, Any]:
    """Load the spec, read and check recipients and templates: no Prefect, no network. Addresses
    on the ledger's suppression list are skipped (``suppressed:<reason>``)."""
    from mailcast.compose.mime import MessageBuilder
    from mailcast.compose.templates import CampaignTemplates
    from mailcast.engagement.suppression import suppressed_for
    from mailcast.recipients.dedupe import dedupe_recipients
    from mailcast.recipients.sources import read_recipients
    from mailcast.recipients.validate import validate_recipients
    from mailcast.spec import load_spec

    spec = load_spec(spec_path)
    table = read_recipients(spec.recipients, spec.base_dir)
    templates = CampaignTemplates(spec, table.columns)
    MessageBuilder(spec)  # sender, attachments, sizes
    table = dedupe_recipients(
        validate_recipients(
            table,
            required=spec.recipients.required_columns,
            suppressed=suppressed_for(settings_for(db).ledger_url()),
            check_deliverability=spec.check_deliverability,
        )
    )
    return spec, table, templates


@app.command()
@guarded
def validate(
    spec: SpecArg,
    show: Annotated[int, typer.Option(help="How many rejected rows to list")] = 50,
) -> None:
    """Check the spec, templates and every recipient row; list the rejected rows."""
    started = time.monotonic()
    campaign, table, templates = prepare(spec)
    rejected = table.rejected
    out.print(
        f"[bold]{campaign.name}[/]: {len(table.rows)} rows from {table.source} "
        f"({len(table.columns)} columns); templates ok: {', '.join(templates.names)}"
    )
    out.print(f"  to send: [green]{len(table.valid)}[/]   rejected: [yellow]{len(rejected)}[/]")
    out.print(f"  {tracking_line(campaign)}")
    if rejected:
        grid = Table("row", "address", "reason", box=None, pad_edge=False)
        for r in rejected[:show]:
            grid.add_row(str(r.row), r.address, r.reason or "")
        out.print(grid)
        if len(rejected) > show:
            out.print(f"  … and {len(rejected) - show} more (--show N)")
    out.print(f"[dim]checked in {time.monotonic() - started:.1f}s[/]")


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
        out.print(f"{i:3d}. row {r.row} → {r.address}: {rendered.subject}")
    out.print(f"wrote {min(limit, len(table.valid))} previews to {out_dir}/")


# -- running the flow ---------------------------------------------------------------------------


def _prefect_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@contextmanager
def progress(ledger: Any, run_id: str) -> Iterator[None]:
    """A progress bar fed by the ledger's counts while the flow runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    stop = threading.Event()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=err,
        transient=True,
    )

    def poll() -> None:
        task = bar.add_task("waiting for Prefect", total=None, detail="")
        while not stop.wait(0.5):
            try:
                counts = ledger.counts(run_id)
            except Exception:
                continue
            total = sum(counts.values())
            if not total:
                continue
            done = counts["sent"] + counts["failed"] + counts["skipped"] + counts["unknown"]
            detail = f"sent {counts['sent']} failed {counts['failed']} skipped {counts['skipped']}"
            bar.update(task, description="sending", total=total, completed=done, detail=detail)

    with bar:
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(2)


def run_flow(settings: Settings, spec: Any, run_id: str, **params: Any) -> Any:
    """Run the send-campaign flow in this process; print the summary; errors as one line."""
    _prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        err.print(
            "[dim]starting a temporary local Prefect server (20–30 s on first use; "
            "`prefect server start` and PREFECT_API_URL keep one running)…[/]"
        )
    from mailcast.orchestration import get_flow

    send_campaign = get_flow("send-campaign")

    ledger = open_ledger(settings)
    with progress(ledger, run_id):
        state = send_campaign(
            spec=spec,
            run_id=run_id,
            database_url=settings.ledger_url(),
            return_state=True,
            **params,
        )
    result = state.result(raise_on_failure=False)
    with suppress(MailcastError):
        show_summary(ledger, run_id)
    if state.is_failed():
        if isinstance(result, MailcastError):
            fail(result)
        err.print(f"[bold red]error:[/] the run failed: {result}")
        raise typer.Exit(1)
    return result


def show_summary(ledger: Any, run_id: str) -> None:
    from mailcast.engine.summary import summarize_run

    s = summarize_run(ledger, run_id)
    mode = "dry run: written to the outbox" if s.dry_run else "sent over SMTP"
    out.print(f"\n[bold]{s.campaign}[/] run [bold]{s.run_id}[/] — {s.status} ({mode})")
    counts = "  ".join(f"{k} {v}" for k, v in s.counts.items() if v)
    out.print(f"  {counts}  (total {s.total})")
    for status, reason, n in s.reasons:
        out.print(f"  {status:8} {n:6d}  {reason}")
    out.print(f"  via: {s.transport}")
    out.print(f"  ledger: {s.ledger}")


def smtp_params(smtp: str | None, smtp_block: str | None, settings: Settings) -> dict[str, Any]:
    return {
        "smtp_url": without_password(smtp or settings.smtp_url),
        "smtp_block": smtp_block or settings.smtp_block,
    }


def without_password(url: str | None) -> str | None:
    """A password in --smtp would travel as a flow parameter (and be stored by Prefect): move it
    into MAILCAST_SMTP_PASSWORD for this process, where the transport looks it up."""
    from urllib.parse import quote, unquote, urlsplit, urlunsplit

    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    os.environ["MAILCAST_SMTP_PASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    netloc = f"{user}@{host}" if user else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@app.command()
@guarded
def send(
    spec: SpecArg,
    really_send: Annotated[
        bool, typer.Option("--send", help="Really send over SMTP (default: dry run to the outbox)")
    ] = False,
    smtp: Annotated[str | None, typer.Option(help="smtp://user@host:port?security=...")] = None,
    smtp_block: Annotated[str | None, typer.Option(help="Name of a saved SMTP block")] = None,
    db: DbOpt = None,
    outbox: Annotated[Path | None, typer.Option(help="Outbox folder for dry runs")] = None,
) -> None:
    """Send a campaign (a dry run unless --send)."""
    settings = settings_for(db)
    campaign, table, _ = prepare(spec, db)  # refuse bad templates/attachments before Prefect
    out.print(tracking_line(campaign, check_secret=True))
    params = smtp_params(smtp, smtp_block, settings)
    if really_send and not (params["smtp_url"] or params["smtp_block"]):
        raise SpecError(
            "--send needs an SMTP server",
            where="--smtp",
            hint="pass --smtp smtp://host:port, --smtp-block NAME, or set MAILCAST_SMTP_URL",
        )
    run_id = str(uuid.uuid4())
    out.print(
        f"run [bold]{run_id}[/]: {campaign.name}, {len(table.valid)} to send, "
        f"{len(table.rejected)} rejected, "
        + (
            "[bold]sending over SMTP[/]"
            if really_send
            else "dry run (nothing leaves; --send sends)"
        )
    )
    run_flow(
        settings,
        campaign,
        run_id,
        dry_run=not really_send,
        outbox_dir=str(outbox or settings.outbox()),
        **params,
    )


def _continue(
    run_id: str, db: str | None, smtp: str | None, smtp_block: str | None, **flags: Any
) -> None:
    from mailcast.spec import CampaignSpec

    settings = settings_for(db)
    ledger = open_ledger(settings, create=False)
    run = ledger.run(run_id)
    spec = CampaignSpec.model_validate(run.spec)
    params = smtp_params(smtp, smtp_block, settings)
    dry = run.dry_run
    outbox = None
    if dry and run.transport and run.transport.startswith("outbox "):
        outbox = str(Path(run.transport.removeprefix("outbox ")).parent)
    out.print(f"resuming run [bold]{run.id}[/] ({run.campaign}, {run.status})")
    run_flow(settings, spec, run.id, resume=True, dry_run=dry, outbox_dir=outbox, **params, **flags)


@app.command()
@guarded
def resume(
    run_id: Annotated[str, typer.Argument(help="The run (or a unique prefix of its id)")],
    resend_unknown: Annotated[
        bool, typer.Option(help="Also re-send rows whose fate a crash left unknown")
    ] = False,
    smtp: Annotated[str | None, typer.Option(help="smtp://user@host:port?security=...")] = None,
    smtp_block: Annotated[str | None, typer.Option(help="Name of a saved SMTP block")] = None,
    db: DbOpt = None,
) -> None:
    """Continue an interrupted run: sends only to rows not yet sent."""
    _continue(run_id, db, smtp, smtp_block, resend_unknown=resend_unknown)


@app.command()
@guarded
def retry(
    run_id: Annotated[str, typer.Argument(help="The run")],
    failed: Annotated[
        bool, typer.Option("--failed", help="Re-send rows that failed with a temporary error")
    ] = True,
    smtp: Annotated[str | None, typer.Option(help="smtp://user@host:port?security=...")] = None,
    smtp_block: Annotated[str | None, typer.Option(help="Name of a saved SMTP block")] = None,
    db: DbOpt = None,
) -> None:
    """Re-send to the rows of a run that failed with a temporary (4xx) error."""
    _continue(run_id, db, smtp, smtp_block, retry_failed=failed)


# -- the ledger -------------------------------------------------------------------------------


@app.command()
@guarded
def runs(db: DbOpt = None, limit: Annotated[int, typer.Option(help="How many runs")] = 20) -> None:
    """List runs, newest first."""
    settings = settings_for(db)
    ledger = open_ledger(settings)
    # The id is what report/resume/retry need: never cut it, whatever the width.
    run_col = Column("run", no_wrap=True, min_width=36)
    grid = Table(run_col, "campaign", "status", "mode", "recipients", "sent", "failed", "created")
    for r in ledger.runs(limit):
        c = ledger.counts(r.id)
        grid.add_row(
            r.id, r.campaign, r.status, "dry" if r.dry_run else "smtp", str(r.recipients),
            str(c["sent"]), str(c["failed"]), r.created_at.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    # A pipe or file gets the whole table, not one squeezed to rich's default 80 columns.
    wide = Console(file=out.file, highlight=False, soft_wrap=True, width=1000)
    (out if out.is_terminal else wide).print(grid)
    out.print(f"[dim]ledger: {ledger.where}[/]")


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
) -> None:
    """Export a run's per-recipient ledger (or, with --html, its engagement report page)."""
    from mailcast.export import export_report

    settings = settings_for(db)
    open_ledger(settings)  # a clear error for a missing or outdated ledger
    if html_out is not None:
        write_html_report(settings, run_id, html_out)
        return
    target, n = export_report(
        settings.ledger_url(), run_id, fmt, str(out_file) if out_file else None
    )
    out.print(f"wrote {n} rows to {target}")


@db_app.command("upgrade")
@guarded
def db_upgrade(db: DbOpt = None) -> None:
    """Apply the ledger's migrations."""
    from mailcast.ledger.schema import display_url, get_engine, upgrade

    url = settings_for(db).ledger_url()
    upgrade(get_engine(url))
    out.print(f"ledger at {display_url(url)} is up to date")


# -- demo and init ------------------------------------------------------------------------------


@app.command()
@guarded
def demo(db: DbOpt = None) -> None:
    """Send the example campaign for real to a capturing SMTP server on this machine."""
    from mailcast.capture import CaptureServer
    from mailcast.spec import load_spec

    settings = settings_for(db)
    spec_path = example_dir() / "campaign.yaml"
    captured = settings.data_dir / "demo" / "captured"
    shutil.rmtree(captured, ignore_errors=True)
    with CaptureServer(save_dir=captured) as server:
        out.print(f"capturing SMTP server on {server.host}:{server.port}")
        campaign, table, _ = prepare(spec_path)
        run_id = str(uuid.uuid4())
        out.print(f"run [bold]{run_id}[/]: {campaign.name}, {len(table.valid)} recipients")
        run_flow(settings, load_spec(spec_path), run_id, dry_run=False, smtp_url=server.url)
        n = len(server.messages)
    out.print(f"\nthe SMTP server accepted {n} messages; copies: {captured}/")


@app.command()
@guarded
def init(directory: Annotated[Path, typer.Argument(help="Folder for the new campaign")]) -> None:
    """Write a commented example campaign (spec, templates, a small CSV)."""
    example = example_dir()
    files = [p for p in example.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    clashes = [directory / p.relative_to(example) for p in files]
    existing = [str(p) for p in clashes if p.exists()]
    if existing:
        raise SpecError(
            f"refusing to overwrite {len(existing)} existing file(s): {', '.join(existing[:3])}",
            where=str(directory),
            hint="choose an empty folder",
        )
    try:
        for p in files:
            dest = directory / p.relative_to(example)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    except OSError as exc:
        raise SpecError(
            f"cannot write the example campaign: {exc.strerror or exc}",
            where=str(exc.filename or directory),
            hint="choose a folder you can write to",
        ) from exc
    if not (directory / "campaign.yaml").is_file():
        raise SpecError("the example campaign was not written", where=str(directory))
    out.print(
        f"wrote an example campaign to {directory}/ — next: mailcast validate {directory}/campaign.yaml"
    )


# -- tracking: the service, the suppression list, the report page --------------------------------


def tracking_line(spec: Any, *, check_secret: bool = False) -> str:
    """Whether the campaign is tracked (and, before a send, that the tracking secret is set)."""
    from mailcast.engagement.links import describe

    needs_secret = spec.tracking_base_url or spec.bounce_domain or spec.unsubscribe_mailto
    if check_secret and needs_secret:
        from mailcast.engagement.tokens import load_secret

        if not os.environ.get("MAILCAST_TRACKING_SECRET_BLOCK"):  # a block needs Prefect
            load_secret()
    return describe(spec)


def write_html_report(settings: Settings, run_id: str, path: Path) -> None:
    from mailcast.engagement.report_page import write_html_report as write

    write(settings.ledger_url(), run_id, path)
    out.print(f"wrote the report page to {path}")


@app.command()
@guarded
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8025,
    db: DbOpt = None,
    proxy_headers: Annotated[
        bool, typer.Option(help="Trust X-Forwarded-* from --forwarded-allow-ips (behind a proxy)")
    ] = True,
    forwarded_allow_ips: Annotated[
        str, typer.Option(help="Proxies whose X-Forwarded-* headers are trusted")
    ] = "127.0.0.1",
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the tracking service (open pixel, click redirects, one-click unsubscribe) with uvicorn.

    Needs MAILCAST_TRACKING_SECRET (or MAILCAST_TRACKING_SECRET_BLOCK), the same as the
    sending worker's, and the ledger (--db / MAILCAST_DATABASE_URL). Put it behind a reverse
    proxy that terminates TLS at the campaign's tracking_base_url (README)."""
    import uvicorn

    from mailcast.web.tracking import create_app

    application = create_app(settings_for(db).ledger_url())
    err.print(
        f"tracking service on http://{host}:{port} (ledger: {application.state.service.ledger.where})"
    )
    uvicorn.run(
        application,
        host=host,
        port=port,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
        server_header=False,
    )


suppress_app = typer.Typer(
    help="The suppression list: addresses never sent to.", no_args_is_help=True
)
app.add_typer(suppress_app, name="suppress")
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
            e.address_key, e.reason, e.source or "", e.created_at.strftime("%Y-%m-%d %H:%M")
        )
    wide = Console(file=out.file, highlight=False, soft_wrap=True, width=1000)
    (out if out.is_terminal else wide).print(grid)
    counts = suppression.counts(ledger.engine)
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    out.print(f"[dim]{total} suppressed ({detail or 'none'}); ledger: {ledger.where}[/]")


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
        out.print(f"  line {line}: {address}: {why}")
    if len(result.invalid) > 20:
        out.print(f"  … and {len(result.invalid) - 20} more")


def main() -> None:
    try:
        app()
    except MailcastError as exc:  # pragma: no cover - commands are guarded
        err.print(f"error: {exc.one_line()}")
        sys.exit(2)
