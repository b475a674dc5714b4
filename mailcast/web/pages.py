"""What the pages of ``mailcast serve`` share: the no-cache and page headers, one plain page
layout (everything interpolated is escaped by the caller with ``html.escape``), and masking an
address so that a page never shows one in full."""

from __future__ import annotations

import html
from urllib.parse import parse_qsl

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response

MAX_FORM_BYTES = 16 * 1024

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

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; padding: 0 1rem;
  color: #222; }
button { font: inherit; padding: .6rem 1.4rem; border: 0; border-radius: .3rem;
  background: #b3261e; color: #fff; cursor: pointer; }
"""


def not_found() -> Response:
    return PlainTextResponse("not found", status_code=404, headers=NO_CACHE)


def mask(address: str) -> str:
    """``j…@example.com``: enough for a person to recognize their address, no more."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "…"
    return f"{local[:1]}…@{domain}"


def page(
    title: str,
    body: str,
    status: int = 200,
    *,
    style: str = "",
    script: str | None = None,
    headers: dict[str, str] | None = None,
    background: BackgroundTask | None = None,
) -> HTMLResponse:
    """A plain page: ``title`` is escaped here; ``body`` is HTML the caller built (escaping
    what it interpolates). ``script``: an inline script, which ``headers`` must allow (CSP);
    ``background``: run after the answer is sent."""
    tail = f"<script>{script}</script>\n" if script else ""
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{html.escape(title)}</title>
<style>{STYLE}{style}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
{tail}</body></html>
"""
    return HTMLResponse(
        doc,
        status_code=status,
        headers={**PAGE_HEADERS, **(headers or {})},
        background=background,
    )


class Form:
    """A posted ``application/x-www-form-urlencoded`` body (read here: no multipart parser
    needed), at most MAX_FORM_BYTES."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.pairs if k == name), None)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> Form | None:
    """The form, or None when the body is not a urlencoded form or is larger than ``limit``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    try:
        text = data.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError):
        return None
    return Form(pairs)
