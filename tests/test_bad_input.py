"""Hostile and messy input, refused clearly and early (or handled): recipient files, addresses,
header injection, hostile templates and attachments.

File problems go through the CLI as a user meets them: exit code 2, one line
``error: <file>:<row>: <what>`` and a hint, no traceback, and nothing sent to the (real, running)
SMTP server. Row problems end as a skipped or failed row with its reason in the ledger.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import time
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from mailcast.capture import CaptureServer
from mailcast.cli import app
from mailcast.compose.composer import envelope_address
from mailcast.compose.mime import MessageBuilder, clean_header_value
from mailcast.compose.templates import CampaignTemplates
from mailcast.errors import AttachmentError, RunStopped, TemplateError
from mailcast.ledger.store import Ledger
from mailcast.recipients import Recipient
from mailcast.recipients.validate import validate_recipients
from mailcast.spec import spec_from_dict
from mailcast.transport.smtp import SmtpConfig, SmtpTransport
from tests.campaigns import people, write_campaign
from tests.test_faults import plan

runner = CliRunner()
HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def utf8(value: str) -> str:
    """A header value parsed from bytes: UTF-8 (RFC 6532, with SMTPUTF8) comes back from the
    stdlib parser as surrogate escapes."""
    return value.encode("ascii", "surrogateescape").decode("utf-8")


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    with CaptureServer() as smtp:
        yield smtp


def send(spec: Path, server: CaptureServer, db: str) -> Result:
    """`mailcast send SPEC --send` against the running server."""
    return runner.invoke(app, ["send", str(spec), "--send", "--smtp", server.url, "--db", db])


def refused(result: Result, server: CaptureServer, db: str) -> str:
    """The one-line error (with a hint, exit 2, no traceback); nothing sent, nothing planned."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.stderr
    assert server.messages == []
    assert Ledger(db).runs() == []
    return lines[0].removeprefix("error: ")


def campaign(
    folder: Path, data: bytes | None = None, name: str = "people.csv", **extra: Any
) -> Path:
    """A campaign whose recipients file is ``data/<name>`` with the given bytes."""
    spec = write_campaign(
        folder, None, attachments=False, data_file=f"data/{name}", spec_extra=extra
    )
    if data is not None:
        (folder / "data" / name).write_bytes(data)
    return spec


HEADER = b"email,first_name,last_name,city,code\n"


# -- recipient files ---------------------------------------------------------------------------


def test_wrong_encoding_names_file_and_line(tmp_path: Path, server: CaptureServer) -> None:
    data = HEADER + b"a@example.com,Ann,Lee,Paris,A1\nb@example.com,Bob,Li,Oslo,B2\n"
    data += "c@example.com,Zoé,Ørsted,Zürich,C3\n".encode("cp1252")
    spec = campaign(tmp_path, data)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    path = tmp_path / "data" / "people.csv"
    assert line == (
        f"{path}:4: line 4 is not valid UTF-8 (byte 0xE9 at column 17); set `encoding:` in the"
        " spec (e.g. `encoding: cp1252`)"
    )


def test_missing_email_column_names_file_and_header_row(
    tmp_path: Path, server: CaptureServer
) -> None:
    spec = campaign(tmp_path, b"\n\nmail,first_name\na@example.com,Ann\n")
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    path = tmp_path / "data" / "people.csv"
    assert line.startswith(
        f"{path}:3: no column 'email' in the header; columns found: 'mail', 'first_name'"
    )


def test_empty_file(tmp_path: Path, server: CaptureServer) -> None:
    spec = campaign(tmp_path, b"")
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line == f"{tmp_path / 'data' / 'people.csv'}: file is empty (no header row)"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
            "not a text file: this looks like a PNG image",
        ),
        (
            b"email\n" + bytes(range(256)) * 4,
            "not a text file: it contains binary data (NUL bytes)",
        ),
        (b"PK\x03\x04" + bytes(300), "not a text file: this looks like a ZIP archive"),
    ],
    ids=["png", "nul-bytes", "zip"],
)
def test_binary_file_renamed_csv(
    tmp_path: Path, server: CaptureServer, data: bytes, what: str
) -> None:
    spec = campaign(tmp_path, data)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line.startswith(f"{tmp_path / 'data' / 'people.csv'}: {what}")


