"""Campaigns sent to a list or a segment (who is planned, with which fields), recurring campaigns
(``key`` + ``once_per_contact``: skipped with ``already sent: KEY``, recorded at the run's end,
never lost by a crash), and repeats (a campaign already sent to the same recipients is refused
unless confirmed or allowed), on SQLite and Postgres; and one real send through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, select

from mailcast.engagement import suppression
from mailcast.engine.summary import finish_run
from mailcast.errors import RepeatError, SegmentError, SourceError
from mailcast.ledger.campaign_audience import already_sent, list_of_run
from mailcast.ledger.models import ContactSend, Delivery
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import segments
from mailcast.recipients.prepare import check_repeat, prepare_run
from mailcast.spec import spec_from_dict
from mailcast.transport.factory import Target
from tests.audience_rows import add_contacts, add_list, add_members, tag
from tests.ledger_rows import claim_pending

DT = cast(Table, Delivery.__table__)
CST = cast(Table, ContactSend.__table__)
REAL = Target(url="smtp://127.0.0.1:25?security=none")


def _spec(tmp_path: Path, name: str, recipients: dict[str, Any], **more: Any) -> Any:
    return spec_from_dict(
        {"name": name, "sender": "News <news@acme.example>", "subject": "Hi {{ name }}",
         "text": "Hello {{ email }}", "recipients": recipients, **more},
        base_dir=str(tmp_path),
    )  # fmt: skip


def _rows(ledger: Ledger, run_id: str) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    with ledger.engine.connect() as conn:
        found = conn.execute(
            select(DT.c.address, DT.c.status, DT.c.reason, DT.c.fields).where(DT.c.run_id == run_id)
        ).all()
    return {a.split("@")[0]: (s, r, f) for a, s, r, f in found}


def _send_all(ledger: Ledger, run_id: str) -> None:
    claims = claim_pending(ledger, run_id, 10_000)
    ledger.record([Outcome(c.id, "sent") for c in claims])  # type: ignore[arg-type]


@pytest.fixture
def world(db_url: str) -> dict[str, Any]:
    ledger = Ledger(db_url)
    t = tag()
    people = [
        {"address": f"ann@{t}.example", "name": "Ann", "attributes": {"city": "Paris", "age": 34}},
        {"address": f"bob@{t}.example", "name": None, "attributes": {"plan": "pro"}},
        {"address": f"cy@{t}.example", "attributes": {"city": "Lyon"}},
        {"address": f"dee@{t}.example", "attributes": {"city": "Paris"}, "status": "blocklisted"},
        {"address": f"eve@{t}.example", "attributes": {"city": "Paris"}},
        {"address": f"fay@{t}.example", "attributes": {"city": "Rome"}},
    ]
    ids = add_contacts(ledger.engine, people)
    by = {a.split("@")[0]: i for a, i in ids.items()}
    news = f"news-{t}"
    lid = add_list(ledger.engine, news, optin="double")
    add_members(ledger.engine, lid, {by["ann"]: "confirmed", by["bob"]: "confirmed",
                                     by["cy"]: "unconfirmed", by["dee"]: "confirmed",
                                     by["eve"]: "confirmed", by["fay"]: "unsubscribed"})  # fmt: skip
    suppression.add(ledger.engine, [f"eve@{t}.example"], "unsubscribed", source="test")
    return {"ledger": ledger, "url": db_url, "t": t, "list": news}


def test_a_list_campaign_plans_confirmed_enabled_members_with_their_attributes(
    world: dict[str, Any], tmp_path: Path
) -> None:
    ledger, t = world["ledger"], world["t"]
    spec = _spec(tmp_path, f"c-{t}", {"list": world["list"], "name_column": "name"})
    planned = prepare_run(world["url"], spec, REAL)
    rows = _rows(ledger, planned.run_id)
    # unconfirmed (double opt-in), unsubscribed and blocklisted members are not the audience
    assert set(rows) == {"ann", "bob", "eve"}
    assert rows["ann"][0] == "pending"
    assert rows["ann"][2] == {"email": f"ann@{t}.example", "name": "Ann", "age": "34",
                              "city": "Paris", "plan": ""}  # fmt: skip
    assert rows["bob"][2]["name"] == "" and rows["bob"][2]["plan"] == "pro"
    assert rows["eve"][:2] == ("skipped", "suppressed:unsubscribed")  # suppression still applies
    assert ledger.columns(planned.run_id) == ["email", "name", "age", "city", "plan"]
    assert planned.to_send == 2
    assert list_of_run(ledger.engine, planned.run_id) == world["list"]  # the one-click handler's


def test_a_segment_campaign_and_missing_sources(world: dict[str, Any], tmp_path: Path) -> None:
    ledger, t = world["ledger"], world["t"]
    name = f"paris-{t}"
    segments.create(ledger.engine, name, f'city = "Paris" and email ends with "@{t}.example"')
    planned = prepare_run(world["url"], _spec(tmp_path, f"s-{t}", {"segment": name}), REAL)
    rows = _rows(ledger, planned.run_id)
    assert set(rows) == {"ann", "eve"}  # dee is blocklisted
    assert list_of_run(ledger.engine, planned.run_id) is None
    with pytest.raises(SourceError, match="no such list"):
        prepare_run(world["url"], _spec(tmp_path, f"x-{t}", {"list": f"none-{t}"}), REAL)
    with pytest.raises(SegmentError, match="no such segment"):
        prepare_run(world["url"], _spec(tmp_path, f"y-{t}", {"segment": f"none-{t}"}), REAL)
    with pytest.raises(Exception, match="exactly one of"):
        _spec(tmp_path, "z", {"list": "a", "segment": "b"})


def test_once_per_contact_skips_who_received_the_key_and_survives_a_crash(
    world: dict[str, Any], tmp_path: Path
) -> None:
    ledger, t = world["ledger"], world["t"]
    key = f"welcome-{t}"
    spec = _spec(tmp_path, f"w-{t}", {"list": world["list"]}, key=key, once_per_contact=True)
    first = prepare_run(world["url"], spec, REAL).run_id
    _send_all(ledger, first)
    # a crash before the run's end: nothing in contact_sends yet, the deliveries tell
    second = prepare_run(world["url"], spec, REAL).run_id
    assert {k: v[:2] for k, v in _rows(ledger, second).items()} == {
        "ann": ("skipped", f"already sent: {key}"),
        "bob": ("skipped", f"already sent: {key}"),
        "eve": ("skipped", "suppressed:unsubscribed"),
    }
    finish_run(ledger, first)  # the end of the first run (a resume's end does the same)
    with ledger.engine.connect() as conn:
        recorded = set(conn.execute(select(CST.c.address_key).where(CST.c.key == key)).scalars())
    assert recorded == {f"ann@{t}.example", f"bob@{t}.example"}
    # a new member joins: the next run sends only to them
    cid = add_contacts(ledger.engine, [{"address": f"gil@{t}.example"}])[f"gil@{t}.example"]
    with ledger.engine.connect() as conn:
        from tests.audience_rows import LT

        lid = conn.execute(select(LT.c.id).where(LT.c.name == world["list"])).scalar_one()
    add_members(ledger.engine, lid, {cid: "confirmed"})
    third = prepare_run(world["url"], spec, REAL)
    assert third.to_send == 1
    assert _rows(ledger, third.run_id)["gil"][0] == "pending"
    # a dry run records nothing
    dry = prepare_run(world["url"], spec, Target(outbox=str(tmp_path / "out"))).run_id
    _send_all(ledger, dry)
    finish_run(ledger, dry)
    assert f"gil@{t}.example" not in already_sent(ledger.engine, key, exclude_run=third.run_id)
    with pytest.raises(Exception, match="needs a `key`"):
        _spec(tmp_path, "k", {"list": "x"}, once_per_contact=True)


def test_a_repeat_is_refused_unless_confirmed_or_allowed(
    world: dict[str, Any], tmp_path: Path
) -> None:
    ledger, t = world["ledger"], world["t"]
    spec = _spec(tmp_path, f"r-{t}", {"list": world["list"]})
    check_repeat(world["url"], spec, confirmed=False)  # never sent: fine
    run_id = prepare_run(world["url"], spec, REAL).run_id
    check_repeat(world["url"], spec, confirmed=False)  # not completed yet
    _send_all(ledger, run_id)
    finish_run(ledger, run_id)
    with pytest.raises(RepeatError, match=f"already sent to this audience: run {run_id}"):
        check_repeat(world["url"], spec, confirmed=False)
    check_repeat(world["url"], spec, confirmed=True)
    allowed = _spec(tmp_path, f"r-{t}", {"list": world["list"]}, allow_repeats=True)
    check_repeat(world["url"], allowed, confirmed=False)
    other = _spec(tmp_path, f"r-{t}", {"segment": "another"})
    check_repeat(world["url"], other, confirmed=False)  # another audience


@pytest.mark.slow
def test_cli_sends_a_list_campaign_and_asks_before_sending_it_again(
    tmp_path: Path,
    prefect_harness: None,
    pg_url: str,
    smtp_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from mailcast.cli import app

    ledger = Ledger(pg_url)
    t = tag()
    ids = add_contacts(ledger.engine, [{"address": f"m{i}@{t}.example", "name": f"M {i}",
                                        "attributes": {"city": "Paris"}} for i in range(3)])  # fmt: skip
    news = f"news-{t}"
    lid = add_list(ledger.engine, news)
    add_members(ledger.engine, lid, {i: "confirmed" for i in ids.values()})
    spec = tmp_path / "campaign.yaml"
    spec.write_text(
        f"name: list-{t}\nsender: News <news@acme.example>\nsubject: 'Hi {{{{ name }}}}'\n"
        f"text: 'From {{{{ city }}}}'\nrecipients: {{list: {news}, name_column: name}}\n"
    )
    argv = ["send", str(spec), "--send", "--smtp", smtp_server.url, "--db", pg_url]
    first = CliRunner().invoke(app, argv)
    assert first.exit_code == 0, first.output
    assert len(smtp_server.messages) == 3
    again = CliRunner().invoke(app, argv)  # no terminal: refused with one line
    assert again.exit_code == 2
    assert "already sent to this audience" in again.stderr and "--again" in again.stderr
    assert len(smtp_server.messages) == 3
    # on a terminal the command asks; "no" stops before anything is sent
    from mailcast.cli import campaigns

    monkeypatch.setattr(campaigns, "interactive", lambda: True)
    declined = CliRunner().invoke(app, argv, input="n\n")
    assert declined.exit_code == 1, declined.output
    assert "already sent to this audience" in declined.stdout
    assert "Send it again to the same recipients?" in declined.output
    assert len(smtp_server.messages) == 3
    monkeypatch.setattr(campaigns, "interactive", lambda: False)
    forced = CliRunner().invoke(app, [*argv, "--again"])
    assert forced.exit_code == 0, forced.output
    assert len(smtp_server.messages) == 6
    # the flow itself (as a deployment would run it) refuses without allow_repeats
    from mailcast.orchestration import get_flow
    from mailcast.spec import load_spec

    monkeypatch.setenv("MAILCAST_DATABASE_URL", pg_url)
    state = get_flow("send-campaign")(
        spec=load_spec(spec), dry_run=False, smtp_url=smtp_server.url, return_state=True
    )
    assert state.is_failed()
    assert "already sent to this audience" in str(state.message)
    assert len(smtp_server.messages) == 6


def test_the_same_file_in_another_campaign_folder_is_another_source() -> None:
    from mailcast.ledger.campaign_audience import same_source

    a = {"base_dir": "/c/one", "recipients": {"path": "data.csv", "sql": None}}
    assert same_source(a, {"base_dir": "/c/one/", "recipients": {"path": "./data.csv"}})
    assert not same_source(a, {"base_dir": "/c/two", "recipients": {"path": "data.csv"}})
    assert same_source({"recipients": {"list": "news", "segment": None}},
                       {"recipients": {"list": "news"}})  # fmt: skip
    assert not same_source({"recipients": {"list": "news"}}, {"recipients": {"segment": "news"}})


def test_a_key_without_once_per_contact_is_recorded_and_respected_later(
    world: dict[str, Any], tmp_path: Path
) -> None:
    ledger, t = world["ledger"], world["t"]
    key = f"spring-{t}"
    plain = _spec(tmp_path, f"p-{t}", {"list": world["list"]}, key=key, allow_repeats=True)
    run_id = prepare_run(world["url"], plain, REAL).run_id
    _send_all(ledger, run_id)
    finish_run(ledger, run_id)
    with ledger.engine.connect() as conn:
        recorded = set(conn.execute(select(CST.c.address_key).where(CST.c.key == key)).scalars())
    assert recorded == {f"ann@{t}.example", f"bob@{t}.example"}
    once = _spec(tmp_path, f"o-{t}", {"list": world["list"]}, key=key, once_per_contact=True)
    assert prepare_run(world["url"], once, REAL).to_send == 0
