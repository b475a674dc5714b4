"""The campaign flow end to end: real Prefect (test harness), real SMTP on loopback, real
Postgres. Assertions are on what recipients and analysts would see: captured messages parsed
with the standard library, and the ledger."""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from mailcast.ledger.store import Ledger
from mailcast.spec import load_spec
from tests.campaigns import people, write_campaign

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(spec_path: Path, db: str, **params: Any) -> Any:
    from mailcast.flows.campaign import send_campaign

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAILCAST_DATABASE_URL", db)  # the worker's ledger (never a flow parameter)
        return send_campaign(spec=load_spec(spec_path), **params)


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_thousand_recipients_over_real_smtp(tmp_path: Path, smtp_server: Any, pg_url: str) -> None:
    rows = people(1000)
    rows += [dict(rows[5], email="PERSON5@Example.com")]  # a duplicate, other case
    rows += [dict(rows[6], email="not an address")]
    spec = write_campaign(tmp_path, rows)
    summary = run(spec, pg_url, dry_run=False, smtp_url=smtp_server.url)

    assert summary.counts["sent"] == 1000
    assert summary.counts["skipped"] == 2
    captured = smtp_server.messages
    assert len(captured) == 1000
    by_rcpt = Counter(rcpt for m in captured for rcpt in m.rcpt_tos)
    assert set(by_rcpt) == {r["email"] for r in rows[:1000]}
    assert set(by_rcpt.values()) == {1}  # exactly one message per valid unique recipient

    want = {r["email"]: r for r in rows[:1000]}
    pdf = (tmp_path / "files" / "doc.pdf").read_bytes()
    ids = set()
    for m in captured:
        msg = parse(m.data)
        person = want[m.rcpt_tos[0]]
        assert msg["Subject"] == f"{person['first_name']}, your code {person['code']}"
        assert msg["From"] == "Test Sender <sender@mailcast.example>"
        assert msg.get_content_type() == "multipart/mixed"
        body, attachment = msg.iter_parts()
        assert body.get_content_type() == "multipart/alternative"
        plain, html = body.iter_parts()
        assert plain.get_content_type() == "text/plain"
        assert html.get_content_type() == "text/html"
        for part in (plain, html):
            content = part.get_content()
            assert person["first_name"] in content and person["last_name"] in content
            assert person["code"] in content and person["city"] in content
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_filename() == "doc.pdf"
        assert attachment.get_content() == pdf
        ids.add(msg["Message-ID"])
    assert len(ids) == 1000

    ledger = Ledger(pg_url)
    assert ledger.sent_message_ids(summary.run_id) == ids
    rejected = {
        r["row_no"]: r["reason"]
        for r in ledger.deliveries(summary.run_id)
        if r["status"] == "skipped"
    }
    assert rejected == {1002: "duplicate of row 7", 1003: rejected[1003]}
    assert rejected[1003].startswith("invalid address")
    assert ledger.run(summary.run_id).status == "completed"


