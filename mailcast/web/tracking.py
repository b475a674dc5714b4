"""The tracking service: a small Starlette (ASGI) app, served by uvicorn (``mailcast serve``).

* ``GET /o/{token}.gif`` → a 1×1 GIF at once; the ``open`` event is recorded after the response
  (every open is kept; the views count unique ones). A recording failure is logged and the pixel
  is still returned.
* ``GET /c/{token}`` → ``302`` to the link's URL as stored in the ``links`` table for the
  delivery's run (never anything from the request: the service is no open redirect); a ``click``
  event is recorded after the response.
* ``GET /u/{token}`` → a plain confirmation page with a button (a link scanner's GET never
  unsubscribes); ``POST /u/{token}`` → unsubscribes at once (RFC 8058 one-click: mailbox
  providers POST ``List-Unsubscribe=One-Click``): an ``unsubscribe`` event and a suppression.
* ``GET /healthz`` → ``ok`` (for a reverse proxy's or an orchestrator's health check).
* ``POST /hooks/ses``, ``/hooks/sendgrid``, ``/hooks/mailgun``, ``/hooks/mailjet``: the API
  providers' event webhooks (:mod:`mailcast.web.hooks`).

A token that is not genuine (forged, altered, truncated, of another kind) gets ``404`` and
records nothing. The app never shows an address in full.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from mailcast.engagement import record, tokens
from mailcast.ledger import events
from mailcast.ledger.models import CLICK, OPEN
from mailcast.web import hooks

log = logging.getLogger("mailcast.engagement")

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
PAGE_HEADERS = {
    **NO_CACHE,
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404, headers=NO_CACHE)


def mask(address: str) -> str:
    """``j…@example.com``: enough for a person to recognize their address, no more."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "…"
    return f"{local[:1]}…@{domain}"


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{html.escape(title)}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; padding: 0 1rem;
  color: #222; }}
button {{ font: inherit; padding: .6rem 1.4rem; border: 0; border-radius: .3rem;
  background: #b3261e; color: #fff; cursor: pointer; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
    return HTMLResponse(doc, status_code=status, headers=PAGE_HEADERS)


def _client(request: Request) -> dict[str, Any]:
    agent = request.headers.get("user-agent")
    return {"user_agent": agent[:300]} if agent else {}


class TrackingService:
    """The routes' state: the ledger's engine and the signing secret."""

    def __init__(self, database_url: str, secret: bytes) -> None:
        from mailcast.ledger.store import Ledger

        self.ledger = Ledger(database_url, create=False)
        self.engine = self.ledger.engine
        self.secret = secret

    # -- recording (runs in a thread, after the response) -----------------------------------

    def _record(self, delivery_id: int, kind: str, detail: dict[str, Any]) -> None:
        try:
            if not events.record_event(self.engine, delivery_id, kind, detail or None):
                log.info("%s for delivery %s not recorded: no such delivery", kind, delivery_id)
        except Exception:
            log.exception("could not record the %s event of delivery %s", kind, delivery_id)

    # -- routes -------------------------------------------------------------------------------

    async def pixel(self, request: Request) -> Response:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.OPEN)
        if token is None:
            return _not_found()
        task = None
        if request.method == "GET":  # a HEAD is no open
            task = BackgroundTask(self._record, token.delivery_id, OPEN, _client(request))
        return Response(PIXEL, media_type="image/gif", headers=NO_CACHE, background=task)

    async def click(self, request: Request) -> Response:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.CLICK)
        if token is None or token.link_id is None:
            return _not_found()
        try:
            target = await run_in_threadpool(
                events.link_target, self.engine, token.delivery_id, token.link_id
            )
        except Exception:
            log.exception("cannot look up link %s of delivery %s", token.link_id, token.delivery_id)
            return PlainTextResponse(
                "temporarily unavailable, please try again",
                status_code=503,
                headers={**NO_CACHE, "Retry-After": "30"},
            )
        if target is None:
            return _not_found()
        url, _run_id, position = target
        detail = {"link_id": token.link_id, "url": url[:2000], "position": position}
        detail.update(_client(request))
        task = None
        if request.method == "GET":
            task = BackgroundTask(self._record, token.delivery_id, CLICK, detail)
        return RedirectResponse(url, status_code=302, headers=NO_CACHE, background=task)

    async def unsubscribe_page(self, request: Request) -> Response:
        raw = request.path_params["token"]
        token = tokens.verify(self.secret, raw, tokens.UNSUBSCRIBE)
        if token is None:
            return _not_found()
        try:
            info = await run_in_threadpool(events.delivery, self.engine, token.delivery_id)
        except Exception:
            log.exception("cannot look up delivery %s", token.delivery_id)
            info = None
        else:
            if info is None:
                return _not_found()
        who = html.escape(mask(info.address)) if info else "this address"
        what = f" from <b>{html.escape(info.campaign)}</b>" if info else ""
        body = f"""<p>Stop sending email to <b>{who}</b>{what}?</p>
<form method="post" action="">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<input type="hidden" name="source" value="page">
<button type="submit">Unsubscribe</button>
</form>"""
        return _page("Unsubscribe", body)

    async def unsubscribe(self, request: Request) -> Response:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.UNSUBSCRIBE)
        if token is None:
            return _not_found()
        source = "one-click"
        try:
            form = await request.form()
            if form.get("source") == "page":
                source = "unsubscribe page"
        except Exception:  # not a form body: still a one-click unsubscribe
            pass
        try:
            info = await run_in_threadpool(
                record.unsubscribe, self.engine, token.delivery_id, source
            )
        except Exception:
            log.exception("cannot unsubscribe delivery %s", token.delivery_id)
            return _page(
                "Please try again",
                "<p>We could not record your request just now. Please try again in a minute.</p>",
                status=503,
            )
        if info is None:
            return _not_found()
        log.info("delivery %s unsubscribed (%s)", token.delivery_id, source)
        return _page(
            "You are unsubscribed",
            f"<p><b>{html.escape(mask(info.address))}</b> will get no more email from us.</p>",
        )

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok", headers=NO_CACHE)


def create_app(database_url: str | None = None, *, secret: str | bytes | None = None) -> Starlette:
    """The ASGI app. ``database_url`` defaults to the settings' ledger (MAILCAST_DATABASE_URL);
    ``secret`` to MAILCAST_TRACKING_SECRET or its Prefect Secret block. Raises a MailcastError
    (TrackingError, LedgerError) when either is missing or the ledger is not at the head
    revision."""
    from mailcast.settings import get_settings

    key = tokens.load_secret(secret)
    service = TrackingService(database_url or get_settings().ledger_url(), key)
    routes = [
        Route("/o/{token}.gif", service.pixel, methods=["GET", "HEAD"]),
        Route("/c/{token}", service.click, methods=["GET", "HEAD"]),
        Route("/u/{token}", service.unsubscribe_page, methods=["GET", "HEAD"]),
        Route("/u/{token}", service.unsubscribe, methods=["POST"]),
        Route("/healthz", service.health, methods=["GET", "HEAD"]),
        *hooks.routes(service.engine),
    ]
    app = Starlette(routes=routes)
    app.state.service = service
    return app