def test_ragged_rows_are_handled_row_by_row(tmp_path: Path) -> None:
    data = HEADER + (
        b"a@example.com,Ann,Lee,Paris,A1\n"
        b"b@example.com,Bob,Li,Oslo,B2,extra,more\n"  # line 3: too many fields
        b"c@example.com,Cy\n"  # line 4: too few: the rest is empty
        b"d@example.com,Di,Do,Rome,D4,,\n"  # line 5: trailing empty fields are fine
    )
    spec = campaign(tmp_path, data)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    assert "to send: 3" in result.stdout and "rejected: 1" in result.stdout
    (listed,) = [line for line in result.stdout.splitlines() if "b@example.com" in line]
    assert listed.split()[0] == "3" and listed.endswith("row has 7 fields, header has 5")


def test_a_200_mb_file_is_streamed(tmp_path: Path) -> None:
    """Over 200 MB (205,000 rows of ~1 KB): read, validated and deduplicated in seconds."""
    path = tmp_path / "data" / "big.csv"
    path.parent.mkdir(parents=True)
    notes = "n" * 1000
    with path.open("w", encoding="utf-8") as out:
        out.write("email,first_name,last_name,city,code,notes\n")
        for block in range(205):
            out.write(
                "".join(
                    f"p{block}x{i}@example{i % 7}.com,F{i},L{i},Lyon,C{i},{notes}\n"
                    for i in range(1000)
                )
            )
    assert path.stat().st_size > 200 * 1024 * 1024
    spec = write_campaign(tmp_path, None, attachments=False, data_file="data/big.csv")
    started = time.monotonic()
    result = runner.invoke(app, ["validate", str(spec)])
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "205000 rows" in result.stdout and "to send: 205000" in result.stdout
    assert took < 60
    path.unlink()


def workbook(path: Path) -> None:
    """Two sheets: notes first, the people second (formulas with Excel's cached values,
    dates, a datetime and a number)."""
    from openpyxl import Workbook

    wb = Workbook()
    notes = wb.active
    notes.title = "Read me"
    notes.append(["This workbook lists the June recipients."])
    people_sheet = wb.create_sheet("People")
    people_sheet.append(["email", "first_name", "last_name", "city", "code"])
    people_sheet.append(['=LOWER("ANN@EXAMPLE.COM")', "Ann", "Lee", '=UPPER("paris")', 1234])
    people_sheet.append(["bob@example.com", "Bob", "Li", "Oslo", dt.date(2024, 3, 5)])
    people_sheet.append(["cy@example.com", "Cy", "Ng", "Rome", dt.datetime(2024, 3, 5, 9, 30)])
    wb.save(path)
    # openpyxl stores formulas without the value Excel caches with them: add those values.
    cached = {"A2": "ann@example.com", "D2": "PARIS"}
    with zipfile.ZipFile(path) as zin:
        parts = {name: zin.read(name) for name in zin.namelist()}
    name = "xl/worksheets/sheet2.xml"

    def with_value(match: re.Match[bytes]) -> bytes:
        ref = match.group(1).decode()
        return (
            f'<c r="{ref}" t="str"><f>'.encode()
            + match.group(2)
            + f"</f><v>{cached[ref]}</v></c>".encode()
        )

    parts[name] = re.sub(rb'<c r="(\w+)"><f>(.*?)</f><v ?/></c>', with_value, parts[name])
    assert parts[name].count(b"<v>") >= 2
    with zipfile.ZipFile(path, "w") as zout:
        for part, blob in parts.items():
            zout.writestr(part, blob)


