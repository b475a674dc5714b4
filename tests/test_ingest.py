"""mailcast.recipients (csv_source, xlsx_source, sql_source): CSV/TSV/XLSX/SQL recipient sources, their error messages and a round-trip property."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import uuid
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcast.errors import SourceError, SpecError
from mailcast.recipients.sources import read_recipients
from mailcast.redact import redact_url
from mailcast.spec import RecipientSource, SqlSource


def src(path: str | Path, **kw: object) -> RecipientSource:
    return RecipientSource(path=str(path), **kw)  # type: ignore[arg-type]


def write(tmp_path: Path, name: str, data: bytes | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


# --------------------------------------------------------------------------------------------
# CSV


MESSY = (
    "\ufeffemail ; name ; note\r\n"  # line 1: BOM, `;`, padded header names
    "  Ann@Example.COM ;Ann;plain\r\n"  # line 2
    "\r\n"  # line 3: blank
    'bob@example.com;"Smith; Bob";"multi\r\nline note"\r\n'  # lines 4-5
    "\r\n"  # line 6: blank
    "ann@example.com;Ann again;dup\r\n"  # line 7
    "not-an-address;Zoë Ångström;x\r\n"  # line 8
    'yamada@example.jp;山田;"Ann\r\nBcc: x@evil.example"\r\n'  # lines 9-10
    "   \r\n"  # line 11: whitespace only
    "carol@example.com;Carol\r\n"  # line 12: fewer cells than the header
    "dave@example.com;Dave;n;EXTRA\r\n"  # line 13: more cells than the header
    "eve@example.com;Eve;n;;\r\n"  # line 14: extra cells, but empty
)


def test_messy_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "people.csv", MESSY)
    table = read_recipients(src("people.csv"), tmp_path)
    assert table.source == str(path)
    assert table.columns == ["email", "name", "note"]
    by_row = {r.row: r for r in table.rows}
    assert sorted(by_row) == [2, 4, 7, 8, 9, 12, 13, 14]
    assert by_row[2].address == "Ann@Example.COM"
    assert by_row[2].fields == {"email": "Ann@Example.COM", "name": "Ann", "note": "plain"}
    assert by_row[4].fields["name"] == "Smith; Bob"
    assert by_row[4].fields["note"] == "multi\r\nline note"
    assert by_row[8].fields["name"] == "Zoë Ångström"
    assert by_row[9].fields["name"] == "山田"
    # header injection attempts survive verbatim: sanitizing is the renderer's job
    assert by_row[9].fields["note"] == "Ann\r\nBcc: x@evil.example"
    assert by_row[12].fields == {"email": "carol@example.com", "name": "Carol", "note": ""}
    assert by_row[12].reason is None
    assert by_row[13].reason == "row has 4 fields, header has 3"
    assert by_row[13].fields == {"email": "dave@example.com", "name": "Dave", "note": "n"}
    assert by_row[14].reason is None
    assert all(r.reason is None for n, r in by_row.items() if n != 13)
    assert all(r.key is None for r in table.rows)


def test_row_numbers_match_editor_lines(tmp_path: Path) -> None:
    text = 'email,note\n\n\na@x.org,"1\n2\n3"\n\nb@x.org,z\n"c@x.org",\n'
    write(tmp_path, "r.csv", text)
    table = read_recipients(src("r.csv"), tmp_path)
    lines = text.split("\n")
    assert [(r.row, r.address) for r in table.rows] == [
        (4, "a@x.org"),
        (8, "b@x.org"),
        (9, "c@x.org"),
    ]
    for r in table.rows:  # the row number points at the line where the record starts
        assert r.address in lines[r.row - 1]


def test_header_not_on_line_one(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "\n\nemail\na@x.org\n")
    table = read_recipients(src("r.csv"), tmp_path)
    assert [(r.row, r.address) for r in table.rows] == [(4, "a@x.org")]


def test_lone_cr_line_endings(tmp_path: Path) -> None:
    write(tmp_path, "mac.csv", "email,name\ra@x.org,A\rb@x.org,B\r")
    table = read_recipients(src("mac.csv"), tmp_path)
    assert [(r.row, r.fields["name"]) for r in table.rows] == [(2, "A"), (3, "B")]


def test_quoted_fields_after_space(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", 'email, name\na@x.org, "Smith, John"\n')
    (row,) = read_recipients(src("r.csv"), tmp_path).rows
    assert row.fields == {"email": "a@x.org", "name": "Smith, John"}
    assert row.reason is None


def test_trailing_empty_header_cells_are_dropped(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "email,name,,\na@x.org,A,,\n")
    table = read_recipients(src("r.csv"), tmp_path)
    assert table.columns == ["email", "name"]
    assert table.rows[0].fields == {"email": "a@x.org", "name": "A"}
    assert table.rows[0].reason is None


def test_cp1252_needs_declared_encoding(tmp_path: Path) -> None:
    text = "email,name\r\nann@x.org,Ann\r\nzoe@x.org,Zoë “quoted”\r\n"
    path = write(tmp_path, "win.csv", text, encoding="cp1252")
    with pytest.raises(SourceError) as info:
        read_recipients(src("win.csv"), tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert "line 3" in message and "UTF-8" in message and "encoding:" in message
    assert "encoding" in info.value.hint

    table = read_recipients(src("win.csv", encoding="cp1252"), tmp_path)
    assert table.rows[1].fields["name"] == "Zoë “quoted”"


def test_bad_utf8_deep_in_a_large_file_names_its_line(tmp_path: Path) -> None:
    lines = ["email,name"] + [f"u{i}@x.org,N{i}" for i in range(20_000)]
    data = "\n".join(lines).encode() + b"\nlast@x.org,Ren\xe9e\n"
    path = write(tmp_path, "big.csv", data)
    with pytest.raises(SourceError) as info:
        read_recipients(src("big.csv"), tmp_path)
    assert str(info.value).startswith(f"{path}:20002: line 20002 ")


def test_wrong_declared_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", b"email,name\na@x.org,\x81\n")
    with pytest.raises(SourceError) as info:
        read_recipients(src("r.csv", encoding="cp1252"), tmp_path)
    assert str(info.value).startswith(f"{path}:2:")
    with pytest.raises(SourceError, match="unknown encoding 'klingon'"):
        read_recipients(src("r.csv", encoding="klingon"), tmp_path)


def test_declared_utf8_with_bom(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "\ufeffemail\na@x.org\n")
    table = read_recipients(src("r.csv", encoding="utf-8"), tmp_path)
    assert table.columns == ["email"]


def test_utf16_with_bom(tmp_path: Path) -> None:  # Excel's "Unicode text" export
    write(tmp_path, "r.txt", "email\tname\r\na@x.org\tZoë\r\n".encode("utf-16"))
    table = read_recipients(src("r.txt"), tmp_path)
    assert table.rows[0].fields == {"email": "a@x.org", "name": "Zoë"}


def test_tsv(tmp_path: Path) -> None:
    write(tmp_path, "r.tsv", "email\tname\tcity\na@x.org\tAnn, Jr\tParis; FR\n")
    table = read_recipients(src("r.tsv"), tmp_path)
    assert table.rows[0].fields == {"email": "a@x.org", "name": "Ann, Jr", "city": "Paris; FR"}


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_sniffs_each_delimiter(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["name", "email", "city"]) + "\n"
    text += delimiter.join(["Ann", "a@x.org", "Paris"]) + "\n"
    write(tmp_path, "r.txt", text)
    table = read_recipients(src("r.txt"), tmp_path)
    assert table.rows[0].fields == {"name": "Ann", "email": "a@x.org", "city": "Paris"}


def test_delimiter_from_spec_overrides_sniffing(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "email|name,x\na@x.org|A,x\n")
    table = read_recipients(src("r.csv", delimiter="|"), tmp_path)
    assert table.columns == ["email", "name,x"]
    write(tmp_path, "t.csv", "email\tname\na@x.org\tA\n")
    assert read_recipients(src("t.csv", delimiter="\\t"), tmp_path).columns == ["email", "name"]
    with pytest.raises(SpecError, match="one character"):
        read_recipients(src("t.csv", delimiter=";;"), tmp_path)


def test_single_column_file(tmp_path: Path) -> None:
    write(tmp_path, "list.txt", "email\na@x.org\n b@x.org \n")
    table = read_recipients(src("list.txt"), tmp_path)
    assert [r.address for r in table.rows] == ["a@x.org", "b@x.org"]


def test_absolute_path_ignores_base_dir(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "email\na@x.org\n")
    table = read_recipients(src(path), "/nonexistent")
    assert table.rows[0].address == "a@x.org"


def test_streaming_reads_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("email,name\n")
        for i in range(50_000):
            f.write(f"user{i}@example.org,Name {i}\n")
    table = read_recipients(src(path), tmp_path)
    assert len(table.rows) == 50_000
    assert table.rows[-1].row == 50_001
    assert table.rows[-1].address == "user49999@example.org"


# --------------------------------------------------------------------------------------------
# CSV / file errors: each names the file (and line)


def error_of(tmp_path: Path, name: str, **kw: object) -> SourceError:
    with pytest.raises(SourceError) as info:
        read_recipients(src(name, **kw), tmp_path)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    err = error_of(tmp_path, "nope.csv")
    assert str(err) == f"{tmp_path / 'nope.csv'}: no such file"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in str(error_of(tmp_path, "dir.csv"))
    assert str(tmp_path / "dir.csv") in str(error_of(tmp_path, "dir.csv"))


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.csv", b"")
    assert str(error_of(tmp_path, "empty.csv")) == f"{path}: file is empty (no header row)"


def test_only_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "blank.csv", "\n  \r\n\n")
    err = str(error_of(tmp_path, "blank.csv"))
    assert err.startswith(f"{path}: ") and "no header row" in err


def test_png_renamed_csv(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
    path = write(tmp_path, "logo.csv", png)
    err = str(error_of(tmp_path, "logo.csv"))
    assert err.startswith(f"{path}: ") and "not a text file" in err and "PNG" in err


def test_binary_with_nul_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "blob.csv", b"email\n" + bytes(range(256)) * 4)
    err = str(error_of(tmp_path, "blob.csv"))
    assert err.startswith(f"{path}: ") and "binary" in err


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "people.json", "[]")
    err = str(error_of(tmp_path, "people.json"))
    assert err.startswith(f"{path}: ") and "'.json'" in err
    for ext in (".csv", ".tsv", ".txt", ".xlsx"):
        assert ext in err


def test_old_excel(tmp_path: Path) -> None:
    path = write(tmp_path, "old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))
    err = error_of(tmp_path, "old.xls")
    assert str(err).startswith(f"{path}: ") and ".xls" in str(err)
    assert ".xlsx" in err.hint


def test_email_column_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "Mail,Name\na@x.org,A\n")
    err = error_of(tmp_path, "r.csv")
    assert str(err).startswith(f"{path}:1: no column 'email'")
    assert "'Mail', 'Name'" in str(err) and "email_column:" in str(err)
    table = read_recipients(src("r.csv", email_column="Mail"), tmp_path)
    assert table.rows[0].address == "a@x.org"


def test_email_column_case_mismatch_is_suggested(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "Email,Name\na@x.org,A\n")
    assert "email_column: Email" in error_of(tmp_path, "r.csv").hint


def test_name_column_missing(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "email,Name\na@x.org,A\n")
    assert "name_column:" in str(error_of(tmp_path, "r.csv", name_column="name"))


def test_duplicate_header(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "email,name, name \na@x.org,A,B\n")
    err = str(error_of(tmp_path, "r.csv"))
    assert err.startswith(f"{path}:1: column 3: duplicate header name 'name' (also column 2)")


def test_empty_header_name(tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", "\n\nemail,,name\na@x.org,,A\n")
    assert str(error_of(tmp_path, "r.csv")) == f"{path}:3: column 2 has an empty header name"


def test_unclosed_quote_in_large_file(tmp_path: Path) -> None:
    body = "".join(f"u{i}@x.org,n{i}\n" for i in range(20_000))
    path = write(tmp_path, "r.csv", 'email,name\na@x.org,ok\nb@x.org,"oops\n' + body)
    err = str(error_of(tmp_path, "r.csv"))
    assert err.startswith(f"{path}:3: line 3: cannot parse")


# --------------------------------------------------------------------------------------------
# round trip (hypothesis)

cell_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(",;\t|\"'\r\n \\")),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=12,
)


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ncols=st.integers(min_value=1, max_value=4),
    data=st.data(),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    bom=st.booleans(),
)
def test_round_trip(
    tmp_path: Path, ncols: int, data: st.DataObject, delimiter: str, bom: bool
) -> None:
    header = ["email"] + [f"c{i}" for i in range(1, ncols)]
    rows = data.draw(st.lists(st.lists(cell_text, min_size=ncols, max_size=ncols), max_size=15))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path / f"rt-{uuid.uuid4().hex}.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + buffer.getvalue().encode("utf-8"))

    table = read_recipients(src(path), tmp_path)

    expected = [[v.strip() for v in row] for row in rows]
    expected = [row for row in expected if any(row)]  # all-blank rows are blank lines
    assert table.columns == header
    assert [list(r.fields.values()) for r in table.rows] == expected
    assert [r.address for r in table.rows] == [row[0] for row in expected]
    assert all(r.reason is None for r in table.rows)
    rownums = [r.row for r in table.rows]
    assert rownums == sorted(set(rownums)) and all(n >= 2 for n in rownums)


# --------------------------------------------------------------------------------------------
# XLSX


def make_workbook(path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    first = wb.active
    first.title = "Customers"
    first.append(["email", "name", "joined", "orders", "total", "score", "when"])
    first.append([" Ann@Example.com ", "Ann", dt.date(2024, 5, 1), 42, "=D2*2", 2.5, None])
    first.append([])  # empty row 3
    first.append(["bob@example.com", "Bob", dt.datetime(2024, 5, 1, 13, 30), 7.0, None, 1, True])
    first["H4"] = "stray"  # a value right of the header: a ragged row
    second = wb.create_sheet("Staff")
    second.append([None])
    second.append([None, "Email", "Name"])
    second.append([None, "zoe@example.com", "Zoë"])
    wb.save(path)
    # openpyxl writes formulas without a cached value; Excel would store one. Add it.
    with zipfile.ZipFile(path) as zin:
        parts = {name: zin.read(name) for name in zin.namelist()}
    sheet = parts["xl/worksheets/sheet1.xml"]
    assert b"<f>D2*2</f><v />" in sheet or b"<f>D2*2</f><v></v>" in sheet
    sheet = sheet.replace(b"<f>D2*2</f><v />", b"<f>D2*2</f><v>84</v>")
    parts["xl/worksheets/sheet1.xml"] = sheet.replace(
        b"<f>D2*2</f><v></v>", b"<f>D2*2</f><v>84</v>"
    )
    with zipfile.ZipFile(path, "w") as zout:
        for name, blob in parts.items():
            zout.writestr(name, blob)


def test_xlsx_first_sheet(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    make_workbook(path)
    table = read_recipients(src("book.xlsx"), tmp_path)
    assert table.source == str(path)
    assert table.columns == ["email", "name", "joined", "orders", "total", "score", "when"]
    first, second = table.rows
    assert first.row == 2 and second.row == 4
    assert first.address == "Ann@Example.com"
    assert first.fields == {
        "email": "Ann@Example.com",
        "name": "Ann",
        "joined": "2024-05-01",
        "orders": "42",
        "total": "84",  # the formula's cached value
        "score": "2.5",
        "when": "",
    }
    assert second.fields["joined"] == "2024-05-01T13:30:00"
    assert second.fields["orders"] == "7"
    assert second.fields["when"] == "TRUE"
    assert first.reason is None
    assert second.reason == "row has 8 fields, header has 7"


def test_xlsx_named_sheet_with_offset_header(tmp_path: Path) -> None:
    make_workbook(tmp_path / "book.xlsx")
    table = read_recipients(src("book.xlsx", sheet="Staff", email_column="Email"), tmp_path)
    assert table.columns == ["Email", "Name"]
    assert [(r.row, r.address, r.fields["Name"]) for r in table.rows] == [
        (3, "zoe@example.com", "Zoë")
    ]


def test_xlsx_unknown_sheet(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    make_workbook(path)
    err = str(error_of(tmp_path, "book.xlsx", sheet="Nope"))
    assert err.startswith(f"{path}: no sheet 'Nope'") and "'Customers', 'Staff'" in err


def test_xlsx_errors(tmp_path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    wb.save(tmp_path / "empty.xlsx")
    assert "empty" in str(error_of(tmp_path, "empty.xlsx"))
    path = write(tmp_path, "fake.xlsx", "email\na@x.org\n")
    err = str(error_of(tmp_path, "fake.xlsx"))
    assert err.startswith(f"{path}: not a valid .xlsx workbook")
    path = write(tmp_path, "locked.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    assert "password-protected" in str(error_of(tmp_path, "locked.xlsx"))
    wb = Workbook()
    wb.active.append(["mail"])
    wb.save(tmp_path / "nomail.xlsx")
    err = str(error_of(tmp_path, "nomail.xlsx"))
    assert err.startswith(f"{tmp_path / 'nomail.xlsx'}:1: no column 'email'")


# --------------------------------------------------------------------------------------------
# SQL


def test_sqlite_source(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table people (email text, name text, visits int, ratio real)")
        conn.executemany(
            "insert into people values (?, ?, ?, ?)",
            [(" a@x.org ", "Ann", 3, 1.0), ("b@x.org", None, None, 0.25)],
        )
    conn.close()
    url = f"sqlite:///{db}"
    table = read_recipients(
        RecipientSource(sql=SqlSource(url=url, query="select * from people order by email")), "."
    )
    assert table.source == url
    assert table.columns == ["email", "name", "visits", "ratio"]
    assert [(r.row, r.address) for r in table.rows] == [(1, "a@x.org"), (2, "b@x.org")]
    assert table.rows[0].fields == {"email": "a@x.org", "name": "Ann", "visits": "3", "ratio": "1"}
    assert table.rows[1].fields == {"email": "b@x.org", "name": "", "visits": "", "ratio": "0.25"}

    bad = RecipientSource(sql=SqlSource(url=url, query="select * from nope"))
    with pytest.raises(SourceError, match="query failed: no such table: nope"):
        read_recipients(bad, ".")
    no_email = RecipientSource(sql=SqlSource(url=url, query="select name from people"))
    with pytest.raises(SourceError, match="no column 'email'"):
        read_recipients(no_email, ".")


def test_sql_connection_error_masks_password() -> None:
    url = "postgresql+psycopg://mailer:s3cret@127.0.0.1:1/crm"
    with pytest.raises(SourceError) as info:
        read_recipients(RecipientSource(sql=SqlSource(url=url, query="select 1")), ".")
    assert info.value.where == "postgresql+psycopg://mailer:***@127.0.0.1:1/crm"
    assert "s3cret" not in str(info.value) and "s3cret" not in info.value.hint
    assert "cannot connect" in str(info.value)
    assert "URL" in info.value.hint or "url" in info.value.hint


def test_redact_url_masks_a_source_url() -> None:
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.mark.postgres
def test_postgres_source() -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL)
    try:
        conn = engine.connect()
    except Exception as exc:
        engine.dispose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres unreachable at {PG_URL} under CI: {exc}")
        pytest.skip(f"Postgres unreachable at {PG_URL}: {type(exc).__name__}")
    table_name = f"mc_ingest_{uuid.uuid4().hex[:12]}"
    try:
        with conn:
            conn.execute(text(f"create table {table_name} (email text, name text, born date)"))
            conn.execute(
                text(
                    f"insert into {table_name} values ('a@x.org', 'Ann', '1990-02-03'), (' b@x.org', null, null)"
                )
            )
            conn.commit()
        source = RecipientSource(
            sql=SqlSource(
                url=PG_URL, query=f"select email, name, born from {table_name} order by name"
            )
        )
        table = read_recipients(source, ".")
        assert table.columns == ["email", "name", "born"]
        assert [(r.row, r.address) for r in table.rows] == [(1, "a@x.org"), (2, "b@x.org")]
        assert table.rows[0].fields["born"] == "1990-02-03"
        assert table.rows[1].fields == {"email": "b@x.org", "name": "", "born": ""}
    finally:
        with engine.begin() as conn2:
            conn2.execute(text(f"drop table if exists {table_name}"))
        engine.dispose()


def test_read_recipients_is_plain_callable(tmp_path: Path) -> None:
    write(tmp_path, "r.csv", "email\na@x.org\n")
    assert read_recipients(src("r.csv"), str(tmp_path)).rows[0].address == "a@x.org"