def test_messy_csv_is_reported_not_crashed_on(
    tmp_path: Path, smtp_server: Any, db_url: str
) -> None:
    lines = [
        "email;first_name;last_name;city;code",
        "  Alice@Example.COM ;Alice;Ångström;Zürich;A1",
        "",
        'bob@example.com;Bob;"O\'Brien; Jr";Paris;B2',
        "alice@example.com;Alice again;X;Y;A3",
        "not-an-address;Nope;X;Y;N4",
        'eve@example.com;"Ann\r\nBcc: x@evil.example";"Evil\r\nBcc: y@evil.example";Oslo;E5',
        "",
        "zoe@example.com;Zoë;山田;東京;Z6",
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "messy.csv").write_bytes("\ufeff".encode() + "\r\n".join(lines).encode())
    spec = write_campaign(tmp_path, data_file="data/messy.csv", attachments=False,
                          spec_extra={"recipients": {"path": "data/messy.csv", "name_column": "first_name"},
                                      "headers": {"X-City": "{{ city }} {{ last_name }}"}})  # fmt: skip
    summary = run(spec, db_url, dry_run=False, smtp_url=smtp_server.url)
    assert summary.counts["sent"] == 4
    assert summary.counts["skipped"] == 2
    captured = smtp_server.messages
    assert sorted(r.lower() for m in captured for r in m.rcpt_tos) == [
        "alice@example.com", "bob@example.com", "eve@example.com", "zoe@example.com",
    ]  # fmt: skip
    for m in captured:
        msg = parse(m.data)
        names = [k.lower() for k in msg]
        assert "bcc" not in names, m.data[:500]
        assert len(names) == len(set(names))
        head = m.data.split(b"\r\n\r\n", 1)[0]
        assert b"\nBcc:" not in head and b"\rBcc:" not in head
    eve = next(parse(m.data) for m in captured if m.rcpt_tos[0] == "eve@example.com")
    assert "Ann" in str(eve["To"]) and "evil" in str(eve["To"])  # kept as text, not as a header
    zoe = next(parse(m.data) for m in captured if m.rcpt_tos[0] == "zoe@example.com")
    assert zoe["Subject"] == "Zoë, your code Z6"
    assert "山田" in zoe.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    ledger = Ledger(db_url)
    skipped = {
        r["row_no"]: r["reason"]
        for r in ledger.deliveries(summary.run_id)
        if r["status"] == "skipped"
    }
    assert skipped[5] == "duplicate of row 2"
    assert skipped[6].startswith("invalid address")


def test_dry_run_writes_the_outbox_and_sends_nothing(
    tmp_path: Path, smtp_server: Any, db_url: str
) -> None:
    spec = write_campaign(tmp_path, people(20))
    summary = run(spec, db_url, dry_run=True, outbox_dir=str(tmp_path / "outbox"),
                  smtp_url=smtp_server.url)  # fmt: skip
    assert smtp_server.messages == []
    files = sorted((tmp_path / "outbox").rglob("*.eml"))
    assert len(files) == 20
    assert parse(files[0].read_bytes())["Subject"].endswith(tuple(f"C{i:06d}" for i in range(20)))
    run_info = Ledger(db_url).run(summary.run_id)
    assert run_info.dry_run is True
    assert summary.counts["sent"] == 20


def test_xlsx_source_end_to_end(tmp_path: Path, smtp_server: Any, db_url: str) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    rows = people(30)
    ws.append(list(rows[0]))
    for r in rows:
        ws.append(list(r.values()))
    (tmp_path / "data").mkdir()
    wb.save(tmp_path / "data" / "people.xlsx")
    spec = write_campaign(tmp_path, data_file="data/people.xlsx")
    summary = run(spec, db_url, dry_run=False, smtp_url=smtp_server.url)
    assert summary.counts["sent"] == 30
    assert {m.rcpt_tos[0] for m in smtp_server.messages} == {r["email"] for r in rows}


def test_sql_source_from_postgres(tmp_path: Path, smtp_server: Any, pg_url: str) -> None:
    engine = create_engine(pg_url)
    rows = people(40)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE crm_people (email text, first_name text, last_name text, city text, code text)"
            )
        )
        conn.execute(
            text("INSERT INTO crm_people VALUES (:email, :first_name, :last_name, :city, :code)"),
            rows,
        )
    engine.dispose()
    spec = write_campaign(
        tmp_path,
        spec_extra={"recipients": {"sql": {"url": pg_url, "query": "SELECT * FROM crm_people WHERE code < 'C000030' ORDER BY code"}}},
    )  # fmt: skip
    try:
        summary = run(spec, pg_url, dry_run=False, smtp_url=smtp_server.url)
    finally:
        with engine.begin() as conn:  # leave the shared test database as the ledger's own
            conn.execute(text("DROP TABLE crm_people"))
        engine.dispose()
    assert summary.counts["sent"] == 30
    msg = parse(smtp_server.messages[0].data)
    assert msg.get_content_type() == "multipart/mixed"
