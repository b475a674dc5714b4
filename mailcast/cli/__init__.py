"""The ``mailcast`` command line.

Commands that run no flow (validate, preview, runs, report, init, db) never import Prefect and
answer in about a second; send, resume, retry and demo run the ``send-campaign`` flow.
Every MailcastError becomes one line (``error: <where>: <what>``) and a hint, exit code 2.
"""

import sys

from mailcast.cli import campaigns, contacts, db, demo, lists, segments, serve, suppress
from mailcast.cli.common import app, err
from mailcast.cli.flowrun import without_password
from mailcast.errors import MailcastError

app.add_typer(db.db_app, name="db")
app.add_typer(suppress.suppress_app, name="suppress")
app.add_typer(segments.segments_app, name="segments")
app.add_typer(contacts.contacts_app, name="contacts")
app.add_typer(lists.lists_app, name="lists")

__all__ = [
    "app",
    "campaigns",
    "contacts",
    "db",
    "demo",
    "lists",
    "main",
    "segments",
    "serve",
    "suppress",
    "without_password",
]


def main() -> None:
    try:
        app()
    except MailcastError as exc:  # pragma: no cover - commands are guarded
        err.print(f"error: {exc.one_line()}")
        sys.exit(2)
