"""Double opt-in: the confirmation message, sent through the run machinery.

Each confirmation is a run of the campaign ``confirm:LIST`` in the ledger with one delivery row
(the new address), sent by the send engine (``engine/chunk.py``: claim, compose, hand over,
send, record) over the server's configured transport (``MAILCAST_TRANSPORT_URL``,
``MAILCAST_TRANSPORT_BLOCK``, ``MAILCAST_SMTP_URL`` …, as ``mailcast send`` resolves them), so it
ends with a recorded status like any campaign's row and shows in ``mailcast runs`` and
``mailcast report``. ``mailcast serve`` sends it after answering the form (a background task,
never in the request). A row the engine could not send (the server unreachable until the
retry budget ran out) is recorded ``failed`` with ``temporary failure: …``, which ``mailcast
retry RUN_ID --failed`` sends again.

The message holds the link ``PUBLIC_URL/s/LIST/confirm/TOKEN`` (a signed token naming the contact
and the list, valid ``subscribe_confirm_days``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from mailcast.engagement import tokens
from mailcast.errors import MailcastError, SpecError
from mailcast.recipients import Recipient

if TYPE_CHECKING:
    from mailcast.ledger.store import Ledger
    from mailcast.settings import Settings
    from mailcast.spec import CampaignSpec
    from mailcast.transport.factory import Target

log = logging.getLogger("mailcast.subscribe")

CAMPAIGN_PREFIX = "confirm:"
# A second confirmation to the same address for the same list within this many seconds is not
# sent (the form posted twice, or someone using the form to flood an inbox): the first link
# still works.
RESEND_AFTER_SECONDS = 600
COLUMNS = ["email", "list", "confirm_url"]

SUBJECT = "Please confirm your subscription to {{ list }}"
TEXT = """Hello,

Someone, hopefully you, asked to receive email from {{ list }} at this address.
To confirm, open this link:

{{ confirm_url }}

If it was not you, ignore this message: you will not be subscribed.
"""
HTML = """<!doctype html>
<html><body style="font: 16px/1.5 system-ui, sans-serif; color: #222">
<p>Hello,</p>
<p>Someone, hopefully you, asked to receive email from <b>{{ list }}</b> at this address.</p>
<p><a href="{{ confirm_url }}" style="display: inline-block; padding: .6rem 1.4rem;
 background: #1f6feb; color: #fff; border-radius: .3rem; text-decoration: none">Confirm my
 subscription</a></p>
<p>If it was not you, ignore this message: you will not be subscribed.</p>
</body></html>
"""


@dataclass(frozen=True)
class ConfirmationSetup:
    """What sending confirmations needs, from the settings: checked once, before a double
    opt-in subscription is recorded."""

    public_url: str
    sender: str
    target: Target
    valid_seconds: float


def setup_from(settings: Settings) -> ConfirmationSetup:
    """The confirmations' settings; SpecError naming the first one missing."""
    from mailcast.transport.factory import target_for

    if not settings.public_url:
        raise SpecError(
            "no public URL for the confirmation links",
            where="MAILCAST_PUBLIC_URL",
            hint="set MAILCAST_PUBLIC_URL to the public address of `mailcast serve`",
        )
    if not settings.subscribe_sender:
        raise SpecError(
            "no sender for confirmation messages",
            where="MAILCAST_SUBSCRIBE_SENDER",
            hint='set MAILCAST_SUBSCRIBE_SENDER, e.g. "Acme News <news@acme.example>"',
        )
    try:
        target = target_for(settings, False, None, None, None, None)
    except SpecError as exc:
        raise SpecError(
            f"no transport for confirmation messages: {exc.message}",
            where="MAILCAST_TRANSPORT_URL",
            hint="set MAILCAST_TRANSPORT_URL (smtp://…, ses://REGION …) or"
            " MAILCAST_TRANSPORT_BLOCK, as for `mailcast send`",
        ) from None
    return ConfirmationSetup(
        public_url=settings.public_url.rstrip("/"),
        sender=settings.subscribe_sender,
        target=target,
        valid_seconds=settings.subscribe_confirm_days * 86400,
    )


def confirmation_spec(list_name: str, sender: str) -> CampaignSpec:
    """The campaign of a list's confirmation messages (inline templates, one connection, a
    ledger hand-over per message, no tracking)."""
    from mailcast.spec import spec_from_dict

    return spec_from_dict(
        {
            "name": "confirm",
            "sender": sender,
            "subject": SUBJECT,
            "text": TEXT,
            "html": HTML,
            "recipients": {"path": "confirmation"},  # never read: the row is planned here
            "chunk_size": 1,
            "connections": 1,
            "max_attempts": 3,
            "retry_base_seconds": 2,
            "max_retry_seconds": 120,
            "pause_after_failures": 0,
            "crash_window": "ledger",
            "server_limit": False,
            "headers": {"Auto-Submitted": "auto-generated"},
        },
        where=f"confirmation of list {list_name!r}",
    )


