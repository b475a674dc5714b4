"""What every command shares: the typer app, the two consoles, one-line errors, settings."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mailcast.errors import MailcastError, SpecError
from mailcast.settings import Settings, get_settings

app = typer.Typer(
    help="Personalized bulk email with a delivery ledger, orchestrated by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


# Data (addresses, reasons, names) is printed through ``safe``: no markup, no emoji codes, no
# control characters reach the terminal.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def print_table(grid: Any) -> None:
    """A table on ``out``: squeezed to the terminal's width on a terminal; whole (never cut to
    rich's default 80 columns) for a pipe or a file."""
    if out.is_terminal:
        out.print(grid)
    else:
        Console(file=out.file, highlight=False, soft_wrap=True, width=1000, emoji=False).print(grid)


# C0/C1 controls (ESC starts terminal sequences), DEL, line/paragraph separators, bidi overrides
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(value: object) -> str:
    """``value`` as plain text with control characters made visible (``\\x1b``, ``\\n``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def safe(value: object) -> str:
    """Data for a Rich string or table cell: control characters made visible, markup escaped
    (``[link=...]`` prints as text)."""
    from rich.markup import escape

    return escape(visible(value))


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
    err.print(f"[bold red]error:[/] {safe(exc)}", highlight=False)
    if exc.hint:
        err.print(f"[dim]hint: {safe(exc.hint)}[/]")
    raise typer.Exit(2)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn mailcast's errors into one line and a hint instead of a traceback."""

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


def tracking_line(spec: Any, *, check_secret: bool = False) -> str:
    """Whether the campaign is tracked (and, before a send, that the tracking secret is set)."""
    from mailcast.engagement.links import describe, is_tracked

    if check_secret and is_tracked(spec):
        from mailcast.engagement.tokens import load_secret

        if not get_settings().tracking_secret_block:  # a block needs Prefect
            load_secret()
    return safe(describe(spec))
