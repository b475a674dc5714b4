"""Engagement tracking end to end: a campaign sent with tracking on to a capturing SMTP server
through the send-campaign flow; the test reads the captured messages like a mail client would,
fetches pixels and follows links over real HTTP against the tracking service (uvicorn on
127.0.0.1), unsubscribes one recipient with an RFC 8058 one-click POST, then checks the events,
the views' numbers and that the next run skips the unsubscribed address. Also: tracking off,
and the ``suppress`` and ``validate`` commands."""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from mailcast.engagement import tokens
from mailcast.ledger.store import Ledger
from mailcast.spec import load_spec
from tests.campaigns import people, write_campaign

SECRET = "e2e-tracking-secret-0123456789"

HTML = """<html><body>
<h1>Hello {{ first_name }}</h1>
<p><a href="https://shop.example/spring?utm_source=mail&amp;utm_campaign=spring">Spring picks</a></p>
<p><a href="https://shop.example/account?code={{ code }}">Your account</a></p>
<p><a data-notrack href="https://shop.example/privacy">Privacy</a>
   <a href="mailto:help@shop.example">Write to us</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
TEXT = (
    "Hello {{ first_name }}, see https://shop.example/spring\nUnsubscribe: {{ unsubscribe_url }}\n"
)


@pytest.fixture
def tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``mailcast serve``'s app under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, database_url: str) -> None:
        import uvicorn

        from mailcast.web.tracking import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(database_url), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the tracking service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def ledger_url(db_url: str) -> str:
    Ledger(db_url)  # at the head revision before the service opens it
    return db_url


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def body(msg: email.message.EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def summary(url: str, run_id: str) -> dict[str, Any]:
    with Ledger(url).engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM campaign_summary WHERE run_id = :r"), {"r": run_id}
        ).mappings()
        return dict(row.one())


def wait_for(check: Any, timeout: float = 15.0) -> None:
    """The service records opens and clicks just after it answers: poll briefly."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the events")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "tracking_env")
