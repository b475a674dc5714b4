"""Where a run's messages go: an SMTP server (by URL or saved block) or, in a dry run, an outbox
folder. A ``Target`` holds no secret: the password is looked up where the transport is opened
(the environment or the Prefect block), so it never travels as a task parameter."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pydantic import BaseModel

from mailcast.errors import SpecError
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

    def check(self) -> None:
        if self.outbox is None and not (self.smtp_url or self.smtp_block):
            raise SpecError(
                "no SMTP server given for a real send",
                where="--smtp",
                hint="pass --smtp smtp://host:port, --smtp-block NAME or set MAILCAST_SMTP_URL",
            )


def smtp_config(target: Target):  # type: ignore[no-untyped-def]
    from mailcast.transport.smtp import SmtpConfig

    if target.smtp_block:
        from mailcast.blocks.smtp import SmtpServer

        block = cast(SmtpServer, SmtpServer.load(target.smtp_block))
        return block.to_config()
    return SmtpConfig.from_url(target.smtp_url or "", Settings().smtp_password)


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
