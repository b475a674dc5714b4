"""Where a run's messages go: a transport chosen by URL scheme (``smtp://``, ``ses://REGION``,
``sendgrid://`` …) or by a saved Prefect block, or, in a dry run, an outbox folder.

The registry (``KINDS``) has one line per transport: its URL scheme, a name for people, the
module that turns a URL into a :class:`TransportSetup` (``setup_from_url(url, settings)``) and
the Prefect block class whose ``setup()`` does the same from saved settings. Modules and blocks
are imported only when a run uses them (the CLI stays fast, an SDK is loaded only by its runs).

A ``Target`` holds no secret: passwords, API keys and access keys are looked up where the
transport is set up (the Prefect block, or the settings/environment for a URL), so a Target
never travels with a secret as a task parameter, and its JSON record (``runs.transport``) lets
resume and retry reach the same transport."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, Field, ValidationError, model_validator

from mailcast.errors import SpecError, TransportError
from mailcast.redact import redact_url
from mailcast.settings import Settings
from mailcast.transport.base import Transport


class TransportSetup(Protocol):
    """A transport's settings, resolved from a URL or a block. It may hold secrets: it lives
    only in the process that sends (never a parameter, never stored)."""

    @property
    def where(self) -> str: ...  # for messages: host:port, "SES eu-west-1" …

    def check(self) -> None:
        """What can be checked without sending (and without the network): the settings'
        form, credentials present. Raises SpecError or TransportError."""

    def new_transport(self) -> Transport:
        """A new, unopened transport (one per connection)."""


@dataclass(frozen=True)
class TransportKind:
    """One entry of the registry."""

    scheme: str  # the URL scheme; also KIND in ``--transport-block KIND/NAME``
    label: str  # for people: "Amazon SES"
    module: str  # mailcast.transport.<module>: ``setup_from_url(url, settings) -> TransportSetup``
    block: str  # "<module>:<Class>" in mailcast.blocks: a Block with ``setup() -> TransportSetup``
    aliases: tuple[str, ...] = ()  # more URL schemes for it

    def setup_from_url(self, url: str, settings: Settings) -> TransportSetup:
        module = importlib.import_module(f"mailcast.transport.{self.module}")
        return cast(TransportSetup, module.setup_from_url(url, settings))

    def block_class(self) -> type:
        module, _, name = self.block.partition(":")
        return cast(type, getattr(importlib.import_module(f"mailcast.blocks.{module}"), name))


# The registry: one line per transport (docs/architecture.md, "where to add a transport").
KINDS: dict[str, TransportKind] = {
    kind.scheme: kind
    for kind in (
        TransportKind("smtp", "SMTP", "smtp", "smtp:SmtpServer", aliases=("smtps",)),
        TransportKind("ses", "Amazon SES", "ses", "ses:AmazonSes"),
        TransportKind("sendgrid", "SendGrid", "sendgrid", "sendgrid:SendGridAccount"),
        TransportKind("mailgun", "Mailgun", "mailgun", "mailgun:MailgunAccount"),
        TransportKind("mailjet", "Mailjet", "mailjet", "mailjet:MailjetAccount"),
        TransportKind("gmail", "Gmail API", "gmail", "gmail:GmailApi"),
    )
}


def kind_for_scheme(scheme: str) -> TransportKind | None:
    scheme = scheme.lower()
    for kind in KINDS.values():
        if scheme == kind.scheme or scheme in kind.aliases:
            return kind
    return None


def _schemes() -> str:
    return ", ".join(f"{k.scheme}://" for k in KINDS.values())


def url_kind(url: str) -> TransportKind:
    """The transport a URL names, by its scheme; an unknown scheme is a one-line error."""
    shown = redact_url(url)
    try:
        scheme = urlsplit(url.strip()).scheme
    except ValueError:
        scheme = ""
    kind = kind_for_scheme(scheme) if scheme else None
    if kind is None:
        raise SpecError(
            f"unknown transport URL {shown!r}: it must start with one of {_schemes()}",
            where="--transport",
            hint="e.g. smtp://user@host:587, ses://eu-west-1; or --transport-block NAME",
        )
    return kind


def _split_block(ref: str) -> tuple[TransportKind | None, str]:
    """``KIND/NAME`` (KIND a scheme or a block type slug) → (kind, NAME); ``NAME`` → (None,
    NAME)."""
    prefix, slash, name = ref.partition("/")
    if not slash:
        return None, ref
    kind = kind_for_scheme(prefix)
    if kind is None:
        for k in KINDS.values():
            with contextlib.suppress(ImportError):
                if getattr(k.block_class(), "_block_type_slug", None) == prefix:
                    kind = k
    if kind is None or not name:
        raise SpecError(
            f"unknown transport block {ref!r}: KIND/NAME needs a KIND among {', '.join(KINDS)}",
            where="--transport-block",
            hint="pass the block's name alone (it is looked up among mailcast's block types)"
            " or KIND/NAME, e.g. ses/newsletter",
        )
    return kind, name


class Target(BaseModel):
    """Where a run sends: a transport URL (no secret in it), a saved block (``KIND/NAME``) or an
    outbox folder (a dry run). Runs recorded before transports were chosen by scheme stored
    ``smtp_url``/``smtp_block``: they read as ``url`` and ``smtp/NAME``."""

    url: str | None = Field(default=None, validation_alias=AliasChoices("url", "smtp_url"))
    block: str | None = None
    outbox: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "smtp_block" in data:
            data = dict(data)
            name = data.pop("smtp_block")
            if name and not data.get("block"):
                data["block"] = f"smtp/{name}"
        return data

    @property
    def dry_run(self) -> bool:
        return self.outbox is not None

    @property
    def kind(self) -> TransportKind:
        """The transport this target uses (not for dry runs)."""
        if self.block:
            kind, _ = _split_block(self.block)
            if kind is not None:
                return kind
            return resolve_block(self.block)[0]
        return url_kind(self.url or "")

    def describe(self) -> str:
        if self.outbox is not None:
            return f"outbox {self.outbox}"
        if self.block:
            kind, name = _split_block(self.block)
            label = kind.scheme if kind is not None else "transport"
            return f"{label} block {name}"
        return self.setup().where

    def limit_key(self) -> str:
        """The name of the concurrency limit the run's connections share (one per server or
        provider account): ``smtp:host:port``, ``smtp:BLOCK``, ``ses:eu-west-1`` …"""
        if self.block:
            kind, name = _split_block(self.block)
            return f"{(kind or self.kind).scheme}:{name}"
        scheme = self.kind.scheme
        return f"{scheme}:{self.setup().where.lower().removeprefix(scheme + ' ')}"

    def record(self) -> str:
        """The run's record of where it sends (the ledger's ``runs.transport``): JSON, without
        any password, so that resume and retry reach the same transport."""
        return json.dumps(
            {
                "url": redact_url(self.url, mask=None) if self.url else None,
                "block": self.block,
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
        if self.outbox is None and not (self.url or self.block):
            raise SpecError(
                "no transport given for a real send",
                where="--transport",
                hint="pass --transport URL (smtp://host:port, ses://REGION …), --transport-block"
                " NAME or --smtp-block NAME, or set MAILCAST_TRANSPORT_URL/MAILCAST_SMTP_URL",
            )

    def setup(self) -> TransportSetup:
        """The transport's settings, secrets included (from the block or the settings)."""
        if self.block:
            _, block = resolve_block(self.block)
            return cast(TransportSetup, block.setup())  # type: ignore[attr-defined]
        return url_kind(self.url or "").setup_from_url(self.url or "", Settings())