def test_tracked_campaign_end_to_end(
    tmp_path: Path, smtp_server: Any, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.campaign import send_campaign

    tag = uuid.uuid4().hex[:6]  # own addresses: an unsubscribe is for every later campaign
    rows = [dict(r, email=f"person{i}-{tag}@example.com") for i, r in enumerate(people(6))]
    with Service(ledger_url) as service:
        spec_path = write_campaign(
            tmp_path, rows, attachments=False, html=HTML, text=TEXT,
            name="tracked-spring",
            spec_extra={
                "tracking_base_url": service.url,
                "bounce_domain": "bounces.mailcast.example",
                "unsubscribe_mailto": "unsubscribe@mailcast.example",
            },
        )  # fmt: skip
        monkeypatch.setenv("MAILCAST_DATABASE_URL", ledger_url)  # the worker's ledger
        first = send_campaign(spec=load_spec(spec_path), dry_run=False, smtp_url=smtp_server.url)
        assert first.counts["sent"] == 6
        run_id = first.run_id
        ledger = Ledger(ledger_url)
        ids = {d["address"]: d for d in ledger.deliveries(run_id)}
        with ledger.engine.connect() as conn:
            delivery_id = dict(
                conn.execute(
                    text("SELECT address, id FROM deliveries WHERE run_id = :r"), {"r": run_id}
                ).all()
            )
        captured = {m.rcpt_tos[0]: m for m in smtp_server.messages}
        assert set(captured) == set(ids)

        # -- what the mail client gets -------------------------------------------------------
        secret = SECRET.encode()
        pixels: dict[str, str] = {}
        links: dict[str, list[str]] = {}
        unsubscribe: dict[str, str] = {}
        for address, message in captured.items():
            msg = parse(message.data)
            did = delivery_id[address]
            # VERP return path: bounces+TOKEN@bounce_domain, the token naming this delivery
            local, _, domain = message.mail_from.partition("@")
            assert domain == "bounces.mailcast.example" and local.startswith("bounces+")
            assert tokens.verify(secret, local.removeprefix("bounces+"), tokens.BOUNCE) == (
                tokens.Token(tokens.BOUNCE, did, None)
            )
            assert address.split("@")[0] not in message.mail_from
            # RFC 8058 one-click headers (and the mailto alternative)
            assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            targets = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
            assert targets[0].startswith(f"{service.url}/u/")
            assert targets[1].startswith("mailto:unsubscribe@mailcast.example?subject=unsubscribe")
            unsubscribe[address] = targets[0]
            html = body(msg, "html")
            text_body = body(msg, "plain")
            assert "https://shop.example/privacy" in html  # data-notrack kept
            assert "mailto:help@shop.example" in html
            assert "shop.example/spring" not in html and "shop.example/account" not in html
            assert f'href="{targets[0]}"' in html  # {{ unsubscribe_url }} in the template
            assert targets[0] in text_body and "https://shop.example/spring" in text_body
            found = re.findall(r'href="(' + re.escape(service.url) + r'/c/[a-z2-7]+)"', html)
            assert len(found) == 2
            links[address] = found
            (pixel,) = re.findall(r'<img src="(' + re.escape(service.url) + r'/o/[^"]+)"', html)
            assert html.index(pixel) < html.index("</body>")
            pixels[address] = pixel
            assert address not in pixel + "".join(found) + targets[0]  # no address in clear

        # -- recipients act ---------------------------------------------------------------------
        a, b, c, d, e, _f = (r["email"] for r in rows)
        with httpx.Client(timeout=10, follow_redirects=False) as client:
            for address, times in ((a, 2), (b, 1)):
                for _ in range(times):
                    r = client.get(pixels[address])
                    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
                    assert r.content.startswith(b"GIF89a")
            clicks = [(a, 0), (b, 0), (b, 1), (c, 1)]
            for address, i in clicks:
                r = client.get(links[address][i])
                assert r.status_code == 302
                expected = (
                    "https://shop.example/spring?utm_source=mail&utm_campaign=spring"
                    if i == 0
                    else f"https://shop.example/account?code={ids[address]['fields']['code']}"
                )
                assert r.headers["location"] == expected
            page = client.get(unsubscribe[e])  # a link scanner or a person: just the page
            assert page.status_code == 200 and "<form" in page.text
            r = client.post(
                unsubscribe[d],
                content=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert r.status_code == 200
            # a forged token records nothing
            assert client.get(pixels[a][:-10] + "aaaaaa.gif").status_code == 404

        def counted() -> bool:
            s = summary(ledger_url, run_id)
            return (s["opens"], s["clicks"], s["unsubscribes"]) == (3, 4, 1)

        wait_for(counted)

    # -- the events and the views ---------------------------------------------------------------
    with Ledger(ledger_url).engine.connect() as conn:
        events = conn.execute(
            text("SELECT delivery_id, kind, detail FROM events WHERE run_id = :r ORDER BY id"),
            {"r": run_id},
        ).all()
    by_kind: dict[str, list[int]] = {}
    for did, kind, _detail in events:
        by_kind.setdefault(kind, []).append(did)
    assert sorted(by_kind["open"]) == sorted([delivery_id[a]] * 2 + [delivery_id[b]])
    assert sorted(by_kind["click"]) == sorted(delivery_id[x] for x, _ in clicks)
    assert by_kind["unsubscribe"] == [delivery_id[d]]
    assert set(by_kind) == {"open", "click", "unsubscribe"}

    s = summary(ledger_url, run_id)
    assert {k: s[k] for k in ("sent", "delivered", "opens", "unique_opens", "clicks",
                              "unique_clicks", "unsubscribes", "bounces", "complaints")} == {
        "sent": 6, "delivered": 6, "opens": 3, "unique_opens": 2, "clicks": 4,
        "unique_clicks": 3, "unsubscribes": 1, "bounces": 0, "complaints": 0,
    }  # fmt: skip
    assert s["open_rate"] == pytest.approx(2 / 6)
    assert s["click_rate"] == pytest.approx(3 / 6)
    assert s["click_to_open_rate"] == pytest.approx(3 / 2)  # c clicked without the pixel
    assert s["unsubscribe_rate"] == pytest.approx(1 / 6)
    assert s["delivered_rate"] == pytest.approx(1.0)
    with Ledger(ledger_url).engine.connect() as conn:
        per_link = conn.execute(
            text(
                "SELECT position, url, clicks, unique_clicks FROM link_clicks"
                " WHERE run_id = :r ORDER BY position, url"
            ),
            {"r": run_id},
        ).all()
    spring = [r for r in per_link if "spring" in r[1]]
    assert [(p, n, u) for p, _url, n, u in spring] == [(1, 2, 2)]
    account = [r for r in per_link if "account" in r[1]]
    assert len(account) == 6  # personalized: one row per recipient's URL
    assert sorted(n for _p, _u, n, _uu in account) == [0, 0, 0, 0, 1, 1]

    # -- the next run skips the unsubscribed address --------------------------------------------
    before = len(smtp_server.messages)
    second = send_campaign(
        spec=load_spec(spec_path), dry_run=False, smtp_url=smtp_server.url, again=True
    )
    assert second.counts["sent"] == 5 and second.counts["skipped"] == 1
    assert ("skipped", "suppressed:unsubscribed", 1) in second.reasons
    new = smtp_server.messages[before:]
    assert len(new) == 5 and d not in {m.rcpt_tos[0] for m in new}


@pytest.mark.usefixtures("prefect_harness")
def test_tracking_off_adds_nothing(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tracking_base_url: no pixel, links as written, no List-Unsubscribe, no secret needed."""
    from mailcast.flows.campaign import send_campaign

    spec_path = write_campaign(tmp_path, people(2), attachments=False, html=HTML, text=TEXT)
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db_url)
    result = send_campaign(
        spec=load_spec(spec_path), dry_run=True, outbox_dir=str(tmp_path / "outbox")
    )
    assert result.counts["sent"] == 2
    emls = sorted((tmp_path / "outbox").rglob("*.eml"))
    assert len(emls) == 2
    for path in emls:
        msg = parse(path.read_bytes())
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
        html = body(msg, "html")
        assert "https://shop.example/spring?utm_source=mail&amp;utm_campaign=spring" in html
        assert "/o/" not in html and "<img" not in html
        assert 'href=""' in html  # unsubscribe_url is "" without a tracking service


def test_the_cli_says_whether_a_campaign_is_tracked_and_manages_suppressions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.cli import app

    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
    rows = people(4)
    spec = write_campaign(tmp_path / "c", rows, attachments=False)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "tracking: off" in result.stdout and "tracking_base_url" in result.stdout
    assert not (tmp_path / "ledger.sqlite3").exists()  # checking a campaign creates no ledger

    tracked = write_campaign(
        tmp_path / "t", rows, attachments=False,
        spec_extra={"tracking_base_url": "https://t.example.com"},
    )  # fmt: skip
    result = runner.invoke(app, ["validate", str(tracked)])
    assert (
        "tracking: opens, clicks, one-click unsubscribe via https://t.example.com" in result.stdout
    )
    # sending a tracked campaign without the secret: refused before Prefect starts
    result = runner.invoke(app, ["send", str(tracked), "--db", db])
    assert result.exit_code == 2
    assert "MAILCAST_TRACKING_SECRET" in result.stderr and "hint:" in result.stderr

    # suppress add / list / import / remove
    result = runner.invoke(app, ["suppress", "add", "Person1@Example.com", "x@example.org"])
    assert result.exit_code == 0, result.output
    assert "suppressed 2 new" in result.stdout
    result = runner.invoke(app, ["suppress", "add", "not an address"])
    assert result.exit_code == 2 and "error:" in result.stderr
    listing = tmp_path / "list.csv"
    listing.write_text(
        "email,reason\nperson2@example.com,complaint\nbad address,\nx@example.org,\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["suppress", "import", str(listing)])
    assert result.exit_code == 0, result.output
    assert "suppressed 1 new, 1 already on the list, 1 invalid" in result.stdout
    assert "line 3: bad address" in result.stdout
    plain = tmp_path / "plain.txt"
    plain.write_text("# one per line\nperson3@example.com\n", encoding="utf-8")
    result = runner.invoke(app, ["suppress", "import", str(plain), "--reason", "hard_bounce"])
    assert "suppressed 1 new" in result.stdout
    result = runner.invoke(app, ["suppress", "list"])
    assert result.exit_code == 0
    for expected in ("person1@example.com", "manual", "person2@example.com", "complaint",
                     "person3@example.com", "hard_bounce", "4 suppressed"):  # fmt: skip
        assert expected in result.stdout, expected
    result = runner.invoke(app, ["validate", str(spec), "--show", "10"])
    out = result.stdout
    assert "to send: 1" in out and "rejected: 3" in out
    assert "suppressed:manual" in out and "suppressed:complaint" in out
    assert "suppressed:hard_bounce" in out
    result = runner.invoke(app, ["suppress", "remove", "PERSON1@example.com"])
    assert "removed 1" in result.stdout
    result = runner.invoke(app, ["suppress", "list", "--reason", "manual"])
    assert "person1@example.com" not in result.stdout and "x@example.org" in result.stdout


def test_tracking_commands_do_not_import_prefect(tmp_path: Path) -> None:
    """serve (building the app), suppress and report --html run no flow: no Prefect import."""
    import subprocess
    import sys

    code = f"""
import sys
from typer.testing import CliRunner
from mailcast.cli import app
from mailcast.ledger.store import Ledger
db = "sqlite:///{tmp_path / "l.sqlite3"}"
run = Ledger(db).create_run("no-prefect", {{}}, dry_run=True, transport=None)
for args in (["suppress", "add", "a@example.com", "--db", db], ["suppress", "list", "--db", db],
             ["report", run, "--html", "{tmp_path / "r.html"}", "--db", db]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
from mailcast.web.tracking import create_app
create_app(db, secret="0123456789abcdefghij")
print("prefect" in sys.modules)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