def test_excel_sheet_choice_formulas_and_dates(tmp_path: Path, server: CaptureServer) -> None:
    folder = tmp_path / "c"
    (folder / "data").mkdir(parents=True)
    book = folder / "data" / "people.xlsx"
    workbook(book)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"

    # the first sheet holds notes: refused, naming the file and the header row
    spec = write_campaign(folder, None, attachments=False, data_file="data/people.xlsx")
    line = refused(send(spec, server, db), server, db)
    assert line.startswith(f"{book}:1: no column 'email' in the header")
    # a sheet that does not exist
    spec = write_campaign(
        folder, None, attachments=False,
        spec_extra={"recipients": {"path": "data/people.xlsx", "sheet": "Nope"}},
    )  # fmt: skip
    line = refused(send(spec, server, db), server, db)
    assert line == f"{book}: no sheet 'Nope' in the workbook; sheets: 'Read me', 'People'"
    # `sheet: People`: formulas give their values, dates their ISO form
    spec = write_campaign(
        folder, None, attachments=False,
        spec_extra={"recipients": {"path": "data/people.xlsx", "sheet": "People"}},
    )  # fmt: skip
    out = tmp_path / "preview"
    result = runner.invoke(app, ["preview", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    bodies = {}
    for eml in sorted(out.glob("*.eml")):
        msg = parse(eml.read_bytes())
        body = msg.get_body(("plain",))
        assert body is not None
        bodies[msg["To"].addresses[0].addr_spec] = body.get_content()
    assert "your code is 1234. City: PARIS." in bodies["ann@example.com"]
    assert "your code is 2024-03-05. City: Oslo." in bodies["bob@example.com"]
    assert "your code is 2024-03-05T09:30:00. City: Rome." in bodies["cy@example.com"]
    assert server.messages == []


# -- addresses ---------------------------------------------------------------------------------


def test_idn_plus_and_quoted_addresses_without_smtputf8(tmp_path: Path) -> None:
    """A server without SMTPUTF8: an internationalized domain goes as its ASCII form, a
    non-ASCII local part is refused for that row with a reason; the others are sent."""
    addresses = [
        "ann@bücher.example",
        "zoe+june@example.com",
        "jörg@exämple.org",
        "plain@example.com",
        '"john smith"@example.com',
        '"john.smith"@example.com',
    ]
    with CaptureServer(smtputf8=False) as server:
        run = plan(tmp_path, server, addresses=addresses, expect_skipped=True)
        run.send()
    rows = run.rows()
    got = {a: (r["status"], r["reason"], r["attempts"]) for a, r in rows.items()}
    quoted = "invalid address: Quoting the part before the @-sign is not allowed here."
    assert got == {
        "ann@bücher.example": ("sent", None, 1),
        "zoe+june@example.com": ("sent", None, 1),
        "jörg@exämple.org": (
            "failed",
            "not sent: the server does not offer SMTPUTF8, needed for a non-ASCII address",
            1,
        ),
        "plain@example.com": ("sent", None, 1),
        '"john smith"@example.com': ("skipped", quoted, 0),
        '"john.smith"@example.com': ("skipped", quoted, 0),
    }
    by_rcpt = {m.rcpt_tos[0]: m for m in server.messages}
    assert set(by_rcpt) == {
        "ann@xn--bcher-kva.example",
        "zoe+june@example.com",
        "plain@example.com",
    }
    for rcpt, captured in by_rcpt.items():
        assert "SMTPUTF8" not in captured.mail_options
        assert parse(captured.data)["To"].addresses[0].addr_spec == rcpt
    assert run.finish() == "completed"


def test_non_ascii_local_part_is_sent_with_smtputf8(tmp_path: Path) -> None:
    with CaptureServer() as server:
        run = plan(tmp_path, server, addresses=["jörg@exämple.org", "用户@例子.广告"])
        run.send()
    assert {r["status"] for r in run.rows().values()} == {"sent"}
    for captured, address in zip(
        server.messages, ["jörg@exämple.org", "用户@例子.广告"], strict=True
    ):
        assert captured.rcpt_tos == (address,)
        assert "SMTPUTF8" in captured.mail_options
        assert utf8(parse(captured.data)["To"].addresses[0].addr_spec) == address


def test_display_names_with_commas_and_quotes(tmp_path: Path) -> None:
    names = ["Doe, John", 'Ann "The Boss" Lee', 'O\'Brien, Mary "Mo" (CEO)', "Zoë, Ångström"]
    rows = [dict(p, first_name=n) for p, n in zip(people(4), names, strict=True)]
    spec = write_campaign(
        tmp_path, rows, attachments=False,
        spec_extra={"recipients": {"path": "data/recipients.csv", "name_column": "first_name"}},
    )  # fmt: skip
    from mailcast.spec import load_spec

    spec_obj = load_spec(spec)
    templates = CampaignTemplates(spec_obj, list(rows[0]))
    builder = MessageBuilder(spec_obj)
    with CaptureServer() as server, SmtpTransport(SmtpConfig.from_url(server.url)) as transport:
        for i, row in enumerate(rows):
            recipient = Recipient(i + 2, row["email"], row)
            data = builder.build(templates.render(recipient), row["email"], f"m{i}")
            transport.send("s@example.com", row["email"], data)
    to = [parse(m.data)["To"].addresses for m in server.messages]
    assert [(a[0].display_name, a[0].addr_spec) for a in to] == [
        (n, r["email"]) for n, r in zip(names, rows, strict=True)
    ]
    assert all(len(a) == 1 for a in to)  # a comma in a name never makes a second recipient


ATEXT = "abcxyzABC0189!#$%&'*+-/=?^_`{|}~"
local_parts = st.one_of(
    st.text(ATEXT + ".", min_size=1, max_size=20),
    st.text("aéøß日本ж.", min_size=1, max_size=10),
    st.text(' "@\\,<>()[];:\x00\r\n\u2028', min_size=1, max_size=4),  # never valid
)
labels = st.one_of(
    st.text("abz09-", min_size=1, max_size=12), st.text("bücherдом日本", min_size=1, max_size=6)
)
domains = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "example"]))


