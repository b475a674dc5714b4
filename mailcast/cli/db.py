"""``mailcast db``: the ledger database."""

from __future__ import annotations

import typer

from mailcast.cli.common import DbOpt, guarded, out, safe, settings_for

db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)


@db_app.command("upgrade")
@guarded
def db_upgrade(db: DbOpt = None) -> None:
    """Apply the ledger's migrations."""
    from mailcast.ledger.schema import get_engine, upgrade
    from mailcast.redact import redact_url

    url = settings_for(db).ledger_url()
    upgrade(get_engine(url))
    out.print(f"ledger at {safe(redact_url(url))} is up to date")