def confirm_url(
    secret: bytes, setup: ConfirmationSetup, list_name: str, contact_id: int, list_id: int
) -> str:
    expires = int(time.time() + setup.valid_seconds)
    token = tokens.make_confirmation(secret, contact_id, list_id, expires)
    return f"{setup.public_url}/s/{quote(list_name, safe='')}/confirm/{token}"


def close_unfinished(ledger: Ledger, older_than: float = RESEND_AFTER_SECONDS) -> list[str]:
    """Confirmation runs that a stopped ``mailcast serve`` left open (planning or sending,
    older than ``older_than`` seconds) get their final statuses: rows never sent become
    ``failed`` (``temporary failure: …``: ``mailcast retry RUN_ID --failed`` sends them), a row
    whose message was on its way ``unknown``. ``mailcast serve`` calls it when it starts.
    Returns the runs closed."""
    from datetime import timedelta

    from mailcast.engine.summary import finish_run
    from mailcast.ledger.models import utcnow
    from mailcast.ledger.subscriptions import fail_open_rows, unfinished_runs

    closed = []
    before = utcnow() - timedelta(seconds=older_than)
    for run_id in unfinished_runs(ledger.engine, CAMPAIGN_PREFIX, before):
        fail_open_rows(
            ledger.engine, run_id, "temporary failure: not sent: the service stopped while sending"
        )
        finish_run(ledger, run_id)
        closed.append(run_id)
    if closed:
        log.warning("closed %d confirmation run(s) a stopped service left open", len(closed))
    return closed


def recently_sent(ledger: Ledger, list_name: str, address_key: str) -> bool:
    """Whether a confirmation for this list went to the address in the last
    RESEND_AFTER_SECONDS."""
    from datetime import timedelta

    from mailcast.ledger.models import utcnow
    from mailcast.ledger.subscriptions import confirmation_sent_since

    since = utcnow() - timedelta(seconds=RESEND_AFTER_SECONDS)
    return confirmation_sent_since(ledger.engine, CAMPAIGN_PREFIX + list_name, address_key, since)


def send_confirmation(
    ledger: Ledger,
    setup: ConfirmationSetup,
    secret: bytes,
    *,
    list_id: int,
    list_name: str,
    contact_id: int,
    address: str,
    address_key: str,
    suppressed_reason: str | None = None,
) -> str:
    """Plan and send one confirmation message; returns the run's id. The row ends ``sent``,
    ``failed`` (with the reason), ``unknown`` (the server may have it) or ``skipped`` (the
    address is on the suppression list)."""
    from mailcast.engine.chunk import send_chunk
    from mailcast.engine.summary import finish_run
    from mailcast.ledger.models import RunStatus, utcnow
    from mailcast.ledger.subscriptions import fail_open_rows

    spec = confirmation_spec(list_name, setup.sender)
    run_id = ledger.create_run(
        CAMPAIGN_PREFIX + list_name,
        spec.model_dump(mode="json"),
        dry_run=False,
        transport=setup.target.record(),
    )
    url = confirm_url(secret, setup, list_name, contact_id, list_id)
    row = Recipient(1, address, {"email": address, "list": list_name, "confirm_url": url})
    if suppressed_reason:
        row.reason = f"suppressed:{suppressed_reason}"
    else:
        row.key = address_key
    ledger.plan(run_id, [row], COLUMNS)
    ledger.set_run(run_id, status=RunStatus.SENDING, started_at=utcnow())
    stopped = "the send stopped"
    try:
        ids = list(ledger.all_pending_ids(run_id))
        if ids:
            send_chunk(spec, run_id, (ids[0], ids[-1]), ledger.url, setup.target, threads=1)
    except MailcastError as exc:
        log.warning("confirmation run %s stopped: %s", run_id, exc.one_line())
        stopped = str(exc)
    except Exception as exc:
        log.exception("confirmation run %s failed", run_id)
        stopped = f"{type(exc).__name__}: {exc}"
    finally:
        # a row the engine left open (it stopped) ends failed, for `mailcast retry --failed`
        fail_open_rows(ledger.engine, run_id, f"temporary failure: not sent: {stopped}"[:2000])
        summary = finish_run(ledger, run_id)
    log.info("confirmation for list %s: run %s %s", list_name, run_id, dict(summary.counts))
    return run_id
