"""``mailcast demo`` and ``mailcast init``: the example campaign."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated

import typer

from mailcast.cli.campaigns import prepare
from mailcast.cli.common import DbOpt, app, example_dir, guarded, out, safe, settings_for
from mailcast.cli.flowrun import run_flow
from mailcast.errors import SpecError


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
        out.print(f"run [bold]{run_id}[/]: {safe(campaign.name)}, {len(table.valid)} recipients")
        run_flow(settings, load_spec(spec_path), run_id, dry_run=False, smtp_url=server.url)
        n = len(server.messages)
    out.print(f"\nthe SMTP server accepted {n} messages; copies: {safe(captured)}/")


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
        f"wrote an example campaign to {safe(directory)}/ — next: mailcast validate {safe(directory)}/campaign.yaml"
    )
