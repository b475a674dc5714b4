"""The tracking service: a small Starlette (ASGI) app, served by uvicorn (``mailcast serve``).

* ``GET /o/{token}.gif`` → a 1×1 GIF at once; the ``open`` event goes to the process's event
  queue (:mod:`mailcast.engagement.writer`), written to the ledger in batches at least every
  half second (every open is kept; the views count unique ones). The answer never waits for the
  database: the pixel is returned while it is down, the events are kept in memory and written
  when it is back.
* ``GET /c/{token}`` → ``302`` to the link's URL as stored in the ``links`` table for the
  delivery's run (never anything from the request: the service is no open redirect); a ``click``
  event is queued the same way. Links never change once written: the lookup is cached in
  memory (bounded), so a known link redirects without a query.
* ``GET /u/{token}`` → a plain confirmation page with a button (a link scanner's GET never
  unsubscribes); ``POST /u/{token}`` → unsubscribes at once (RFC 8058 one-click: mailbox
  providers POST ``List-Unsubscribe=One-Click``): an ``unsubscribe`` event and a suppression.
* ``GET/POST /s/{list}``, ``GET /s/{list}/confirm/{token}``, ``GET/POST /p/{token}``: the
  subscription forms, double opt-in confirmation and the preference page
  (:mod:`mailcast.web.subscribe`). A one-click unsubscribe from a campaign sent to a list leaves
  that list only (a consent record); other campaigns' unsubscribes suppress the address.
* ``GET /healthz`` → ``ok`` (for a reverse proxy's or an orchestrator's health check).
* ``POST /hooks/ses``, ``/hooks/sendgrid``, ``/hooks/mailgun``, ``/hooks/mailjet``: the API
  providers' event webhooks (:mod:`mailcast.web.hooks`).

A token that is not genuine (forged, altered, truncated, of another kind) gets ``404`` and
records nothing. The app never shows an address in full.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from mailcast.engagement import record, tokens
from mailcast.engagement.writer import LIMIT, EventWriter, Pending
from mailcast.ledger import events, subscriptions
from mailcast.ledger.models import CLICK, OPEN
from mailcast.web import hooks
from mailcast.web.pages import NO_CACHE, mask, not_found, page, read_form

log = logging.getLogger("mailcast.engagement")

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def _client(request: Request) -> dict[str, Any]:
    agent = request.headers.get("user-agent")
    return {"user_agent": agent[:300]} if agent else {}


CACHE_SIZE = 100_000  # links, and deliveries' runs, remembered by the click route


class _Cache(OrderedDict[int, Any]):
    """A bounded map, least recently used out first (used from the event loop only)."""

    def get_fresh(self, key: int) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: int, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > CACHE_SIZE:
            self.popitem(last=False)


class TrackingService:
    """The routes' state: the ledger's engine, the signing secret, the event queue and the
    link cache."""

    def __init__(self, database_url: str, secret: bytes, *, queue_limit: int | None = None) -> None:
        from mailcast.ledger.store import Ledger

        self.ledger = Ledger(database_url, create=False)
        self.engine = self.ledger.engine
        self.secret = secret
        self.writer = EventWriter(self._write_batch, self._write_one, limit=queue_limit or LIMIT)
        self._links = _Cache()  # link id -> (url, run_id, position)
        self._runs = _Cache()  # delivery id -> run_id

    # -- recording (the writer's thread) --------------------------------------------------------

    def _write_batch(self, batch: Sequence[Pending]) -> int:
        return events.record_event_batch(self.engine, batch)

    def _write_one(self, item: Pending) -> None:
        delivery_id, kind, detail, occurred_at = item
        if not events.record_event(self.engine, delivery_id, kind, detail, occurred_at=occurred_at):
            log.info("%s for delivery %s not recorded: no such delivery", kind, delivery_id)

    def _record(self, delivery_id: int, kind: str, detail: dict[str, Any]) -> None:
        self.writer.put(delivery_id, kind, detail or None)

    async def _link_target(self, delivery_id: int, link_id: int) -> tuple[str, str, int] | None:
        """(url, run_id, position) of the link when it belongs to the delivery's run: from the
        cache, else one query (whose answer is cached: neither ever changes)."""
        link = self._links.get_fresh(link_id)
        run = self._runs.get_fresh(delivery_id)
        if link is not None and run is not None:
            return link if link[1] == run else None
        target = await run_in_threadpool(events.link_target, self.engine, delivery_id, link_id)
        if target is not None:
            self._links.put(link_id, target)
            self._runs.put(delivery_id, target[1])
        return target

    # -- routes -------------------------------------------------------------------------------

    async def pixel(self, request: Request) -> Response:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.OPEN)
        if token is None:
            return not_found()
        if request.method == "GET":  # a HEAD is no open
            self._record(token.delivery_id, OPEN, _client(request))
        return Response(PIXEL, media_type="image/gif", headers=NO_CACHE)

    async def click(self, request: Request) -> Response:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.CLICK)
        if token is None or token.link_id is None:
            return not_found()
        try:
            target = await self._link_target(token.delivery_id, token.link_id)
        except Exception:
            log.exception("cannot look up link %s of delivery %s", token.link_id, token.delivery_id)
            return PlainTextResponse(
                "temporarily unavailable, please try again",
                status_code=503,
                headers={**NO_CACHE, "Retry-After": "30"},
            )
        if target is None:
            return not_found()
        url, _run_id, position = target
        detail = {"link_id": token.link_id, "url": url[:2000], "position": position}
        detail.update(_client(request))
        if request.method == "GET":
            self._record(token.delivery_id, CLICK, detail)
        return RedirectResponse(url, status_code=302, headers=NO_CACHE)

    async def unsubscribe_page(self, request: Request) -> Response:
        raw = request.path_params["token"]
        token = tokens.verify(self.secret, raw, tokens.UNSUBSCRIBE)
        if token is None:
            return not_found()
        try:
            info = await run_in_threadpool(events.delivery, self.engine, token.delivery_id)
        except Exception:
            log.exception("cannot look up delivery %s", token.delivery_id)
            info = None
        else:
            if info is None:
                return not_found()
        who = html.escape(mask(info.address)) if info else "this address"
        what = f" from <b>{html.escape(info.campaign)}</b>" if info else ""
        if info is not None:
            try:
                audience = await run_in_threadpool(
                    subscriptions.delivery_audience, self.engine, info.id
                )
            except Exception:
                audience = None
            list_name = audience[1].get("list") if audience else None
            if isinstance(list_name, str) and list_name:
                what = f" from the list <b>{html.escape(list_name)}</b>"
        body = f"""<p>Stop sending email to <b>{who}</b>{what}?</p>