def describe_record(record: str | None) -> str | None:
    """A run's recorded target for people: ``host:port``, ``SES eu-west-1``, ``ses block
    NAME``, ``outbox DIR``."""
    target = Target.from_record(record)
    if target is None:
        return record
    try:
        return target.describe()
    except (SpecError, TransportError):
        return target.url


def channel_of(record: str | None) -> str:
    """How a run's messages left, for people ("SMTP", "Amazon SES" …), from its record,
    without loading anything."""
    target = Target.from_record(record)
    if target is None:
        return "SMTP"  # runs recorded before targets were structured: SMTP only then
    with contextlib.suppress(SpecError):
        if target.block:
            kind, _ = _split_block(target.block)
            return kind.label if kind is not None else "the transport"
        if target.url:
            return url_kind(target.url).label
    return "the transport"


def resolve_block(ref: str) -> tuple[TransportKind, object]:
    """Load the saved block ``KIND/NAME``, or ``NAME`` looked up among every transport's block
    type; one that does not exist is a one-line error with a hint."""
    kind, name = _split_block(ref)
    kinds = [kind] if kind is not None else list(KINDS.values())
    found: list[tuple[TransportKind, object]] = []
    for k in kinds:
        try:
            cls = k.block_class()
        except ImportError:  # a transport whose optional dependency is not installed
            continue
        block = _try_load(cls, name)
        if block is not None:
            found.append((k, block))
    if len(found) > 1:
        raise SpecError(
            f"{len(found)} saved transport blocks are named {name!r}"
            f" ({', '.join(k.scheme for k, _ in found)})",
            where="--transport-block",
            hint=f"say which: --transport-block KIND/{name}, e.g. {found[0][0].scheme}/{name}",
        )
    if not found:
        what = f"{kind.label} block" if kind is not None else "transport block"
        raise TransportError(
            f"no saved {what} named {name!r}",
            where=f"{kind.scheme if kind is not None else 'transport'} block {name}",
            hint="check the name (`prefect block ls` lists the saved blocks) or save one "
            "(README: the section of your transport)",
        )
    return found[0]


