"""``mailcast contacts`` and ``mailcast lists`` as a user runs them (SQLite and real Postgres):
output, --json, exit codes, the import's report and its semantics (upsert, merge or replace,
idempotence, unsubscribed/blocklisted/deleted/erased people reported), list export, and the
privacy export and erasure with what they leave in the ledger."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner, Result

from mailcast.cli import app
from mailcast.errors import AudienceError
from mailcast.ledger.audiences import CR, ER, D, E, address_hash
from mailcast.ledger.events import record_event
from mailcast.ledger.store import Ledger
from mailcast.recipients import Recipient, contacts
from tests.test_cli import assert_user_error

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def run(db: str, *args: Any) -> Result:
    return runner.invoke(app, [str(a) for a in args] + ["--db", db])


def ok(db: str, *args: Any) -> Result:
    result = run(db, *args)
    assert result.exit_code == 0, result.output
    return result


def as_json(db: str, *args: Any) -> Any:
    return json.loads(ok(db, *args, "--json").stdout)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_contact_commands(db_url: str) -> None:
    news = unique("news-")
    addr = f"{unique('ann')}@Example.COM"
    key = addr.lower()
    created = as_json(db_url, "lists", "create", news, "--optin", "double", "--tag", "weekly")
    assert created["optin"] == "double" and created["tags"] == ["weekly"]

    added = as_json(
        db_url, "contacts", "add", addr, "--name", "Ann", "--attr", "city=Paris", "--list", news
    )
    assert added["address"] == addr.split("@")[0] + "@example.com"
    assert added["attributes"] == {"city": "Paris"}
    assert added["lists"] == {news: "unconfirmed"}

    text = ok(db_url, "contacts", "show", key).stdout
    assert "city: Paris" in text and f"list {news}: unconfirmed" in text

    edited = as_json(
        db_url,
        "contacts",
        "edit",
        key,
        "--attributes-json",
        '{"plan": "pro"}',
        "--subscribe",
        news,
        "--status",
        "confirmed",
    )
    assert edited["attributes"] == {"city": "Paris", "plan": "pro"}
    assert edited["lists"] == {news: "confirmed"}
    replaced = as_json(db_url, "contacts", "edit", key, "--replace", "--attr", "plan=free")
    assert replaced["attributes"] == {"plan": "free"}
    blocked = as_json(db_url, "contacts", "edit", key, "--blocklist")
    assert blocked["status"] == "blocklisted"
    unsubscribed = as_json(db_url, "contacts", "edit", key, "--unblocklist", "--unsubscribe", news)
    assert unsubscribed["status"] == "enabled" and unsubscribed["lists"] == {news: "unsubscribed"}
    assert as_json(db_url, "contacts", "edit", key, "--remove-from", news)["lists"] == {}
    ok(db_url, "contacts", "edit", key, "--subscribe", news, "--status", "unsubscribed")

    found = as_json(db_url, "contacts", "search", addr.split("@")[0].upper())
    assert [c["address"] for c in found] == [added["address"]]
    listed = ok(db_url, "contacts", "search", "--list", news).stdout
    assert added["address"] in listed and "1 contact(s)" in listed
    assert (
        as_json(db_url, "contacts", "search", "--list", news, "--member-status", "confirmed") == []
    )

    assert as_json(db_url, "contacts", "delete", key) == {"deleted": key}
    assert_user_error(run(db_url, "contacts", "show", key), "no contact")
    ok(db_url, "contacts", "add", addr)  # an explicit add may bring a deleted contact back


def test_contact_errors_are_one_line(db_url: str) -> None:
    assert_user_error(run(db_url, "contacts", "add", "not an address"), "address:")
    assert_user_error(run(db_url, "contacts", "add", "x@example.com", "--attr", "oops"), "--attr")
    assert_user_error(
        run(db_url, "contacts", "add", "x@example.com", "--attributes-json", "[1]"),
        "--attributes-json",
    )
    assert_user_error(run(db_url, "lists", "show", unique("none-")), "no list")
    assert_user_error(run(db_url, "lists", "create", "x", "--optin", "triple"), "--optin")


def test_list_commands(db_url: str, tmp_path: Path) -> None:
    name = unique("l-")
    ok(db_url, "lists", "create", name, "--description", "Weekly news")
    assert "Weekly news" in ok(db_url, "lists", "show", name).stdout
    edited = as_json(db_url, "lists", "edit", name, "--name", name + "x", "--optin", "double")
    assert edited["name"] == name + "x" and edited["optin"] == "double"
    name += "x"
    assert name in [i["name"] for i in as_json(db_url, "lists", "show")]

    for i, city in enumerate(["Paris", '=HYPERLINK("http://evil")']):
        ok(
            db_url,
            "contacts",
            "add",
            f"{unique('m')}{i}@example.com",
            "--attr",
            f"city={city}",
            "--list",
            name,
        )
    exported = ok(db_url, "lists", "export", name).stdout
    rows = list(csv.reader(exported.splitlines()))
    assert rows[0][:4] == ["address", "name", "status", "contact_status"] and "city" in rows[0]
    city = rows[0].index("city")
    assert sorted(r[city] for r in rows[1:]) == ['\'=HYPERLINK("http://evil")', "Paris"]
    out = tmp_path / "members.json"
    ok(db_url, "lists", "export", name, "--format", "json", "--out", out)
    members = json.loads(out.read_text())
    assert len(members) == 2 and {m["status"] for m in members} == {"unconfirmed"}

    # a list with members is deleted only with --yes
    assert_user_error(run(db_url, "lists", "delete", name), "2 member(s)")
    gone = as_json(db_url, "lists", "delete", name, "--yes")
    assert gone["deleted"] == name and gone["members"]["unconfirmed"] == 2
    assert_user_error(run(db_url, "lists", "show", name), "no list")


# -- import --------------------------------------------------------------------------------------


def test_import_report_upsert_and_idempotence(db_url: str, tmp_path: Path) -> None:
    name = unique("imp-")
    tag = unique("")
    ann, bob, cid = (f"{p}{tag}@example.com" for p in ("ann", "bob", "cid"))
    ok(db_url, "lists", "create", name)
    contacts.add_contact(Ledger(db_url), ann, attributes={"city": "Lyon", "vip": "yes"})
    data = write_csv(
        tmp_path / "people.csv",
        [
            ["email", "name", "city", "plan"],
            [ann.upper(), "Ann", "Paris", "pro"],  # line 2: existing contact, merged
            ["not an address", "", "x", "y"],  # line 3
            [ann, "", "Rome", ""],  # line 4: duplicate of line 2
            [bob, "Bob", "", "free"],  # line 5: new
            [cid, "", "Oslo", "=1+1"],  # line 6: new
        ],
    )
    report = tmp_path / "report.csv"
    dry = as_json(db_url, "lists", "import", name, data, "--name-column", "name", "--dry-run")
    assert dry["dry_run"] and (dry["new"], dry["changed"], dry["joined"]) == (2, 1, 3)
    assert as_json(db_url, "lists", "show", name)["members"]["confirmed"] == 0  # nothing written

    result = ok(
        db_url, "lists", "import", name, data, "--name-column", "name", "--report", report
    ).stdout
    assert "imported 3 of 5 row(s)" in result
    assert "2 new, 1 changed, 0 unchanged contact(s); 3 joined the list" in result
    assert "row 3: not an address: invalid address" in result
    assert f"row 4: {ann}: duplicate of row 2" in result
    with report.open(newline="") as fh:
        reported = list(csv.DictReader(fh))
    assert [(r["row"], r["reason"].split(":")[0]) for r in reported] == [
        ("3", "invalid address"),
        ("4", "duplicate of row 2"),
    ]
    merged = contacts.get_contact(Ledger(db_url), ann)
    assert merged.attributes == {"city": "Paris", "plan": "pro", "vip": "yes"}  # merged
    assert merged.name == "Ann"
    assert contacts.get_contact(Ledger(db_url), cid).attributes == {"city": "Oslo", "plan": "=1+1"}

    again = as_json(db_url, "lists", "import", name, data, "--name-column", "name")
    assert (again["new"], again["changed"], again["joined"]) == (0, 0, 0)
    assert (again["unchanged"], again["already_members"]) == (3, 3)

    replaced = as_json(
        db_url, "lists", "import", name, data, "--name-column", "name", "--attributes", "replace"
    )
    assert replaced["changed"] == 1  # ann loses "vip"
    assert contacts.get_contact(Ledger(db_url), ann).attributes == {"city": "Paris", "plan": "pro"}

    # one consent record per membership the import made, naming the file
    with Ledger(db_url).engine.connect() as conn:
        records = conn.execute(
            select(CR.c.action, CR.c.method, CR.c.source).where(
                CR.c.method == "import", CR.c.source.contains(str(data))
            )
        ).all()
    assert len(records) == 3 and {r.action for r in records} == {"subscribe"}


def test_import_never_undoes_unsubscribe_blocklist_delete_or_erase(
    db_url: str, tmp_path: Path
) -> None:
    ledger = Ledger(db_url)
    name, other = unique("keep-"), unique("other-")
    ok(db_url, "lists", "create", name)
    ok(db_url, "lists", "create", other)
    tag = unique("")
    people = [f"{p}{tag}@example.com" for p in ("uns", "blk", "del", "era", "new")]
    data = write_csv(tmp_path / "p.csv", [["email"], *([p] for p in people)])
    assert as_json(db_url, "lists", "import", name, data)["joined"] == 5
    contacts.add_member(ledger, people[0], other, status="confirmed")
    contacts.unsubscribe(ledger, people[0], name, method="one_click", source="run")
    contacts.blocklist(ledger, people[1])
    contacts.delete_contact(ledger, people[2])
    ok(db_url, "contacts", "erase", people[3], "--yes")
    ok(db_url, "contacts", "delete", people[4])
    ok(db_url, "contacts", "add", people[4])  # re-added on purpose: imported as usual

    result = as_json(db_url, "lists", "import", name, data)
    reasons = {r["address"]: r["reason"] for r in result["rows"]}
    assert reasons[people[0]].startswith("unsubscribed from the list")
    assert reasons[people[1]].startswith("blocklisted")
    assert reasons[people[2]].startswith("deleted")
    assert reasons[people[3]].startswith("erased")
    assert people[4] not in reasons and result["joined"] == 1
    assert result["skipped"] == {
        "unsubscribed from the list": 1,
        "blocklisted": 1,
        "deleted": 1,
        "erased": 1,
    }
    assert contacts.get_contact(ledger, people[0]).lists == {
        name: "unsubscribed",
        other: "confirmed",
    }
    with pytest.raises(Exception, match="no contact"):
        contacts.get_contact(ledger, people[3])


def test_import_xlsx_and_sql(db_url: str, tmp_path: Path) -> None:
    from openpyxl import Workbook

    name = unique("x-")
    ok(db_url, "lists", "create", name, "--optin", "double")
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    tag = unique("")
    sheet.append(["Email", "Plan"])
    sheet.append([f"xa{tag}@example.com", "pro"])
    sheet.append([f"xb{tag}@example.com", None])
    book.save(tmp_path / "people.xlsx")
    result = as_json(
        db_url, "lists", "import", name, tmp_path / "people.xlsx", "--email-column", "Email"
    )
    assert (result["new"], result["joined"]) == (2, 2)
    assert as_json(db_url, "lists", "show", name)["members"]["unconfirmed"] == 2  # double opt-in

    src = f"sqlite:///{tmp_path / 'crm.sqlite3'}"
    import sqlite3

    with sqlite3.connect(tmp_path / "crm.sqlite3") as crm:
        crm.execute("create table people (mail text, town text)")
        crm.executemany(
            "insert into people values (?, ?)",
            [(f"xa{tag}@example.com", "Oslo"), (f"xc{tag}@example.com", "Bergen")],
        )
    result = as_json(
        db_url,
        "lists",
        "import",
        name,
        "--sql-url",
        src,
        "--query",
        "select mail, town from people",
        "--email-column",
        "mail",
        "--status",
        "confirmed",
    )
    assert (result["new"], result["changed"], result["joined"]) == (1, 1, 1)
    assert contacts.get_contact(Ledger(db_url), f"xa{tag}@example.com").attributes == {
        "Plan": "pro",
        "town": "Oslo",
    }


def test_import_bad_input_says_file_line_and_field(db_url: str, tmp_path: Path) -> None:
    name = unique("bad-")
    ok(db_url, "lists", "create", name)
    long_row = tmp_path / "long.csv"
    long_row.write_text(
        "email,note\nok@example.com,fine\nbig@example.com," + "x" * 200_000 + "\n",
        encoding="utf-8",
    )
    line = assert_user_error(run(db_url, "lists", "import", name, long_row))
    assert line.startswith(f"error: {long_row}:3: line 3: cannot parse")
    assert "column 'note' holds 200,000 characters" in line
    data = write_csv(tmp_path / "nocol.csv", [["mail"], ["a@example.com"]])
    assert_user_error(run(db_url, "lists", "import", name, data), "no column 'email'")
    assert_user_error(
        run(db_url, "lists", "import", name, tmp_path / "missing.csv"), "no such file"
    )
    assert_user_error(run(db_url, "lists", "import", name), "give a file or --sql-url")
    # nothing was written by the refused imports
    assert as_json(db_url, "lists", "show", name)["members"]["confirmed"] == 0


def test_import_required_columns_report_the_field(db_url: str, tmp_path: Path) -> None:
    name = unique("req-")
    ok(db_url, "lists", "create", name)
    data = write_csv(tmp_path / "p.csv", [["email", "city"], [f"{unique('r')}@example.com", ""]])
    result = as_json(db_url, "lists", "import", name, data, "--required", "city")
    assert result["rows"] == [
        {"row": 2, "address": result["rows"][0]["address"], "reason": "missing field: city"}
    ]


# -- privacy -------------------------------------------------------------------------------------


def test_privacy_export_and_erase(db_url: str, tmp_path: Path) -> None:
    ledger = Ledger(db_url)
    name = unique("p-")
    addr = f"{unique('eve')}@example.com"
    other = f"{unique('oth')}@example.com"
    ok(db_url, "lists", "create", name)
    contacts.subscribe(
        ledger,
        addr,
        name,
        method="form",
        source="198.51.100.9",
        consent_text="Yes please",
        attributes={"city": "Paris"},
    )
    run_id = ledger.create_run("privacy", {}, dry_run=True, transport=None)
    ledger.plan(
        run_id,
        [
            Recipient(2, addr, {"email": addr, "city": "Paris"}, None, addr),
            Recipient(3, other, {"email": other, "city": "Rome"}, None, other),
        ],
    )
    with ledger.engine.connect() as conn:
        ids = dict(conn.execute(select(D.c.address_key, D.c.id).where(D.c.run_id == run_id)).all())
    record_event(ledger.engine, ids[addr], "click", {"url": "https://x", "user_agent": "UA/1"})
    record_event(ledger.engine, ids[addr], "bounce", {"recipient": addr.upper(), "code": 550})
    contacts.unsubscribe(ledger, addr, name, method="one_click", source="run")
    from mailcast.engagement import suppression

    suppression.add(ledger.engine, [addr], "unsubscribed")

    out = tmp_path / "eve.json"
    ok(db_url, "contacts", "export", addr, "--out", out)
    held = json.loads(out.read_text())
    assert held["contact"]["attributes"] == {"city": "Paris"}
    assert held["memberships"][0]["status"] == "unsubscribed"
    assert [r["action"] for r in held["consent_records"]] == ["subscribe", "unsubscribe"]
    assert held["consent_records"][0]["source"] == "198.51.100.9"
    assert held["deliveries"][0]["fields"] == {"email": addr, "city": "Paris"}
    assert {e["kind"] for e in held["events"]} == {"click", "bounce"}
    assert held["suppression"]["reason"] == "unsubscribed"
    assert held["erased"] is False

    done = as_json(db_url, "contacts", "erase", addr, "--yes")
    placeholder = done["placeholder"]
    assert placeholder.startswith("erased-") and placeholder.endswith("@invalid")
    assert (done["contact"], done["deliveries"], done["events"]) == (True, 1, 2)
    assert done["suppression"] == "kept"
    with ledger.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(D).where(D.c.run_id == run_id))}
        events = conn.execute(select(E.c.detail).where(E.c.delivery_id == ids[addr])).all()
        erased = conn.execute(select(ER.c.address_hash)).scalars().all()
        last = conn.execute(select(CR).order_by(CR.c.id.desc()).limit(1)).mappings().one()
    mine = rows[ids[addr]]
    assert (mine.address, mine.address_key) == (placeholder, placeholder)
    assert mine.fields == {"email": placeholder, "city": ""}
    assert rows[ids[other]].address == other  # others untouched
    assert len(rows) == 2  # figures stay: the row is there, anonymized
    assert all(addr not in json.dumps(e.detail).lower() for e in events)
    assert all("user_agent" not in (e.detail or {}) for e in events)
    assert address_hash(addr) in erased
    assert (last["action"], last["contact_id"], last["list_id"]) == ("erase", None, None)
    after = json.loads(ok(db_url, "contacts", "export", addr).stdout)
    assert after["contact"] is None and after["deliveries"] == [] and after["erased"] is True


def test_contacts_commands_do_not_import_prefect(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    for args in (["lists", "show"], ["contacts", "search"]):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "mailcast", *args, "--db", db],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        assert "prefect" not in result.stderr


def test_import_progress_is_reported_as_rows_are_read(db_url: str, tmp_path: Path) -> None:
    from mailcast.recipients import lists
    from mailcast.recipients.list_import import PROGRESS_EVERY, import_list
    from mailcast.spec import RecipientSource

    name = unique("prog-")
    lists.create_list(Ledger(db_url), name)
    tag = unique("")
    rows = [["email"], *([f"p{i}-{tag}@example.com"] for i in range(PROGRESS_EVERY + 5))]
    data = write_csv(tmp_path / "p.csv", rows)
    seen: list[int] = []
    report = import_list(
        Ledger(db_url), name, RecipientSource(path=str(data)), progress=seen.append
    )
    assert seen == [PROGRESS_EVERY, PROGRESS_EVERY + 5]
    assert report.new == report.joined == PROGRESS_EVERY + 5


@given(
    key=st.text(min_size=1, max_size=20).filter(lambda k: "=" not in k and k.strip() == k != ""),
    value=st.text(max_size=30),
)
def test_attribute_options_parse_key_value_pairs(key: str, value: str) -> None:
    from mailcast.cli.contacts import parse_attributes

    assert parse_attributes([f"{key}={value}"], None) == {key: value}
    assert parse_attributes(None, json.dumps({key: value})) == {key: value}
    with pytest.raises(AudienceError):
        parse_attributes([key], None)


def test_import_many_and_hostile_attribute_names(db_url: str, tmp_path: Path) -> None:
    """60 attribute columns (more than one jsonb_build_object call takes) with names that are
    not identifiers: every one arrives as an attribute, none is SQL."""
    name = unique("wide-")
    ok(db_url, "lists", "create", name)
    hostile = ['x"); DROP TABLE contacts; --', "a'b", "Prénom", "with space", "1st"]
    columns = ["email", *hostile, *(f"c{i}" for i in range(55))]
    addr = f"{unique('w')}@example.com"
    values = [addr, *(f"v{i}" for i in range(len(columns) - 1))]
    data = write_csv(tmp_path / "wide.csv", [columns, values])
    assert as_json(db_url, "lists", "import", name, data)["new"] == 1
    attributes = contacts.get_contact(Ledger(db_url), addr).attributes
    assert attributes == dict(zip(columns[1:], values[1:], strict=True))
    assert as_json(db_url, "lists", "import", name, data)["unchanged"] == 1