@pytest.fixture(scope="module")
def module_server() -> Iterator[CaptureServer]:
    with CaptureServer() as smtp:
        yield smtp


@HYPOTHESIS
@given(local=local_parts, domain=domains)
def test_generated_addresses_are_sent_exactly_or_refused_with_a_reason(
    tmp_path: Path, module_server: CaptureServer, local: str, domain: str
) -> None:
    from mailcast.recipients import RecipientTable

    address = f"{local}@{domain}"
    table = RecipientTable("gen.csv", ["email"], [Recipient(2, address, {"email": address})])
    (row,) = validate_recipients(table).rows
    if row.reason is not None:
        assert row.reason.startswith("invalid address: ")
        return
    rcpt = envelope_address(row.address)
    spec = spec_from_dict(
        {"name": "gen", "sender": "s@example.com", "subject": "hi", "text": "x\n",
         "recipients": {"path": "gen.csv"}, "base_dir": str(tmp_path)}
    )  # fmt: skip
    data = MessageBuilder(spec).build(CampaignTemplates(spec, ["email"]).render(row), rcpt, "gen-1")
    before = len(module_server.messages)
    with SmtpTransport(SmtpConfig.from_url(module_server.url)) as transport:
        assert transport.send("s@example.com", rcpt, data).code == 250
    captured = module_server.messages[before]
    assert captured.rcpt_tos == (rcpt,)
    assert utf8(parse(captured.data)["To"].addresses[0].addr_spec) == rcpt
    assert ("SMTPUTF8" in captured.mail_options) == (not rcpt.isascii())


# -- header injection --------------------------------------------------------------------------

