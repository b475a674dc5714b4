"""``mailcast serve``: the tracking service and the subscription forms."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mailcast.cli.common import DbOpt, app, err, guarded, safe, settings_for


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
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes serving the port (each with its own event queue and writer);"
            " about one per core",
        ),
    ] = 1,
) -> None:
    """Run the tracking service (open pixel, click redirects, one-click unsubscribe) and the
    subscription forms (/s/LIST, the preference page /p/TOKEN) with uvicorn.

    Needs MAILCAST_TRACKING_SECRET (or MAILCAST_TRACKING_SECRET_BLOCK), the same as the
    sending worker's, and the ledger (--db / MAILCAST_DATABASE_URL). Put it behind a reverse
    proxy that terminates TLS at the campaign's tracking_base_url (README).

    Opens and clicks are queued in memory and written to the ledger in batches at least every
    half second; a graceful stop (SIGTERM, Ctrl-C) writes them all before it exits, a SIGKILL
    loses at most the last second's. Unsubscribes are written before the page answers."""
    import os

    import uvicorn

    from mailcast.engagement.confirmation import setup_from
    from mailcast.errors import MailcastError
    from mailcast.web.tracking import create_app

    settings = settings_for(db)
    application = create_app(settings.ledger_url())
    err.print(
        f"tracking service on http://{host}:{port} (ledger: {safe(application.state.service.ledger.where)}"
        f"{f', {workers} processes' if workers > 1 else ''})"
    )
    try:
        confirmations = setup_from(settings)
        double = f"confirmations sent from {safe(confirmations.sender)} via {safe(confirmations.target.describe())}"
    except MailcastError as exc:
        double = f"double opt-in lists answer 503 until {safe(exc.where or '')} is set"
    err.print(f"subscription forms on /s/LIST ({double})")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": proxy_headers,
        "forwarded_allow_ips": forwarded_allow_ips,
        "log_level": log_level,
        "server_header": False,
        # a stop waits this long for open requests, then writes the queue and exits
        "timeout_graceful_shutdown": 10,
    }
    if workers == 1:
        uvicorn.run(application, **options)
        return
    # uvicorn's supervisor: N processes on one socket, each building its own app (its own queue
    # and writer) from the factory; a SIGTERM to the supervisor stops each one gracefully. The
    # workers read their settings as this process does; the ledger chosen here is handed on.
    application.state.service.engine.dispose()  # this process only supervises
    os.environ["MAILCAST_DATABASE_URL"] = settings.ledger_url()
    uvicorn.run("mailcast.web.tracking:create_app", factory=True, workers=workers, **options)
