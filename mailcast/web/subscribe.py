"""The public subscription routes of ``mailcast serve``: subscribing with consent.

* ``GET /s/{list}`` → a plain HTML form: address, optional name, the consent text (a box to
  tick), a honeypot field hidden with CSS, and a proof-of-work challenge
  (:mod:`mailcast.web.challenge`) that a small inline script solves; nothing else needs
  JavaScript. An unknown list is a 404.
* ``POST /s/{list}`` → rate-limited per client IP (429), bots refused with a plain page (the
  honeypot filled, a forged, expired, reused or unsolved challenge), the address validated like
  a campaign's; then the address is subscribed: a single opt-in list confirms it at once, a
  double opt-in one records it ``unconfirmed`` and sends a confirmation message through the run
  machinery (:mod:`mailcast.engagement.confirmation`) after the answer. Every step writes a
  consent record (method ``form``, source the client's IP, the consent text shown).
* ``GET /s/{list}/confirm/{token}`` → confirms (a consent record, method ``confirmation``).
* ``GET /p/{token}`` and ``POST /p/{token}`` → the preference page reached from each message
  (``{{ preferences_url }}``): the lists the address is on, to stay on or leave (consent
  records, method ``preferences``).

The pages never show an address in full and escape everything that came from a person.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailcast.engagement import tokens
from mailcast.errors import (
    AudienceConflictError,
    AudienceNotFoundError,
    MailcastError,
)
from mailcast.ledger import subscriptions as db
from mailcast.ledger.models import ConsentMethod, MembershipStatus, OptIn
from mailcast.recipients import Recipient, contacts
from mailcast.recipients.validate import RowChecker
from mailcast.settings import Settings
from mailcast.web import challenge
from mailcast.web.pages import mask, not_found, page, read_form
from mailcast.web.ratelimit import RateLimiter

log = logging.getLogger("mailcast.subscribe")

HONEYPOT = "website"  # a field people never see (hidden with CSS) and bots fill in
FORM_STYLE = """
label { display: block; margin: 1rem 0 .3rem; }
input[type=email], input[type=text] { font: inherit; width: 100%; padding: .4rem;
  box-sizing: border-box; }
