"""The ledger's tables (SQLAlchemy 2 typed models). Alembic migrations in ``migrations/`` own the
schema; these models must match the head migration (a test checks it). Documented for analysts
in docs/schema.md."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on Postgres, INTEGER (the rowid alias, so it autoincrements) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class DeliveryStatus(StrEnum):
    """A delivery row's status (stored as these strings). pending → sending → sent | failed |
    skipped; ``unknown`` marks rows that may or may not have been delivered: in flight when a
    run crashed, or whose message went out whole but whose reply never came."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"


class RunStatus(StrEnum):
    """A run's status (stored as these strings). planning → sending → completed | paused;
    ``mailcast resume`` turns a paused run back to sending."""

    PLANNING = "planning"
    SENDING = "sending"
    PAUSED = "paused"
    COMPLETED = "completed"


class SmtpStage(StrEnum):
    """The SMTP command whose reply a delivery row records (``deliveries.smtp_stage``): DATA for
    a message accepted, the refused command for a refusal, the command during which the
    connection was lost. NULL when no server replied about the message (it was never sent, or
    mailcast itself refused to send it)."""

    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"


PENDING = DeliveryStatus.PENDING
SENDING = DeliveryStatus.SENDING
SENT = DeliveryStatus.SENT
FAILED = DeliveryStatus.FAILED
SKIPPED = DeliveryStatus.SKIPPED
UNKNOWN = DeliveryStatus.UNKNOWN
FINAL_STATUSES = (SENT, FAILED, SKIPPED)
STATUSES = tuple(DeliveryStatus)