SEPARATORS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]
SEPARATORS += ["\u2028", "\u2029"]
PIECES = [
    *SEPARATORS,
    "Bcc: x@evil.example",
    "\r\nBcc: x@evil.example",
    "\nSubject: forged\n\n",
    "\r\n\r\n<html>",
    "\u2028To: y@evil.example",
    "\x85Reply-To: z@evil.example",
    "é", "日本", '"', ",", ":", "<a@b.example>", "=?utf-8?b?QmNjOiB4?=", " ",
]  # fmt: skip
field_values = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=8).map(
    "".join
)
INJECTION_SPEC = {
    "name": "inject",
    "sender": "Acme <news@acme.example>",
    "subject": "{{ first_name }}, about {{ code }}",
    "text": "Hi {{ first_name }} {{ last_name }} from {{ city }}\n",
    "html": "<p>{{ first_name }}</p>\n",
    "recipients": {"path": "x.csv", "name_column": "{{ first_name }} {{ last_name }}"},
    "headers": {"X-City": "{{ city }}", "X-Ref": "ref-{{ code }}", "X-Static": "static"},
}
COLUMNS = ["email", "first_name", "last_name", "city", "code"]


@HYPOTHESIS
@given(first=field_values, last=field_values, city=field_values, code=field_values)
def test_no_field_can_add_or_alter_a_header(
    tmp_path: Path, module_server: CaptureServer, first: str, last: str, city: str, code: str
) -> None:
    spec = spec_from_dict({**INJECTION_SPEC, "base_dir": str(tmp_path)})
    fields = {"email": "z@example.com", "first_name": first, "last_name": last, "city": city,
              "code": code}  # fmt: skip
    rendered = CampaignTemplates(spec, COLUMNS).render(Recipient(2, "z@example.com", fields))
    data = MessageBuilder(spec).build(rendered, "z@example.com", "inj-1")
    before = len(module_server.messages)
    with SmtpTransport(SmtpConfig.from_url(module_server.url)) as transport:
        transport.send("news@acme.example", "z@example.com", data)
    captured = module_server.messages[before]
    assert captured.rcpt_tos == ("z@example.com",)
    msg = parse(captured.data)
    expected = ["from", "to", "subject", "date", "message-id", "mime-version", "x-static"]
    if clean_header_value(city.strip()):
        expected.append("x-city")
    expected += ["x-ref", "content-type"]
    assert [name.lower() for name in msg] == expected
    head = captured.data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):  # every line starts a known header or continues one
        assert line[:1] in (b" ", b"\t") or line.split(b":", 1)[0].lower().decode() in expected
    assert [a.addr_spec for a in msg["To"].addresses] == ["z@example.com"]
    assert msg["From"].addresses[0].addr_spec == "news@acme.example"
    assert msg["X-Static"] == "static"
    for name in ("Subject", "X-Ref", "X-City", "To"):
        value = str(msg[name] or "")
        assert not any(sep in value for sep in SEPARATORS), (name, value)


# -- hostile templates -------------------------------------------------------------------------

