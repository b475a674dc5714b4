"""Running the ``send-campaign`` flow in this process: progress bar, summary, SMTP parameters."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import typer

from mailcast.cli.common import err, fail, open_ledger, out, safe
from mailcast.errors import MailcastError, SpecError
from mailcast.settings import Settings


def _prefect_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@contextmanager
def progress(ledger: Any, run_id: str) -> Iterator[None]:
    """A progress bar fed by the ledger's counts while the flow runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mailcast.ledger.models import FINAL_STATUSES, UNKNOWN

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
            done = sum(counts[s] for s in (*FINAL_STATUSES, UNKNOWN))
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


@contextmanager
def ledger_in_environment(url: str) -> Iterator[None]:
    """MAILCAST_DATABASE_URL set to ``url`` while the flow runs in this process (and in the
    worker processes it starts)."""
    before = Settings().database_url  # what the environment said before
    os.environ["MAILCAST_DATABASE_URL"] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MAILCAST_DATABASE_URL", None)
        else:
            os.environ["MAILCAST_DATABASE_URL"] = before


def run_flow(settings: Settings, spec: Any, run_id: str, **params: Any) -> Any:
    """Run the send-campaign flow in this process; print the summary; errors as one line."""
    _prefect_env()
    if not settings.prefect_api_url:
        err.print(
            "[dim]starting a temporary local Prefect server (20–30 s on first use; "
            "`prefect server start` and PREFECT_API_URL keep one running)…[/]"
        )
    from mailcast.orchestration import get_flow

    send_campaign = get_flow("send-campaign")

    ledger = open_ledger(settings)
    # The flow reads the ledger from the settings, as a worker does: the URL (and its password)
    # never becomes a flow parameter, which Prefect would store in clear.
    with progress(ledger, run_id), ledger_in_environment(settings.ledger_url()):
        state = send_campaign(spec=spec, run_id=run_id, return_state=True, **params)
    result = state.result(raise_on_failure=False)
    with suppress(MailcastError):
        show_summary(ledger, run_id)
    if state.is_failed():
        if isinstance(result, MailcastError):
            fail(result)
        err.print(f"[bold red]error:[/] the run failed: {safe(result)}")
        raise typer.Exit(1)
    return result


def show_summary(ledger: Any, run_id: str) -> None:
    from mailcast.engine.summary import summarize_run

    s = summarize_run(ledger, run_id)
    mode = "dry run: written to the outbox" if s.dry_run else f"sent over {s.channel}"
    out.print(f"\n[bold]{safe(s.campaign)}[/] run [bold]{s.run_id}[/] — {s.status} ({mode})")
    counts = "  ".join(f"{k} {v}" for k, v in s.counts.items() if v)
    out.print(f"  {counts}  (total {s.total})")
    for status, reason, n in s.reasons:  # every reason, with how many rows it stopped
        out.print(f"  {status:8} {n:6d}  {safe(reason)}")
    if s.reasons:
        out.print(f"  the addresses, row by row: mailcast report {s.run_id}")
    out.print(f"  via: {safe(s.transport)}")
    out.print(f"  ledger: {safe(s.ledger)}")


def transport_params(
    settings: Settings,
    *,
    smtp: str | None = None,
    smtp_block: str | None = None,
    transport: str | None = None,
    transport_block: str | None = None,
) -> dict[str, Any]:
    """The flow's transport parameters (no secret in them): the options first (a block, then
    a URL), then the settings. A password in an SMTP URL moves to MAILCAST_SMTP_PASSWORD."""
    from mailcast.transport.factory import choose

    target = choose(
        transport_block=transport_block,
        smtp_block=smtp_block,
        transport_url=without_password(transport or smtp),
        smtp_url=None,
        settings=settings,
    )
    if target.url is not None and not (transport or smtp):  # from the settings
        target = type(target)(url=without_password(target.url))
    return {"transport_url": target.url, "transport_block": target.block}


def without_password(url: str | None) -> str | None:
    """A password in --smtp would travel as a flow parameter (and be stored by Prefect): move it
    into MAILCAST_SMTP_PASSWORD for this process, where the transport looks it up."""
    from urllib.parse import unquote, urlsplit

    from mailcast.redact import redact_url

    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    if parts.scheme.lower() not in ("smtp", "smtps"):
        raise SpecError(
            f"a secret in the transport URL {redact_url(url)!r}",
            where="--transport",
            hint="save the provider's keys in its Prefect block and pass --transport-block NAME"
            " (README: the section of your transport)",
        )
    os.environ["MAILCAST_SMTP_PASSWORD"] = unquote(parts.password)
    return redact_url(url, mask=None)


CHECK_TIMEOUT = 10.0  # seconds: a server that does not answer at all is reported this soon


def check_transport(params: dict[str, Any]) -> None:
    """Before Prefect starts: what can be checked of a transport URL (its form, the region,
    credentials present) and, for SMTP, connect, start TLS and log in once: a refused port, a
    TLS problem or a wrong password is one line (host:port and a hint) within seconds. A saved
    block is checked by the flow (loading it needs Prefect)."""
    from dataclasses import replace

    from mailcast.transport.factory import Target
    from mailcast.transport.smtp import SmtpConfig, SmtpTransport

    if params.get("transport_block") or not params.get("transport_url"):
        return
    setup = Target(url=params["transport_url"]).setup()
    setup.check()
    if not isinstance(setup, SmtpConfig):
        err.print(f"[dim]{safe(setup.where)}: settings complete[/]")
        return
    transport = SmtpTransport(replace(setup, timeout=min(setup.timeout, CHECK_TIMEOUT)))
    transport.open()
    transport.close()
    err.print(f"[dim]SMTP server {safe(setup.where)}: connected, ready[/]")