# What can happen to a message after it left (the `events` table's `kind`).
BOUNCE, OPEN, CLICK, UNSUBSCRIBE, COMPLAINT, DEFERRAL, DELIVERED = (
    "bounce", "open", "click", "unsubscribe", "complaint", "deferral", "delivered",
)  # fmt: skip
EVENT_KINDS = (BOUNCE, OPEN, CLICK, UNSUBSCRIBE, COMPLAINT, DEFERRAL, DELIVERED)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.PLANNING)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=True)
    spec: Mapped[dict[str, Any]] = mapped_column(Json)
    transport: Mapped[str | None] = mapped_column(String(500))
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    columns: Mapped[list[str]] = mapped_column(Json, default=list)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("run_id", "row_no", name="uq_deliveries_run_row"),
        # Skipped rows (invalid, duplicate) have no key, so duplicates can be recorded too.
        UniqueConstraint("run_id", "address_key", name="uq_deliveries_run_address"),
        Index("ix_deliveries_run_status", "run_id", "status"),
        Index("ix_deliveries_address_key", "address_key"),
        Index("ix_deliveries_sent_at", "sent_at"),
        Index("ix_deliveries_provider_message_id", "provider_message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    row_no: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(998))
    address_key: Mapped[str | None] = mapped_column(String(320))
    fields: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    smtp_stage: Mapped[str | None] = mapped_column(String(8))
    message_id: Mapped[str | None] = mapped_column(String(300))
    # The id an API provider gave the message (SES, SendGrid, Mailgun, Mailjet…): how the
    # provider's webhook events find their delivery. NULL for SMTP and the outbox.
    provider_message_id: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The send engine's claim on a `sending` row: which sender holds it (a token per chunk and
    # process) and when its message was handed to the transport. A claimed row with no
    # handed_at was only reserved: nothing of its message left, and a resume sends it.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    handed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Event(Base):
    """Something that happened to a delivered message (a bounce, an open, a click…).

    ``run_id`` repeats the delivery's run (denormalized, for per-run queries without a join);
    whoever inserts events must set it to the delivery's ``run_id``.
    """

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(
            "kind IN (" + ", ".join(f"'{k}'" for k in EVENT_KINDS) + ")", name="ck_events_kind"
        ),
        Index("ix_events_run_kind", "run_id", "kind"),
        Index("ix_events_delivery_id", "delivery_id"),
        Index("ix_events_occurred_at", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigId, ForeignKey("deliveries.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    # e.g. {"type": "hard", "code": 550} for a bounce, {"url": ..., "user_agent": ...} for a click
    detail: Mapped[dict[str, Any] | None] = mapped_column(Json)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- engagement tracking, suppression and bounces (migration 0003) --------------------------------

# Why an address is on the suppression list (`suppressions.reason`).
UNSUBSCRIBED, HARD_BOUNCE, SUPPRESSED_COMPLAINT, MANUAL = (
    "unsubscribed", "hard_bounce", "complaint", "manual",
)  # fmt: skip
SUPPRESSION_REASONS = (UNSUBSCRIBED, HARD_BOUNCE, SUPPRESSED_COMPLAINT, MANUAL)


class Suppression(Base):
    """An address never to send to again, whatever a campaign's recipient data says."""

    __tablename__ = "suppressions"
    __table_args__ = (
        CheckConstraint(
            "reason IN (" + ", ".join(f"'{r}'" for r in SUPPRESSION_REASONS) + ")",
            name="ck_suppressions_reason",
        ),
        UniqueConstraint("address_key", name="uq_suppressions_address_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The normalized, lower-cased address (what `deliveries.address_key` holds).
    address_key: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(20))
    # Where it came from: "one-click", "unsubscribe page", "dsn", "smtp", "import FILE", "cli"...
    source: Mapped[str | None] = mapped_column(String(200))
    delivery_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("deliveries.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Link(Base):
    """A link of a run's HTML messages, rewritten to the tracking service's ``/c/`` address.
    Click redirects go to ``url`` as stored here, never to anything taken from the request."""

    __tablename__ = "links"
    __table_args__ = (UniqueConstraint("run_id", "url_hash", name="uq_links_run_url"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # 1-based, in the message where first seen
    url: Mapped[str] = mapped_column(Text)
    url_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of url (unique per run)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class InboundMessage(Base):
    """A message read from the bounce mailbox (a DSN, a complaint report, anything else), so
    that each is counted once even when moving it out of the inbox failed."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("message_key", name="uq_inbound_messages_key"),
        Index("ix_inbound_messages_delivery_id", "delivery_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The message's Message-ID, or "sha256:<hex>" of its bytes when it has none.
    message_key: Mapped[str] = mapped_column(String(400))
    mailbox: Mapped[str] = mapped_column(String(500))
    # hard, soft, complaint, deferral, unsubscribe, or ignored (not a bounce / no delivery)
    outcome: Mapped[str] = mapped_column(String(20))
    delivery_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("deliveries.id", ondelete="SET NULL")
    )
    detail: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- audiences: contacts, lists, memberships, consent, segments (migration 0008) ----------------


class ContactStatus(StrEnum):
    """A contact's status: ``blocklisted`` contacts are never planned, whatever their lists say."""

    ENABLED = "enabled"
    BLOCKLISTED = "blocklisted"


class OptIn(StrEnum):
    """How a list subscribes people: ``single`` (a member is confirmed at once) or ``double``
    (a member stays unconfirmed until the link of a confirmation message is followed)."""

    SINGLE = "single"
    DOUBLE = "double"


class MembershipStatus(StrEnum):
    UNCONFIRMED = "unconfirmed"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class ConsentAction(StrEnum):
    """What a consent record records (``consent_records.action``)."""

    SUBSCRIBE = "subscribe"
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    BLOCKLIST = "blocklist"
    UNBLOCKLIST = "unblocklist"
    DELETE = "delete"
    EXPORT = "export"
    ERASE = "erase"


class ConsentMethod(StrEnum):
    """How a consent record's action came about (``consent_records.method``)."""

    IMPORT = "import"
    FORM = "form"
    API = "api"
    CLI = "cli"
    ONE_CLICK = "one_click"
    PREFERENCES = "preferences"
    CONFIRMATION = "confirmation"


def _check(column: str, values: type[StrEnum], name: str) -> CheckConstraint:
    return CheckConstraint(
        f"{column} IN (" + ", ".join(f"'{v.value}'" for v in values) + ")", name=name
    )


class Contact(Base):
    """A person mailcast keeps: one row per address (case-insensitive), with custom attributes
    (the fields a campaign's templates see)."""

    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("address_key", name="uq_contacts_address_key"),
        _check("status", ContactStatus, "ck_contacts_status"),
        Index("ix_contacts_attributes", "attributes", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(320))  # as normalized by validation
    address_key: Mapped[str] = mapped_column(String(320))  # lower-cased: the unique key
    name: Mapped[str | None] = mapped_column(String(300))
    attributes: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=ContactStatus.ENABLED)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MailingList(Base):
    """A list people subscribe to (``lists``)."""

    __tablename__ = "lists"
    __table_args__ = (
        UniqueConstraint("name", name="uq_lists_name"),
        _check("optin", OptIn, "ck_lists_optin"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    optin: Mapped[str] = mapped_column(String(8), default=OptIn.SINGLE)
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Membership(Base):
    """A contact on a list, with its status on that list."""

    __tablename__ = "memberships"
    __table_args__ = (
        _check("status", MembershipStatus, "ck_memberships_status"),
        Index("ix_memberships_list_status", "list_id", "status"),
    )

    contact_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    list_id: Mapped[int] = mapped_column(
        ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConsentRecord(Base):
    """One subscription, confirmation, unsubscription, blocklisting, deletion, export or erasure:
    when, how, from where, and the consent text shown. Kept when the contact is deleted or
    erased (``contact_id`` then NULL; an erasure's record holds no address)."""

    __tablename__ = "consent_records"
    __table_args__ = (
        _check("action", ConsentAction, "ck_consent_records_action"),
        _check("method", ConsentMethod, "ck_consent_records_method"),
        Index("ix_consent_records_contact", "contact_id"),
        Index("ix_consent_records_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("contacts.id", ondelete="SET NULL")
    )
    list_id: Mapped[int | None] = mapped_column(ForeignKey("lists.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(500))  # a file, a form's IP, "cli" …
    consent_text: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Segment(Base):
    """A saved filter over contacts (attributes, list membership, engagement), in mailcast's
    segment expression language; compiled to SQL with bound parameters when used."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("name", name="uq_segments_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    expression: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ErasedContact(Base):
    """An erased person, by the SHA-256 of their address key only: a later import reports them
    instead of bringing them back silently."""

    __tablename__ = "erased_contacts"

    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ContactSend(Base):
    """A campaign key a contact has received (``once_per_contact``): planning skips them."""

    __tablename__ = "contact_sends"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    address_key: Mapped[str] = mapped_column(String(320), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