HOSTILE = [
    "{% include '/etc/passwd' %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ ''|attr('__class__') }}",
    "{{ recipient['__class__'] }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(recipient) }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s }}",
    "{{ 'x' * 10**12 }}",
    "{{ 'x'.ljust(10**10) }}",
    "{{ 'x'|center(10**10) }}",
    "{{ '%1000000000d' % 1 }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ ('x' * 999999).replace('x', 'x' * 999999) }}",
    "{{ range(100000)|join('x' * 999999) }}",
    "{{ lipsum(10**7) }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_template_fails_quickly_with_a_template_error(tmp_path: Path, source: str) -> None:
    spec = spec_from_dict(
        {"name": "t", "sender": "s@example.com", "subject": "hi", "text": source + "\n",
         "recipients": {"path": "x.csv"}, "base_dir": str(tmp_path)}
    )  # fmt: skip
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        templates = CampaignTemplates(spec, COLUMNS)
        templates.render(Recipient(7, "z@example.com", dict.fromkeys(COLUMNS, "v")))
    assert time.monotonic() - started < 5
    assert info.value.where is not None and re.fullmatch(r"text(:\d+)?", info.value.where)
    assert "Traceback" not in str(info.value)


def test_template_reading_files_is_refused_before_sending(
    tmp_path: Path, server: CaptureServer
) -> None:
    spec = write_campaign(
        tmp_path, people(3), attachments=False, text="{% include '/etc/passwd' %}\n"
    )
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line == (
        "body.txt.j2:1: include, import and extends are not available: a template cannot read"
        " other files"
    )


def test_template_failing_on_every_row_pauses_the_run_and_sends_nothing(tmp_path: Path) -> None:
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
    with CaptureServer() as server:
        run = plan(tmp_path, server, 20, pause_after_failures=3)
        run.spec = run.spec.model_copy(update={"text": text, "html": None})
        with pytest.raises(RunStopped) as info:
            run.send()
    assert "after 3 recipients in a row failed (the last: template error: text:1: row 4:" in str(
        info.value
    )
    rows = run.rows()
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert [r["row_no"] for r in failed] == [2, 3, 4]
    assert failed[0]["reason"] == (
        "template error: text:1: row 2: the template takes more than 1,000,000 loop iterations"
        " and calls to render"
    )
    assert {r["status"] for r in rows.values()} == {"failed", "pending"}
    assert server.messages == []


# -- attachments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attachment", "what"),
    [
        ("files/missing.pdf", "no such file"),
        ("files", "is a directory, not a file"),
        (
            "files/big.bin",
            "bytes encoded, over max_message_bytes (10485760)",
        ),
        ("../outside.pdf", "the file is outside the campaign folder"),
        ("files/link.pdf", "the file is outside the campaign folder"),
    ],
    ids=["missing", "directory", "over-10MB", "dotdot", "symlink"],
)
def test_bad_attachment_is_refused_before_sending(
    tmp_path: Path, server: CaptureServer, attachment: str, what: str
) -> None:
    folder = tmp_path / "campaign"
    (folder / "files").mkdir(parents=True)
    (tmp_path / "outside.pdf").write_bytes(b"%PDF-1.4 secret\n")
    (folder / "files" / "big.bin").write_bytes(b"\0" * (8 * 1024 * 1024))
    (folder / "files" / "link.pdf").symlink_to(tmp_path / "outside.pdf")
    spec = write_campaign(
        folder, people(3), attachments=False, spec_extra={"attachments": [attachment]}
    )
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    line = refused(send(spec, server, db), server, db)
    assert line.startswith(f"{attachment}: ") and what in line, line


@pytest.mark.usefixtures("prefect_harness")
def test_flow_refuses_a_bad_attachment_before_planning(
    tmp_path: Path, server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started without the CLI (a deployment): still refused before the run is planned."""
    from mailcast.flows.campaign import send_campaign

    from mailcast.spec import load_spec

    spec = write_campaign(tmp_path, people(3), spec_extra={"attachments": ["files/nope.pdf"]})
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db)  # the worker's ledger
    with pytest.raises(AttachmentError, match=r"files/nope\.pdf: no such file"):
        send_campaign(spec=load_spec(spec), dry_run=False, smtp_url=server.url)
    assert server.messages == []
    assert Ledger(db).runs() == []


def test_a_bad_row_deep_in_the_file_stops_the_streamed_plan_and_leaves_no_run(
    tmp_path: Path,
) -> None:
    """Prepare streams the rows into the ledger: an undecodable line at row 2,501 is found after
    2,499 rows were written. The error names file:line, and the half-planned run is removed,
    so nothing is sent and no run is left half-written."""
    from mailcast.errors import RunNotFoundError, SourceError
    from mailcast.recipients.prepare import prepare_run
    from mailcast.spec import load_spec
    from mailcast.transport.factory import Target

    spec = load_spec(write_campaign(tmp_path / "c", people(3000), attachments=False))
    csv_path = Path(spec.base_dir) / str(spec.recipients.path)
    lines = csv_path.read_bytes().split(b"\n")
    lines[2500] = lines[2500].replace(b"@", b"\xff@", 1)
    csv_path.write_bytes(b"\n".join(lines))
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    with pytest.raises(SourceError) as err:
        prepare_run(db, spec, Target(outbox=str(tmp_path / "out")), run_id="r1")
    assert f"{csv_path}:2501" in str(err.value)
    assert "encoding:" in str(err.value)  # what to do
    with pytest.raises(RunNotFoundError):
        Ledger(db).run("r1")