def _try_load(kind: type, name: str) -> object | None:
    try:
        return kind.load(name)  # type: ignore[attr-defined]
    except ValueError:  # Prefect: "Unable to find block document named ..."
        return None


def load_block(kind: type, name: str) -> object:
    """Load a saved Prefect block; one that does not exist is a one-line error with a hint."""
    block = _try_load(kind, name)
    if block is None:
        raise TransportError(
            f"no saved block named {name!r}",
            where=f"block {name}",
            hint="check the name (`prefect block ls` lists the saved blocks) or save one "
            "(docs/deploy.md)",
        )
    return block


def smtp_config(target: Target):  # type: ignore[no-untyped-def]
    """An SMTP target's settings (``SmtpConfig``)."""
    return target.setup()


def make_transport(target: Target) -> Transport:
    """A new, unopened transport (one per connection)."""
    return transports(target)()


def transports(target: Target) -> Callable[[], Transport]:
    """A factory of new, unopened transports to ``target`` (its block or URL is looked up
    once)."""
    if target.outbox is not None:
        from mailcast.transport.outbox import OutboxTransport

        folder = Path(target.outbox)
        return lambda: OutboxTransport(folder)
    return target.setup().new_transport


def check_target(target: Target) -> str:
    """What ``mailcast validate`` checks without sending: the URL's form (or that the block
    exists), the region, credentials present. Returns where it sends."""
    if target.dry_run:
        return target.describe()
    target.check()
    setup = target.setup()
    setup.check()
    return setup.where


def target_for(
    settings: Settings,
    dry_run: bool,
    smtp_block: str | None,
    smtp_url: str | None,
    outbox_dir: str | None,
    run_id: str | None,
    transport_block: str | None = None,
    transport_url: str | None = None,
) -> Target:
    """Where a run's messages go: the outbox folder in a dry run, else the transport: the
    arguments first (a block, then a URL), then the settings (``MAILCAST_TRANSPORT_BLOCK``,
    ``MAILCAST_SMTP_BLOCK``, ``MAILCAST_TRANSPORT_URL``, ``MAILCAST_SMTP_URL``); checked
    before anything is sent."""
    if dry_run:
        outbox = Path(outbox_dir) if outbox_dir else settings.outbox()
        return Target(outbox=str(outbox / (run_id or "run")))
    target = choose(
        transport_block=transport_block,
        smtp_block=smtp_block,
        transport_url=transport_url,
        smtp_url=smtp_url,
        settings=settings,
    )
    target.check()
    if target.block and _split_block(target.block)[0] is None:  # NAME: record it as KIND/NAME
        kind, _ = resolve_block(target.block)
        target = Target(block=f"{kind.scheme}/{target.block}")
    return target


def choose(
    *,
    transport_block: str | None,
    smtp_block: str | None,
    transport_url: str | None,
    smtp_url: str | None,
    settings: Settings,
) -> Target:
    """The target the arguments name, else the settings' (blocks before URLs)."""
    for block, url in (
        (transport_block or (smtp_block and f"smtp/{smtp_block}"), transport_url or smtp_url),
        (
            settings.transport_block or (settings.smtp_block and f"smtp/{settings.smtp_block}"),
            settings.transport_url or settings.smtp_url,
        ),
    ):
        if block:
            return Target(block=block)
        if url:
            url_kind(url)  # an unknown scheme: refused now
            return Target(url=url)
    return Target()