<form method="post" action="">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<input type="hidden" name="source" value="page">
<button type="submit">Unsubscribe</button>
</form>"""
        return page("Unsubscribe", body)

    async def unsubscribe(self, request: Request) -> Response:
        token = tokens.verify(self.secret, request.path_params["token"], tokens.UNSUBSCRIBE)
        if token is None:
            return not_found()
        source = "one-click"
        form = await read_form(request)  # None: not a form body, still a one-click unsubscribe
        if form is not None and form.get("source") == "page":
            source = "unsubscribe page"
        try:
            done = await run_in_threadpool(
                record.unsubscribe_from, self.engine, token.delivery_id, source
            )
        except Exception:
            log.exception("cannot unsubscribe delivery %s", token.delivery_id)
            return page(
                "Please try again",
                "<p>We could not record your request just now. Please try again in a minute.</p>",
                status=503,
            )
        if done is None:
            return not_found()
        who = html.escape(mask(done.info.address))
        if done.list_name is not None:
            log.info(
                "delivery %s unsubscribed from list %s (%s)",
                token.delivery_id,
                done.list_name,
                source,
            )
            return page(
                "You are unsubscribed",
                f"<p><b>{who}</b> will get no more email from the list"
                f" <b>{html.escape(done.list_name)}</b>.</p>",
            )
        log.info("delivery %s unsubscribed (%s)", token.delivery_id, source)
        return page(
            "You are unsubscribed",
            f"<p><b>{who}</b> will get no more email from us.</p>",
        )

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok", headers=NO_CACHE)


def create_app(database_url: str | None = None, *, secret: str | bytes | None = None) -> Starlette:
    """The ASGI app. ``database_url`` defaults to the settings' ledger (MAILCAST_DATABASE_URL);
    ``secret`` to MAILCAST_TRACKING_SECRET or its Prefect Secret block. Raises a MailcastError
    (TrackingError, LedgerError) when either is missing or the ledger is not at the head
    revision."""
    from mailcast.settings import get_settings
    from mailcast.web.subscribe import SubscribeService

    settings = get_settings()
    key = tokens.load_secret(secret)
    service = TrackingService(
        database_url or settings.ledger_url(), key, queue_limit=settings.tracking_queue_limit
    )
    forms = SubscribeService(service.ledger, key, settings)
    routes = [
        Route("/o/{token}.gif", service.pixel, methods=["GET", "HEAD"]),
        Route("/c/{token}", service.click, methods=["GET", "HEAD"]),
        Route("/u/{token}", service.unsubscribe_page, methods=["GET", "HEAD"]),
        Route("/u/{token}", service.unsubscribe, methods=["POST"]),
        Route("/healthz", service.health, methods=["GET", "HEAD"]),
        *forms.routes(),
        *hooks.routes(service.engine),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # confirmation runs a stopped service left open get their final statuses
        await run_in_threadpool(forms.close_unfinished)
        service.writer.start()
        try:
            yield
        finally:  # a graceful stop (SIGTERM): everything queued is written before the exit
            await run_in_threadpool(service.writer.close)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    app.state.forms = forms
    return app
