"""Segments: the expression language (errors with their column), what each condition matches on
SQLite and Postgres (attributes, lists, engagement, contact fields), saved segments, and the
hypothesis test: random expressions from the grammar, with hostile strings, either parse and run
without an SQL error (and never inject) or fail with a column."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from mailcast.errors import SegmentError
from mailcast.ledger.store import Ledger
from mailcast.recipients import segments
from mailcast.recipients.segments import parse
from tests.audience_rows import CT, add_contacts, add_list, add_members, sent_run, tag

# -- the language ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "column", "message"),
    [
        ("city = ", 8, "expected a value after '='"),
        ('city = "Paris" and', 19, "expected a condition"),
        ("(age > 3", 9, "expected ')' to close the '(' of column 1"),
        ("age > 3)", 8, "a ')' without its '('"),
        ("", 1, "the expression is empty"),
        ("   ", 1, "the expression is empty"),
        ('city "Paris"', 6, "expected a comparison after 'city'"),
        ('city = "Par', 8, "unterminated string"),
        ('city = "a\\qb"', 10, "unknown escape \\q"),
        ("opened = 1", 8, "expected 'and', 'or' or the end"),
        ("clicked within 0 days", 16, "more than 0"),
        ("clicked within 30 fortnights", 19, "expected days, hours or weeks"),
        ("in list news", 9, "expected a list's name"),
        ("age >= 12abc", 8, "not a number"),
        ('plan in ("a", )', 15, "expected a value after ','"),
        ("created yesterday", 9, "after 'created'"),
        ('created before "31/01/2026"', 16, "not a date"),
        ("city = 'a' ; drop table contacts", 12, "unexpected character ';'"),
        ("not", 4, "expected a condition"),
        ('city = "x\x00"', 8, "NUL"),
        ("`` = 1", 1, "an empty `name`"),
        ("and = 1", 1, "an attribute of that name goes in backticks"),
    ],
)
def test_a_bad_expression_says_where(expression: str, column: int, message: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(expression, where="segment 'x'")
    assert caught.value.column == column, str(caught.value)
    text = str(caught.value)
    assert text.startswith(f"segment 'x': column {column}: "), text
    assert message in text


def test_the_issue_examples_parse() -> None:
    for expression in (
        'city = "Paris" and opened any campaign in the last 30 days',
        "not clicked within 180 days",
        'age >= 30 and plan in ("pro", "team") and name contains "x"',
        'city is set and email ends with "@example.com" and created within 7 days',
        'in list "news" and not unsubscribed from list "other"',
        'received campaign "spring-sale" or `First Name` starts with "A"',
        "vip = true or score < -1.5",
        "NOT (City = 'Lyon' OR city IS NOT SET)",
    ):
        parse(expression)


def test_nesting_is_bounded() -> None:
    with pytest.raises(SegmentError, match="nested more than"):
        parse("(" * 100 + "a = 1" + ")" * 100)
    with pytest.raises(SegmentError, match="nested more than"):
        parse("not " * 100 + "a = 1")


# -- what conditions match ------------------------------------------------------------------


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    return Ledger(db_url)


def _matches(ledger: Ledger, expression: str) -> set[str]:
    counted = segments.count(ledger.engine, expression=expression, sample=1000)
    assert counted.contacts == len(counted.sample)
    return {a.split("@")[0] for a in counted.sample}


def test_conditions_match_the_right_contacts(ledger: Ledger) -> None:
    t = tag()
    old = datetime.now(UTC) - timedelta(days=40)
    people: list[dict[str, Any]] = [
        {"address": f"ann@{t}.example", "name": "Ann Lee",
         "attributes": {"t": t, "city": "Paris", "age": 34, "plan": "pro", "vip": True}},
        {"address": f"bob@{t}.example", "name": "Bob",
         "attributes": {"t": t, "city": "Lyon", "age": "29", "plan": "team", "vip": "FALSE"}},
        {"address": f"cy@{t}.example", "name": None, "created_at": old,
         "attributes": {"t": t, "city": "paris", "age": "n/a", "plan": "free", "note": ""}},
        {"address": f"dee@{t}.example", "name": "Dee",
         "attributes": {"t": t, "age": 30.5, "First Name": "Dée", "vip": "true"}},
        {"address": f"eve@{t}.example", "name": "Eve", "status": "blocklisted",
         "attributes": {"t": t, "city": "Paris", "age": 50}},
    ]  # fmt: skip
    ids = add_contacts(ledger.engine, people)
    news, other = f"news-{t}", f"other-{t}"
    double = add_list(ledger.engine, news, optin="double")
    single = add_list(ledger.engine, other, optin="single")
    by = {p["address"].split("@")[0]: ids[p["address"]] for p in people}
    add_members(ledger.engine, double, {by["ann"]: "confirmed", by["bob"]: "unconfirmed",
                                        by["cy"]: "unsubscribed", by["eve"]: "confirmed"})  # fmt: skip
    add_members(ledger.engine, single, {by["bob"]: "unconfirmed", by["dee"]: "confirmed"})
    addr = {k: f"{k}@{t}.example" for k in by}
    sale = f"spring-sale-{t}"
    sent_run(ledger, sale, [addr["ann"], addr["bob"]],
             events={addr["ann"]: [("open", timedelta(days=2)), ("click", timedelta(days=200))],
                     addr["bob"]: [("open", timedelta(days=45))]})  # fmt: skip
    sent_run(ledger, f"dry-{t}", [addr["cy"]], dry_run=True,
             events={addr["cy"]: [("open", timedelta(days=1)), ("click", timedelta(days=1))]})  # fmt: skip
    sent_run(ledger, f"later-{t}", [addr["dee"]],
             events={addr["dee"]: [("click", timedelta(days=3))]})  # fmt: skip

    cases = {
        'city = "Paris"': {"ann", "eve"},
        'city != "Paris"': {"bob", "cy", "dee"},
        'city in ("Paris", "Lyon")': {"ann", "bob", "eve"},
        'city not in ("Paris", "Lyon")': {"cy", "dee"},
        'city contains "ARI"': {"ann", "cy", "eve"},
        'city starts with "ly"': {"bob"},
        "city is set": {"ann", "bob", "cy", "eve"},
        "city is not set": {"dee"},
        "note is set": set(),
        "age >= 30": {"ann", "dee", "eve"},
        "age < 30": {"bob"},
        "age = 29": {"bob"},
        "age != 29": {"ann", "cy", "dee", "eve"},
        'age = "29"': {"bob"},
        "age > 1000": set(),
        "vip = true": {"ann", "dee"},
        "vip = false": {"bob"},
        'plan in ("pro", "team")': {"ann", "bob"},
        '`First Name` = "Dée"': {"dee"},
        'name contains "lee"': {"ann"},
        "name is not set": {"cy"},
        f'email ends with "@{t}.EXAMPLE"': {"ann", "bob", "cy", "dee", "eve"},
        f'email = "ANN@{t}.example"': {"ann"},
        "created within 7 days": {"ann", "bob", "dee", "eve"},
        "not created within 7 days": {"cy"},
        f'in list "{news}"': {"ann", "eve"},
        f'unconfirmed in list "{news}"': {"bob"},
        f'unsubscribed from list "{news}"': {"cy"},
        f'in list "{other}"': {"bob", "dee"},
        "opened any campaign within 30 days": {"ann"},
        "opened in the last 60 days": {"ann", "bob"},
        "clicked within 180 days": {"dee"},
        "not clicked within 180 days": {"ann", "bob", "cy", "eve"},
        "clicked": {"ann", "dee"},
        f'received campaign "{sale}"': {"ann", "bob"},
        "received within 1 hours": {"ann", "bob", "dee"},
        "received": {"ann", "bob", "dee"},
        'city = "Paris" and opened any campaign in the last 30 days': {"ann"},
        f'(city = "Lyon" or in list "{other}") and not vip = true': {"bob"},
    }
    got = {}
    for expression, expected in cases.items():
        got[expression] = _matches(ledger, f't = "{t}" and ({expression})')
        assert got[expression] == expected, (expression, got[expression])
    counted = segments.count(ledger.engine, expression=f't = "{t}" and city = "Paris"')
    assert (counted.contacts, counted.enabled) == (2, 1)  # eve is blocklisted


def test_an_unknown_list_is_an_error_with_its_column(ledger: Ledger) -> None:
    with pytest.raises(SegmentError) as caught:
        segments.count(ledger.engine, expression=f'a = 1 or in list "nope-{tag()}"')
    assert caught.value.column == 18
    assert "no list named" in str(caught.value)


def test_saved_segments_create_edit_show_count_delete(ledger: Ledger) -> None:
    t = tag()
    add_contacts(ledger.engine, [{"address": f"a@{t}.example", "attributes": {"t": t}}])
    name = f"seg-{t}"
    created = segments.create(ledger.engine, name, f't = "{t}"', "test segment")
    assert created.expression == f't = "{t}"'
    assert segments.count(ledger.engine, name).contacts == 1
    with pytest.raises(SegmentError, match="exists"):
        segments.create(ledger.engine, name, "a = 1")
    with pytest.raises(SegmentError, match=r"column 5: expected a value"):
        segments.edit(ledger.engine, name, expression="t = ")
    segments.edit(ledger.engine, name, expression=f't = "{t}" and b = 2', rename=f"{name}-2")
    assert segments.show(ledger.engine, f"{name}-2").expression.endswith("b = 2")
    assert segments.count(ledger.engine, f"{name}-2").contacts == 0
    assert f"{name}-2" in [s.name for s in segments.all_segments(ledger.engine)]
    segments.delete(ledger.engine, f"{name}-2")
    with pytest.raises(SegmentError, match="no such segment"):
        segments.show(ledger.engine, f"{name}-2")
    with pytest.raises(SegmentError, match="not a segment name"):
        segments.create(ledger.engine, "bad\nname", "a = 1")


# -- hypothesis: random expressions never give an SQL error or an injection --------------------

HOSTILE = st.one_of(
    st.sampled_from(
        [
            "'; DROP TABLE contacts; --", '"); DELETE FROM contacts; --', "\\", "\\\\'", "%",
            "_", "a%b_c", "' OR '1'='1", "`", "$.x", '{"a": 1}', "Zürich", "東京", "🙂",
            "\u202e", "x\ny", "", " ", "NaN", "1e999999", "-0", "30", "true", "null",
        ]
    ),
    st.text(max_size=12),
)  # fmt: skip


def _quote(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _field(s: str) -> str:
    return f"`{s}`" if s and "`" not in s else "city"


_values = st.one_of(
    HOSTILE.map(_quote),
    st.integers(-(10**12), 10**12).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.sampled_from(["true", "false"]),
)
_fields = st.one_of(st.sampled_from(["city", "age", "email", "name", "plan"]), HOSTILE.map(_field))
_period = st.one_of(
    st.just(""),
    st.tuples(st.integers(1, 400), st.sampled_from(["days", "hours", "weeks", "day"])).map(
        lambda p: f" within {p[0]} {p[1]}"
    ),
)


def _condition(list_name: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(_fields, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), _values).map(
            " ".join
        ),
        st.tuples(_fields, st.lists(_values, min_size=1, max_size=3)).map(
            lambda p: f"{p[0]} in ({', '.join(p[1])})"
        ),
        st.tuples(
            _fields, st.sampled_from(["contains", "starts with", "ends with"]), HOSTILE.map(_quote)
        ).map(" ".join),
        st.tuples(_fields, st.sampled_from(["is set", "is not set"])).map(" ".join),
        st.sampled_from([f'in list "{list_name}"', f'unsubscribed from list "{list_name}"']),
        st.tuples(
            st.sampled_from(["opened", "clicked", "received", "bounced"]),
            st.one_of(
                st.just(""),
                st.just(" any campaign"),
                HOSTILE.map(lambda s: f" campaign {_quote(s)}"),
            ),
            _period,
        ).map("".join),
        st.sampled_from(["created within 3 days", 'created before "2026-01-01"']),
    )


def _expressions(list_name: str) -> st.SearchStrategy[str]:
    return st.recursive(
        _condition(list_name),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or", "AND", "Or"]), inner).map(" ".join),
            inner.map(lambda e: f"not {e}"),
            inner.map(lambda e: f"({e})"),
        ),
        max_leaves=6,
    )


def _mangled(list_name: str) -> st.SearchStrategy[str]:
    """A valid expression with a slice cut out or hostile text put in: mostly parse errors."""
    return st.tuples(_expressions(list_name), st.integers(0, 200), st.integers(0, 8), HOSTILE).map(
        lambda p: p[0][: p[1]] + p[3] + p[0][p[1] + p[2] :]
    )


@pytest.fixture(scope="module")
def both_ledgers(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> list[Ledger]:
    sqlite = tmp_path_factory.mktemp("hyp") / "ledger.sqlite3"
    return [Ledger(f"sqlite:///{sqlite}"), Ledger(pg_url)]


@pytest.fixture(scope="module")
def hostile_world(both_ledgers: list[Ledger]) -> dict[str, Any]:
    """On both databases: a list, contacts whose attributes hold hostile keys and values."""
    t = tag()
    list_name = f"hyp-{t}"
    for ledger in both_ledgers:
        lid = add_list(ledger.engine, list_name)
        rows = [
            {"address": f"h{i}-{t}@x.example", "name": "O'Brien; --",
             "attributes": {"city": v, "age": v, "plan": i, v: v, "t": t}}
            for i, v in enumerate(["'; DROP TABLE contacts; --", "1e999999", "30", "", "\\"])
        ]  # fmt: skip
        ids = add_contacts(ledger.engine, rows)
        add_members(ledger.engine, lid, {i: "confirmed" for i in ids.values()})
    return {"list": list_name, "t": t}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_expressions_never_give_an_sql_error(
    both_ledgers: list[Ledger], hostile_world: dict[str, Any], data: st.DataObject
) -> None:
    list_name = hostile_world["list"]
    expression = data.draw(st.one_of(_expressions(list_name), _mangled(list_name)))
    results = []
    for ledger in both_ledgers:
        try:
            counted = segments.count(ledger.engine, expression=expression)
        except SegmentError as exc:
            assert exc.column is not None and 1 <= exc.column <= len(expression) + 1, str(exc)
            assert re.match(r"segment expression: column \d+: ", str(exc)), str(exc)
            results.append("error")
            continue
        results.append("ok")
        assert counted.contacts >= 0
        with ledger.engine.connect() as conn:  # nothing was dropped or deleted
            assert inspect(conn).has_table("contacts")
            assert conn.execute(select(CT.c.id).limit(1)).first() is not None
    assert results[0] == results[1], expression  # parsing does not depend on the database


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.text(min_size=1, max_size=15), value=st.text(max_size=20))
def test_a_hostile_string_matches_exactly_itself(
    both_ledgers: list[Ledger], key: str, value: str
) -> None:
    """A value with quotes, semicolons, backslashes or any Unicode, stored under a key of the
    same kind, is found by equality with its quoted form: the literal reached the database as a
    value, whole (no injection, nothing lost)."""
    expression = f"`{key}` = {_quote(value)} and t = {_quote('rt')}"
    if "`" in key or "\x00" in key + value or any(0xD800 <= ord(c) <= 0xDFFF for c in key + value):
        with pytest.raises(SegmentError):
            parse(expression)
        return
    for ledger in both_ledgers:
        t = tag()
        add_contacts(
            ledger.engine,
            [{"address": f"rt-{t}@x.example", "attributes": {key: value, "t": "rt", "u": t}},
             {"address": f"rt2-{t}@x.example", "attributes": {key: value + "x", "t": "rt"}}],
        )  # fmt: skip
        counted = segments.count(ledger.engine, expression=f"{expression} and u = {_quote(t)}")
        assert counted.contacts == 1, (key, value)


# -- the command line ---------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from mailcast.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_segments_commands(db_url: str) -> None:
    import json
    import subprocess
    import sys

    t = tag()
    ledger = Ledger(db_url)
    add_contacts(ledger.engine, [{"address": f"p{i}@{t}.example",
                                  "attributes": {"t": t, "city": "Paris" if i < 3 else "Rome"}}
                                 for i in range(5)])  # fmt: skip
    name = f"paris-{t}"
    bad = _cli("segments", "create", name, f't = "{t}" and city =', "--db", db_url)
    assert bad.exit_code == 2
    assert f"error: segment '{name}': column " in bad.stderr
    assert "expected a value after '='" in bad.stderr and "Traceback" not in bad.stderr
    made = _cli("segments", "create", name, f't = "{t}" and city = "Paris"', "--db", db_url,
                "--description", "people in Paris")  # fmt: skip
    assert made.exit_code == 0, made.output
    counted = _cli("segments", "count", name, "--json", "--sample", "2", "--db", db_url)
    assert counted.exit_code == 0, counted.output
    data = json.loads(counted.stdout)
    assert (data["contacts"], data["enabled"], len(data["sample"])) == (3, 3, 2)
    plain = _cli("segments", "count", "--expr", f't = "{t}"', "--db", db_url)
    assert "5 contacts" in plain.stdout
    shown = json.loads(_cli("segments", "show", name, "--json", "--db", db_url).stdout)
    assert shown["description"] == "people in Paris"
    edited = _cli("segments", "edit", name, "--expression", f't = "{t}" and city = "Rome"',
                  "--json", "--db", db_url)  # fmt: skip
    assert json.loads(edited.stdout)["expression"].endswith('"Rome"')
    listed = json.loads(_cli("segments", "list", "--json", "--db", db_url).stdout)
    assert name in [s["name"] for s in listed]
    assert _cli("segments", "delete", name, "--db", db_url).exit_code == 0
    gone = _cli("segments", "show", name, "--db", db_url)
    assert gone.exit_code == 2 and "no such segment" in gone.stderr
    # no Prefect for these commands
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom mailcast.cli import app\n"
        f"r = CliRunner().invoke(app, ['segments', 'list', '--db', {db_url!r}])\n"
        "print('prefect' in sys.modules, r.exit_code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "0"], proc.stdout + proc.stderr


def test_postgres_serves_equality_and_is_set_from_the_gin_index(pg_url: str) -> None:
    import json

    from sqlalchemy import func

    from mailcast.ledger import segments as sql

    ledger = Ledger(pg_url)
    with ledger.engine.connect() as conn:
        for expression in ('city = "Paris"', "city is set", 'plan in ("pro", "team")'):
            cond = sql.condition(conn, parse(expression))
            compiled = select(func.count()).where(cond).compile(conn)
            params = {k: json.dumps(v) if isinstance(v, dict) else v
                      for k, v in compiled.params.items()}  # fmt: skip
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}", params))
            assert "ix_contacts_attributes" in plan, (expression, plan)
            conn.rollback()