.consent { display: flex; gap: .5rem; align-items: flex-start; }
.consent input { margin-top: .35rem; }
.hp { position: absolute; left: -10000px; width: 1px; height: 1px; overflow: hidden; }
.error { color: #b3261e; }
button { background: #1f6feb; margin-top: 1rem; }
"""
FORM_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src "
    + challenge.script_hash()
    + "; form-action 'self'"
}


@dataclass
class Posted:
    """What the form sent back (as typed: shown again, escaped, when it is refused)."""

    email: str = ""
    name: str = ""


def client_ip(request: Request) -> str:
    """The client's address (uvicorn puts the proxy's X-Forwarded-For there when trusted)."""
    return request.client.host if request.client else "unknown"


class SubscribeService:
    """The routes' state: the ledger, the signing secret, the settings, the used challenges
    and the rate limiter."""

    def __init__(self, ledger: Any, secret: bytes, settings: Settings | None = None) -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.secret = secret
        self.settings = settings or Settings()
        self.seen = challenge.SeenChallenges()
        self.limiter = RateLimiter(
            self.settings.subscribe_rate_per_minute, self.settings.subscribe_burst
        )

    def close_unfinished(self) -> None:
        """At start: close the confirmation runs a stopped service left open."""
        from mailcast.engagement.confirmation import close_unfinished

        try:
            close_unfinished(self.ledger)
        except Exception:
            log.exception("cannot close the unfinished confirmation runs")

    # -- helpers ------------------------------------------------------------------------------

    def consent_text(self, list_name: str) -> str:
        return self.settings.subscribe_consent_text.replace("{list}", list_name)

    def _form(
        self, lst: db.ListInfo, posted: Posted | None = None, error: str | None = None
    ) -> Response:
        bits = self.settings.subscribe_challenge_bits
        text = challenge.issue(
            self.secret, lst.name, bits, self.settings.subscribe_challenge_seconds
        )
        posted = posted or Posted()
        e = html.escape
        about = f"<p>{e(lst.description)}</p>\n" if lst.description else ""
        problem = f'<p class="error" role="alert">{e(error)}</p>\n' if error else ""
        body = f"""{about}{problem}<form id="subscribe" method="post" action=""
 data-challenge="{e(text)}" data-bits="{bits}">
<label for="email">Email address</label>
<input type="email" id="email" name="email" required maxlength="320" autocomplete="email"
 value="{e(posted.email)}">
<label for="name">Name (optional)</label>
<input type="text" id="name" name="name" maxlength="200" autocomplete="name"
 value="{e(posted.name)}">
<div class="hp" aria-hidden="true"><label for="{HONEYPOT}">Leave this empty</label>
<input type="text" id="{HONEYPOT}" name="{HONEYPOT}" tabindex="-1" autocomplete="off"></div>
<label class="consent"><input type="checkbox" name="consent" value="yes" required>
<span>{e(self.consent_text(lst.name))}</span></label>
<input type="hidden" name="challenge" value="{e(text)}">
<input type="hidden" name="pow" value="">
<button type="submit">Subscribe</button> <span id="pow-status" aria-live="polite"></span>
<noscript><p>This form needs JavaScript for one thing: a short computation in your browser that
shows you are not a bot (nothing is sent anywhere else).</p></noscript>
</form>"""
        return page(
            f"Subscribe to {lst.name}",
            body,
            400 if error else 200,
            style=FORM_STYLE,
            script=challenge.SCRIPT,
            headers=FORM_HEADERS,
        )

    async def _list(self, request: Request) -> db.ListInfo | None:
        name = request.path_params["list"]
        if not name or len(name) > 200:
            return None
        return await run_in_threadpool(db.find_list, self.engine, name)

    @staticmethod
    def _unavailable() -> Response:
        return page(
            "Please try again",
            "<p>We could not record your request just now. Please try again in a minute.</p>",
            503,
            headers={"Retry-After": "60"},
        )

    # -- the form -----------------------------------------------------------------------------

    async def form(self, request: Request) -> Response:
        try:
            lst = await self._list(request)
        except Exception:
            log.exception("cannot look up list %r", request.path_params["list"])
            return self._unavailable()
        if lst is None:
            return not_found()
        return self._form(lst)

    async def submit(self, request: Request) -> Response:
        ip = client_ip(request)
        wait = self.limiter.take(ip)
        if wait > 0:
            log.info("subscription form: %s rate limited", ip)
            return page(
                "Too many requests",
                "<p>Too many requests from your address. Please wait a minute and try again.</p>",
                429,
                headers={"Retry-After": self.limiter.retry_after(wait)},
            )
        try:
            lst = await self._list(request)
        except Exception:
            log.exception("cannot look up list %r", request.path_params["list"])
            return self._unavailable()
        if lst is None:
            return not_found()
        form = await read_form(request)
        if form is None:
            return page("Refused", "<p>This is not a form we can read.</p>", 400)

        def field(name: str, limit: int) -> str:
            value = form.get(name)
            return value.strip()[:limit] if isinstance(value, str) else ""

        posted = Posted(field("email", 400), field("name", 200))
        if field(HONEYPOT, 200):
            log.info("subscription form for %s: honeypot filled (from %s)", lst.name, ip)
            return self._refused()
        why = challenge.check(
            self.secret,
            lst.name,
            field("challenge", 100),
            field("pow", 20),
            self.seen,
            min_bits=self.settings.subscribe_challenge_bits,
        )
        if why is not None:
            log.info("subscription form for %s: challenge %s (from %s)", lst.name, why, ip)
            if why == challenge.EXPIRED:
                return self._form(lst, posted, "The form expired. Please submit it again.")
            return self._refused()
        if field("consent", 10) != "yes":
            return self._form(lst, posted, "Please tick the box to give your consent.")
        row = Recipient(0, posted.email, {})
        RowChecker(["email"])(row)  # the same validation as campaigns'
        if row.reason is not None or row.key is None:
            why_not = row.reason or "invalid address"
            return self._form(lst, posted, f"This address cannot be used: {why_not}")
        address, key = row.address, row.key
        double = lst.optin == OptIn.DOUBLE
        setup = None
        if double:
            try:
                setup = self._confirmations()
            except MailcastError as exc:
                log.error("list %s is double opt-in but %s", lst.name, exc.one_line())
                return self._unavailable()
        try:
            status, contact_id = await run_in_threadpool(
                self._subscribe, lst, address, key, posted.name, ip
            )
        except Exception:
            log.exception("cannot subscribe to list %s", lst.name)
            return self._unavailable()
        task = None
        if status is None:
            log.info("subscription to %s refused: the contact is blocklisted", lst.name)
        elif double and status == MembershipStatus.UNCONFIRMED:
            task = BackgroundTask(self._send_confirmation, setup, lst, contact_id, address, key)
        who = html.escape(mask(address))
        if double:
            return page(
                "Check your inbox",
                f"<p>Unless <b>{who}</b> is on <b>{html.escape(lst.name)}</b> already, we sent"
                " it a message: follow its link to confirm your subscription.</p>",
                background=task,
            )
        return page(
            "You are subscribed",
            f"<p><b>{who}</b> will get email from <b>{html.escape(lst.name)}</b>.</p>",
        )

    def _subscribe(
        self, lst: db.ListInfo, address: str, key: str, name: str, ip: str
    ) -> tuple[str | None, int]:
        """Subscribe through the contacts API: (the membership's status, the contact's id); the
        status is None for a blocklisted contact (nothing written). A name typed in the form is
        kept for a new contact only: a public form never renames someone."""
        known = db.contact_by_key(self.engine, key)
        try:
            status = contacts.subscribe(
                self.engine,
                address,
                lst.name,
                method=ConsentMethod.FORM,
                source=ip,
                consent_text=self.consent_text(lst.name),
                name=(name or None) if known is None else None,
            )
        except AudienceConflictError:
            return None, known.id if known is not None else 0
        contact = known or db.contact_by_key(self.engine, key)
        assert contact is not None
        return str(status), contact.id

    def _refused(self) -> Response:
        return page(
            "Refused",
            "<p>We could not accept this form. Please load the page again and submit it from"
            " your browser.</p>",
            400,
        )

    def _confirmations(self) -> Any:
        from mailcast.engagement.confirmation import setup_from

        return setup_from(self.settings)

    def _send_confirmation(
        self, setup: Any, lst: db.ListInfo, contact_id: int, address: str, key: str
    ) -> None:
        from mailcast.engagement.confirmation import recently_sent, send_confirmation

        try:
            if recently_sent(self.ledger, lst.name, key):
                log.info("confirmation for list %s: one was sent minutes ago", lst.name)
                return
            send_confirmation(
                self.ledger,
                setup,
                self.secret,
                list_id=lst.id,
                list_name=lst.name,
                contact_id=contact_id,
                address=address,
                address_key=key,
                suppressed_reason=db.suppressed_reason(self.engine, key),
            )
        except Exception:
            log.exception("cannot send the confirmation for list %s", lst.name)

    # -- the confirmation link -----------------------------------------------------------------

    async def confirm(self, request: Request) -> Response:
        found = tokens.verify_confirmation(self.secret, request.path_params["token"], time.time())
        try:
            lst = await self._list(request)
        except Exception:
            log.exception("cannot look up list %r", request.path_params["list"])
            return self._unavailable()
        if lst is None:
            return not_found()
        if found is None:
            again = f"/s/{quote(lst.name, safe='')}"
            return page(
                "This link does not work",
                "<p>The link has expired or is not complete. You can"
                f' <a href="{html.escape(again)}">subscribe again</a>.</p>',
                404,
            )
        if found.list_id != lst.id:
            return not_found()
        try:
            contact = await run_in_threadpool(db.contact_by_id, self.engine, found.contact_id)
            status = None
            if contact is not None:
                status = await run_in_threadpool(
                    self._confirm, contact.address_key, lst.name, client_ip(request)
                )
        except Exception:
            log.exception("cannot confirm contact %s on list %s", found.contact_id, lst.name)
            return self._unavailable()
        if status is None or contact is None:
            return not_found()
        who = html.escape(mask(contact.address))
        name = html.escape(lst.name)
        if status == MembershipStatus.UNSUBSCRIBED:
            return page(
                "You left this list",
                f"<p><b>{who}</b> unsubscribed from <b>{name}</b> after this link was sent;"
                " it does not subscribe you again.</p>",
            )
        return page(
            "Subscription confirmed",
            f"<p><b>{who}</b> will get email from <b>{name}</b>.</p>",
        )

    def _confirm(self, key: str, list_name: str, ip: str) -> str | None:
        try:
            return str(
                contacts.confirm(
                    self.engine, key, list_name, method=ConsentMethod.CONFIRMATION, source=ip
                )
            )
        except AudienceNotFoundError:
            return None

    # -- the preference page ------------------------------------------------------------------

    async def _preferences_of(
        self, request: Request
    ) -> tuple[int, db.ContactInfo | None, list[db.MembershipInfo]] | None:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.PREFERENCES)
        if token is None:
            return None
        audience = await run_in_threadpool(db.delivery_audience, self.engine, token.delivery_id)
        if audience is None:
            return None
        key, _recipients = audience
        contact = await run_in_threadpool(db.contact_by_key, self.engine, key) if key else None
        lists = await run_in_threadpool(db.memberships, self.engine, contact.id) if contact else []
        return token.delivery_id, contact, lists

    def _preferences_page(
        self,
        delivery_id: int,
        contact: db.ContactInfo | None,
        lists: list[db.MembershipInfo],
        note: str = "",
    ) -> Response:
        e = html.escape
        everything = tokens.make(self.secret, tokens.UNSUBSCRIBE, delivery_id)
        stop_all = f"""<form method="post" action="/u/{everything}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<input type="hidden" name="source" value="page">
<p>Or stop all email from us: <button type="submit" class="all">Unsubscribe from everything</button></p>
</form>"""
        if contact is None or not lists:
            return page(
                "Your subscriptions",
                f"{note}<p>This address is on none of our lists.</p>\n{stop_all}",
                style="button.all { background: #b3261e; }",
            )
        rows = []
        for m in lists:
            about = f" <small>{e(m.description)}</small>" if m.description else ""
            if m.status == MembershipStatus.UNSUBSCRIBED:
                join = f"/s/{quote(m.list_name, safe='')}"
                rows.append(
                    f"<li>{e(m.list_name)}{about}: you left this list"
                    f' (<a href="{e(join)}">join again</a>)</li>'
                )
            else:
                pending = " (not confirmed yet)" if m.status == MembershipStatus.UNCONFIRMED else ""
                rows.append(
                    f'<li><label><input type="checkbox" name="stay" value="{m.list_id}" checked>'
                    f" {e(m.list_name)}{pending}</label>{about}</li>"
                )
        body = f"""{note}<p>The lists <b>{e(mask(contact.address))}</b> is on. Untick a list to
leave it.</p>
<form method="post" action="">
<input type="hidden" name="sent" value="1">
<ul>
{chr(10).join(rows)}
</ul>
<button type="submit">Save my choices</button>
</form>
{stop_all}"""
        return page(
            "Your subscriptions",
            body,
            style="button { background: #1f6feb; } button.all { background: #b3261e; }"
            " ul { list-style: none; padding: 0; } li { margin: .5rem 0; }",
        )

    async def preferences(self, request: Request) -> Response:
        try:
            found = await self._preferences_of(request)
        except Exception:
            log.exception("cannot read the preferences")
            return self._unavailable()
        if found is None:
            return not_found()
        return self._preferences_page(*found)

    async def save_preferences(self, request: Request) -> Response:
        try:
            found = await self._preferences_of(request)
        except Exception:
            log.exception("cannot read the preferences")
            return self._unavailable()
        if found is None:
            return not_found()
        delivery_id, contact, lists = found
        if contact is None:
            return self._preferences_page(delivery_id, contact, lists)
        form = await read_form(request)
        if form is None:
            return page("Refused", "<p>This is not a form we can read.</p>", 400)
        stay = set(form.getlist("stay"))
        left = []
        try:
            for m in lists:
                if m.status != MembershipStatus.UNSUBSCRIBED and str(m.list_id) not in stay:
                    await run_in_threadpool(
                        partial(
                            contacts.unsubscribe,
                            self.engine,
                            contact.address_key,
                            m.list_name,
                            method=ConsentMethod.PREFERENCES,
                            source=client_ip(request),
                        )
                    )
                    left.append(m.list_name)
            lists = await run_in_threadpool(db.memberships, self.engine, contact.id)
        except Exception:
            log.exception("cannot save the preferences of contact %s", contact.id)
            return self._unavailable()
        if left:
            names = ", ".join(f"<b>{html.escape(n)}</b>" for n in left)
            note = f'<p role="status">You left {names}.</p>\n'
        else:
            note = '<p role="status">Your choices are saved.</p>\n'
        return self._preferences_page(delivery_id, contact, lists, note)

    def routes(self) -> list[Route]:
        return [
            Route("/s/{list}", self.form, methods=["GET", "HEAD"]),
            Route("/s/{list}", self.submit, methods=["POST"]),
            Route("/s/{list}/confirm/{token}", self.confirm, methods=["GET"]),
            Route("/p/{token}", self.preferences, methods=["GET", "HEAD"]),
            Route("/p/{token}", self.save_preferences, methods=["POST"]),
        ]
