"""The engagement report page (``mailcast report RUN --html OUT``): standalone HTML with inline
SVG charts, rendered by headless Chromium; the screenshot is kept in the test's tmp dir and
checked for the charts' colours.

Needs /usr/bin/chromium (``apt-get install -y chromium``): skipped with that reason when it is
missing, except under CI=true, where it fails."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, update
from typer.testing import CliRunner

from mailcast.engagement.report_page import CLICK_COLOR, OPEN_COLOR, load_report, render_html
from mailcast.ledger.events import register_links
from mailcast.ledger.models import Delivery, Event
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from tests.ledger_rows import claim_pending

CHROMIUM = os.environ.get("MAILCAST_TEST_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def populated_run(url: str) -> str:
    """20 recipients: 18 sent (at T0), 2 failed. Over 30 hours: 11 open (16 opens), 7 click
    (8 clicks on two links), 2 bounce (1 hard, 1 soft), 1 unsubscribes, 1 complains."""
    ledger = Ledger(url)
    run_id = ledger.create_run(
        f"report-{uuid.uuid4().hex[:6]}", {}, dry_run=False, transport="127.0.0.1:25"
    )
    ledger.plan(
        run_id,
        [Recipient(i + 2, f"r{i}@example.com", {}, None, f"r{i}@example.com") for i in range(20)],
    )
    claims = claim_pending(ledger, run_id, 100)
    ledger.record(
        [Outcome(c.id, "sent", smtp_code=250) for c in claims[:18]]
        + [
            Outcome(c.id, "failed", reason="rejected at RCPT: 550 no", smtp_code=550)
            for c in claims[18:]
        ]
    )
    ids = [c.id for c in claims]
    links = register_links(
        ledger.engine,
        run_id,
        [("https://shop.example/spring", 1), ("https://shop.example/sale", 2)],
    )
    spring, sale = links["https://shop.example/spring"], links["https://shop.example/sale"]
    D, E = Delivery.__table__, Event.__table__
    events = []

    def add(i: int, kind: str, minutes: float, detail: dict[str, object] | None = None) -> None:
        events.append(
            {"delivery_id": ids[i], "run_id": run_id, "kind": kind, "detail": detail,
             "occurred_at": T0 + timedelta(minutes=minutes), "created_at": T0}
        )  # fmt: skip

    for i, minutes in enumerate([4, 9, 15, 22, 40, 55, 80, 130, 300, 700, 1500]):
        add(i, "open", minutes)
    for i, minutes in ((0, 60), (1, 200), (2, 45), (3, 900), (4, 1700)):
        add(i, "open", minutes)  # repeat opens
    for i, minutes, link in ((0, 6, spring), (0, 7, sale), (1, 12, spring), (2, 17, spring),
                             (3, 25, sale), (5, 60, spring), (6, 90, spring), (9, 720, sale)):  # fmt: skip
        add(i, "click", minutes, {"link_id": link, "url": "x"})
    add(12, "bounce", 30, {"type": "hard", "status": "5.1.1"})
    add(13, "bounce", 90, {"type": "soft", "status": "4.2.2"})
    add(7, "unsubscribe", 140, {"source": "one-click"})
    add(8, "complaint", 600, {"feedback_type": "abuse"})
    with ledger.engine.begin() as conn:
        conn.execute(insert(E), events)
        conn.execute(update(D).where(D.c.run_id == run_id, D.c.status == "sent").values(sent_at=T0))
    return run_id


def read_png(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(width, height, RGB pixels) of an 8-bit RGB/RGBA non-interlaced PNG (what Chromium
    writes), without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _c, _f, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        ftype, cur = line[0], bytearray(line[1:])
        for x in range(stride):
            a = cur[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if ftype == 1:
                cur[x] = (cur[x] + a) & 0xFF
            elif ftype == 2:
                cur[x] = (cur[x] + b) & 0xFF
            elif ftype == 3:
                cur[x] = (cur[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (cur[x] + pred) & 0xFF
        rows.append(cur)
        prev = cur
    pixels = [(r[x], r[x + 1], r[x + 2]) for r in rows for x in range(0, stride, channels)]
    return width, height, pixels


def near(pixels: list[tuple[int, int, int]], color: str, tolerance: int = 24) -> int:
    target = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    return sum(1 for p in pixels if all(abs(p[k] - target[k]) <= tolerance for k in range(3)))


def test_the_report_page_is_standalone_and_has_the_figures(tmp_path: Path, db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = populated_run(db_url)
    report = load_report(ledger.engine, run_id)
    assert len(report.opens) == 16 and len(report.clicks) == 8 and report.started == T0
    page = render_html(report)
    assert page.count("<svg") == 2 and 'id="timeline"' in page and 'id="funnel"' in page
    for outside in ("<script", "<link", "src=", "@import", "url("):
        assert outside not in page, outside
    assert 'data-stage="delivered"' in page and "Delivered: 16" in page  # 18 sent - 2 bounced
    assert "Opened: 11" in page and "Clicked: 7" in page
    assert "https://shop.example/spring" in page and "https://shop.example/sale" in page
    assert "Opens (16)" in page and "Clicks (8)" in page


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        reason = f"no headless Chromium at {CHROMIUM} (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(f"CI=true needs it: {reason}")
        pytest.skip(reason)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    run_id = populated_run(url)
    out = tmp_path / "report.html"
    from mailcast.cli import app

    result = CliRunner().invoke(app, ["report", run_id[:8], "--html", str(out), "--db", url])
    assert result.exit_code == 0, result.output
    assert f"wrote the report page to {out}" in result.stdout
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=900,1500", f"--screenshot={shot}", out.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    print(f"screenshot: {shot}")
    width, height, pixels = read_png(shot)
    assert (width, height) == (900, 1500)
    # the charts are drawn: the open and click series and funnel bars in their colours
    assert near(pixels, OPEN_COLOR) > 2000, "no blue (opens) on the page"
    assert near(pixels, CLICK_COLOR) > 2000, "no orange (clicks) on the page"
    assert near(pixels, "#0f766e") > 2000, "no green (delivered bar) on the page"
    white = near(pixels, "#ffffff", 4)
    assert white < len(pixels) * 0.9, "the page is (nearly) blank"
    (tmp_path / "screenshot.json").write_text(json.dumps({"path": str(shot)}), encoding="utf-8")
