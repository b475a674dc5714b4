"""Where a run's messages go: an SMTP server (by URL or saved block) or, in a dry run, an outbox
folder. A ``Target`` holds no secret: the password is looked up where the transport is opened
(the environment or the Prefect block), so it never travels as a task parameter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ValidationError

from mailcast.errors import SpecError, TransportError
from mailcast.redact import redact_url
from mailcast.settings import Settings
from mailcast.transport.base import Transport


class Target(BaseModel):
    smtp_url: str | None = None
    smtp_block: str | None = None
    outbox: str | None = None

    @property
    def dry_run(self) -> bool:
        return self.outbox is not None

    def describe(self) -> str:
        if self.outbox is not None:
            return f"outbox {self.outbox}"
        if self.smtp_block:
            return f"smtp block {self.smtp_block}"
        return smtp_config(self).where

    def record(self) -> str:
        """The run's record of where it sends (the ledger's ``runs.transport``): JSON, without
        any password, so that resume and retry reach the same server."""
        return json.dumps(
            {
                "smtp_url": redact_url(self.smtp_url, mask=None) if self.smtp_url else None,
                "smtp_block": self.smtp_block,
                "outbox": self.outbox,
            }
        )

    @classmethod
    def from_record(cls, record: str | None) -> Target | None:
        """The target a run recorded; None for runs recorded before it was structured."""
        if not record or not record.startswith("{"):
            return None
        try:
            return cls.model_validate_json(record)
        except ValidationError:
            return None

    def check(self) -> None:
        if self.outbox is None and not (self.smtp_url or self.smtp_block):
            raise SpecError(
                "no SMTP server given for a real send",
                where="--smtp",
                hint="pass --smtp smtp://host:port, --smtp-block NAME or set MAILCAST_SMTP_URL",
            )


def describe_record(record: str | None) -> str | None:
    """A run's recorded target for people: ``host:port``, ``smtp block NAME``, ``outbox DIR``."""
    target = Target.from_record(record)
    if target is None:
        return record
    try:
        return target.describe()
    except SpecError:
        return target.smtp_url


def smtp_config(target: Target):  # type: ignore[no-untyped-def]
    from mailcast.transport.smtp import SmtpConfig

    if target.smtp_block:
        from mailcast.blocks.smtp import SmtpServer

        return cast(SmtpServer, load_block(SmtpServer, target.smtp_block)).to_config()
    return SmtpConfig.from_url(target.smtp_url or "", Settings().smtp_password)


def load_block(kind: type, name: str) -> object:
    """Load a saved Prefect block; one that does not exist is a one-line error with a hint."""
    try:
        return kind.load(name)  # type: ignore[attr-defined]
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise TransportError(
            f"no saved SMTP block named {name!r} ({str(exc).splitlines()[0]})",
            where=f"smtp block {name}",
            hint="check the name (`prefect block ls` lists the saved blocks) or save one "
            "(docs/deploy.md)",
        ) from None


def make_transport(target: Target) -> Transport:
    """A new, unopened transport (one per connection)."""
    if target.outbox is not None:
        from mailcast.transport.outbox import OutboxTransport

        return OutboxTransport(Path(target.outbox))
    from mailcast.transport.smtp import SmtpTransport

    return SmtpTransport(smtp_config(target))


def target_for(
    settings: Settings,
    dry_run: bool,
    smtp_block: str | None,
    smtp_url: str | None,
    outbox_dir: str | None,
    run_id: str | None,
) -> Target:
    """Where a run's messages go: the outbox folder in a dry run, else the SMTP server (a
    block or a URL, from the arguments or the settings); checked before anything is sent."""
    if dry_run:
        outbox = Path(outbox_dir) if outbox_dir else settings.outbox()
        return Target(outbox=str(outbox / (run_id or "run")))
    target = Target(
        smtp_block=smtp_block or settings.smtp_block,
        smtp_url=smtp_url or settings.smtp_url,
    )
    target.check()
    return target
