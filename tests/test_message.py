"""mailcast.compose.mime: the bytes built must parse (stdlib, policy.default) into exactly what was meant."""

from __future__ import annotations

import email
import email.policy
import os
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcast.compose.mime import (
    MessageBuilder,
    check_address,
    clean_header_value,
    encode_header,
    encoded_words,
)
from mailcast.compose.templates import Rendered
from mailcast.errors import AttachmentError, MessageBuildError, SpecError
from mailcast.spec import CampaignSpec

HYPOTHESIS = settings(
    max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def make_spec(base: Path, **overrides: Any) -> CampaignSpec:
    data: dict[str, Any] = {
        "name": "june",
        "sender": "Acme News <news@acme.example>",
        "subject": "{{ subject }}",
        "text": "{{ body }}\n",
        "html": "<p>{{ body }}</p>\n",
        "recipients": {"path": "people.csv"},
        "base_dir": str(base),
    }
    data.update(overrides)
    return CampaignSpec.model_validate(data)


def rendered(**overrides: Any) -> Rendered:
    values: dict[str, Any] = {
        "to_name": "Zoë Ångström",
        "subject": "Votre lettre de juin, Zoë ☀",
        "html": "<p>Bonjour Zoë</p>\n",
        "text": "Bonjour Zoë\n",
        "headers": {},
    }
    values.update(overrides)
    return Rendered(**values)


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def assert_wire_format(data: bytes) -> None:
    """CRLF only, no line over 998 bytes, ends with CRLF."""
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(b < 128 for b in head)  # ASCII headers (no SMTPUTF8 address here)


def header_names(msg: EmailMessage) -> list[str]:
    return [name.lower() for name in msg]  # Message iterates over its header names


# -- headers ----------------------------------------------------------------------------------


def test_headers(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        reply_to="Help Desk <help@acme.example>, other@acme.example",
        headers={"X-Campaign": "june", "List-Unsubscribe": "<{{ unsubscribe_url }}>"},
    )
    builder = MessageBuilder(spec)
    assert builder.envelope_sender == "news@acme.example"
    data = builder.build(
        rendered(headers={"X-Campaign": "june", "List-Unsubscribe": "<https://u.example/1>"}),
        "zoe@example.com",
        "abc123@acme.example",
    )
    assert_wire_format(data)
    msg = parse(data)
    assert not msg.defects
    assert header_names(msg) == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "mime-version",
        "x-campaign",
        "list-unsubscribe",
        "content-type",
    ]
    sender = msg["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Acme News", "news@acme.example")
    to = msg["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == ("Zoë Ångström", "zoe@example.com")
    assert str(msg["Subject"]) == "Votre lettre de juin, Zoë ☀"
    assert msg["Message-ID"] == "<abc123@acme.example>"
    assert msg["Date"].datetime is not None
    assert msg["Date"].datetime.utcoffset() is not None
    assert msg["MIME-Version"] == "1.0"
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == [
        "help@acme.example",
        "other@acme.example",
    ]
    assert msg["Reply-To"].addresses[0].display_name == "Help Desk"
    assert msg["X-Campaign"] == "june"
    assert msg["List-Unsubscribe"] == "<https://u.example/1>"


@pytest.mark.parametrize(
    ("given", "header"),
    [
        ("abc", "<abc@acme.example>"),
        ("abc@mail.example", "<abc@mail.example>"),
        ("<abc@mail.example>", "<abc@mail.example>"),
    ],
)
def test_message_id_forms(tmp_path: Path, given: str, header: str) -> None:
    builder = MessageBuilder(make_spec(tmp_path))
    assert parse(builder.build(rendered(), "z@example.com", given))["Message-ID"] == header


def test_message_id_domain(tmp_path: Path) -> None:
    builder = MessageBuilder(make_spec(tmp_path), message_id_domain="ids.example")
    assert builder.format_message_id("x1") == "<x1@ids.example>"


@pytest.mark.parametrize("bad", ["", "a b@x", "a\r\nBcc: e@x", "<a@b>c>", "a@b@c"])
def test_bad_message_id(tmp_path: Path, bad: str) -> None:
    with pytest.raises(MessageBuildError):
        MessageBuilder(make_spec(tmp_path)).build(rendered(), "z@example.com", bad)


def test_explicit_date(tmp_path: Path) -> None:
    data = MessageBuilder(make_spec(tmp_path)).build(
        rendered(), "z@example.com", "x", date="Tue, 03 Jun 2025 10:00:00 +0200"
    )
    assert parse(data)["Date"].datetime.isoformat() == "2025-06-03T10:00:00+02:00"


@pytest.mark.parametrize(
    "address",
    [
        "z@example.com\r\nBcc: x@evil.example",
        "z@example.com\n",
        "z\x00@example.com",
        "a@b.example, c@d.example",
        "Zoe <z@example.com>",
        "z @example.com",
        "no-at-sign",
        "@example.com",
        "z@",
    ],
)
def test_bad_to_address(tmp_path: Path, address: str) -> None:
    with pytest.raises(MessageBuildError):
        MessageBuilder(make_spec(tmp_path)).build(rendered(), address, "x")


def test_check_address_accepts_plain_ones() -> None:
    for address in ["a@b.example", "a.b+tag@sub.b.example", "x@[192.0.2.1]", "用户@例子.广告"]:
        assert check_address(address) == address


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender", "not an address"),
        ("sender", "a@b.example, c@d.example"),
        ("reply_to", "oops"),
    ],
)
def test_bad_sender(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(SpecError) as info:
        MessageBuilder(make_spec(tmp_path, **{field: value}))
    assert info.value.where == field


def test_display_names_with_specials_are_quoted(tmp_path: Path) -> None:
    builder = MessageBuilder(make_spec(tmp_path))
    for name in ['Doe, John "JD"', "a\\b (c) <d> @ e; f:g", "Plain Name"]:
        data = builder.build(rendered(to_name=name), "z@example.com", "x")
        to = parse(data)["To"]
        assert len(to.addresses) == 1
        assert to.addresses[0].display_name == name
        assert to.addresses[0].addr_spec == "z@example.com"
    data = builder.build(rendered(to_name=None), "z@example.com", "x")
    assert b"\r\nTo: z@example.com\r\n" in data


def test_long_headers_are_folded(tmp_path: Path) -> None:
    builder = MessageBuilder(make_spec(tmp_path))
    subject = " ".join(f"word{i}" for i in range(60))
    name = "Ζωή Παπαδοπούλου Καραγιαννοπούλου της Αθήνας και της Θεσσαλονίκης"
    data = builder.build(rendered(subject=subject, to_name=name), "z@example.com", "x")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78 + len("Subject: ")
    msg = parse(data)
    assert str(msg["Subject"]) == subject
    # Python's parser keeps the folding whitespace between encoded-words in a display name
    # (RFC 2047 says to drop it); words are split after a space, so only spaces may differ.
    assert msg["To"].addresses[0].display_name.split() == name.split()


def test_encoded_words_are_short_and_whole() -> None:
    words = encoded_words("ÅÄÖ日本語 " * 40)
    assert all(len(w) <= 75 for w in words)
    assert all(re.fullmatch(r"=\?utf-8\?b\?[A-Za-z0-9+/=]+\?=", w) for w in words)


def test_ascii_that_looks_encoded_is_encoded() -> None:
    line = encode_header("Subject", "=?utf-8?b?QmNjOg==?=")
    assert line.startswith(b"Subject: =?utf-8?b?")
    msg = parse(b"From: a@b.example\r\n" + line + b"\r\n")
    assert str(msg["Subject"]) == "=?utf-8?b?QmNjOg==?="


# -- structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["text", "html", "both"])
@pytest.mark.parametrize("with_attachment", [False, True])
def test_shapes(tmp_path: Path, shape: str, with_attachment: bool) -> None:
    (tmp_path / "terms.pdf").write_bytes(b"%PDF-1.4 tiny")
    spec = make_spec(
        tmp_path,
        text="t\n" if shape != "html" else None,
        html="<p>\n" if shape != "text" else None,
        attachments=["terms.pdf"] if with_attachment else [],
    )
    text = "Bonjour Zoë,\nligne deux\n" if shape != "html" else None
    html = "<p>Bonjour Zoë</p>\n<p>deux</p>" if shape != "text" else None
    data = MessageBuilder(spec).build(rendered(text=text, html=html), "z@example.com", "x")
    assert_wire_format(data)
    msg = parse(data)
    assert not msg.defects

    body_types = {"text": ["text/plain"], "html": ["text/html"], "both": ["multipart/alternative"]}
    if with_attachment:
        assert msg.get_content_type() == "multipart/mixed"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == [*body_types[shape], "application/pdf"]
        assert parts[1].get_content_disposition() == "attachment"
    else:
        assert [msg.get_content_type()] == body_types[shape]
    if shape == "both":
        alternative = next(p for p in msg.walk() if p.get_content_type() == "multipart/alternative")
        assert [p.get_content_type() for p in alternative.iter_parts()] == [
            "text/plain",
            "text/html",
        ]
    leaves = [p for p in msg.walk() if p.get_content_maintype() == "text"]
    assert len(leaves) == (2 if shape == "both" else 1)
    for part in leaves:
        assert part.get_content_charset() == "utf-8"
        expected = text if part.get_content_subtype() == "plain" else html
        assert expected is not None
        assert lf(cast(str, part.get_content())) == expected


def test_missing_body_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MessageBuildError):
        MessageBuilder(make_spec(tmp_path)).build(
            rendered(text=None, html=None), "z@x.example", "x"
        )


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        ("plain ascii\nlines\n", "7bit"),
        ("no final newline", "quoted-printable"),
        (
            "Un été très réussi : merci à tous, et à bientôt pour la suite du programme.\n",
            "quoted-printable",
        ),
        ("日本語のテキストです。\n" * 5, "base64"),
        ("x" * 1200 + "\n", "quoted-printable"),
        ("bell \x07 and nul \x00\n", "quoted-printable"),
        ("trailing spaces   \nkept \t\n", "7bit"),
    ],
)
def test_transfer_encodings(tmp_path: Path, body: str, encoding: str) -> None:
    spec = make_spec(tmp_path, html=None)
    data = MessageBuilder(spec).build(rendered(text=body, html=None), "z@example.com", "x")
    assert_wire_format(data)
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == encoding
    assert lf(cast(str, msg.get_content())) == body


def test_line_endings_become_crlf(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    data = MessageBuilder(spec).build(
        rendered(text="a\r\nb\rc\nd\n", html="é\r\n"), "z@example.com", "x"
    )
    assert_wire_format(data)
    msg = parse(data)
    assert msg.get_body(("plain",)).get_content() == "a\r\nb\r\nc\r\nd\r\n"  # type: ignore[union-attr]


def test_body_holding_the_boundary(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\x00\x01")
    builder = MessageBuilder(make_spec(tmp_path, attachments=["a.bin"]))
    text = "".join(f"--{b}\n--{b}--\n" for b in (builder.boundary_mixed, builder.boundary_alt))
    data = builder.build(rendered(text=text, html=text), "z@example.com", "x")
    msg = parse(data)
    assert not msg.defects
    parts = list(msg.walk())
    assert [p.get_content_type() for p in parts] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/octet-stream",
    ]
    assert lf(cast(str, parts[2].get_content())) == text
    assert lf(cast(str, parts[3].get_content())) == text


def test_boundaries_are_random(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    a, b = MessageBuilder(spec), MessageBuilder(spec)
    assert len({a.boundary_alt, a.boundary_mixed, b.boundary_alt, b.boundary_mixed}) == 4
    assert len(a.boundary_alt) >= 32


# -- attachments ------------------------------------------------------------------------------


def test_binary_attachment_round_trips(tmp_path: Path) -> None:
    payload = os.urandom(140 * 1024)
    (tmp_path / "report.pdf").write_bytes(payload)
    (tmp_path / "Übersicht 2025 – Zoë.pdf").write_bytes(payload[:1000])
    spec = make_spec(tmp_path, attachments=["report.pdf", "Übersicht 2025 – Zoë.pdf"])
    builder = MessageBuilder(spec)
    for _ in range(2):  # the encoded parts are reused, unchanged
        data = builder.build(rendered(), "z@example.com", "x")
        assert_wire_format(data)
        msg = parse(data)
        attachments = list(msg.iter_attachments())
        assert [a.get_content_type() for a in attachments] == ["application/pdf"] * 2
        assert [a.get_filename() for a in attachments] == [
            "report.pdf",
            "Übersicht 2025 – Zoë.pdf",
        ]
        assert attachments[0].get_content() == payload
        assert attachments[1].get_content() == payload[:1000]
        assert all(len(line) <= 76 for line in data.split(b"\r\n")[-100:])


def test_unknown_extension_is_octet_stream(tmp_path: Path) -> None:
    (tmp_path / "data.zzqx").write_bytes(b"abc")
    msg = parse(
        MessageBuilder(make_spec(tmp_path, attachments=["data.zzqx"])).build(
            rendered(), "z@example.com", "x"
        )
    )
    (attachment,) = msg.iter_attachments()
    assert attachment.get_content_type() == "application/octet-stream"


def test_attachment_missing(tmp_path: Path) -> None:
    with pytest.raises(AttachmentError) as info:
        MessageBuilder(make_spec(tmp_path, attachments=["nope.pdf"]))
    assert "nope.pdf" in str(info.value)


def test_attachment_directory(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(AttachmentError) as info:
        MessageBuilder(make_spec(tmp_path, attachments=["folder"]))
    assert "folder" in str(info.value)
    assert "directory" in str(info.value)


def test_attachment_outside_the_campaign_folder(tmp_path: Path) -> None:
    base = tmp_path / "campaign"
    base.mkdir()
    (tmp_path / "outside.pdf").write_bytes(b"secret")
    with pytest.raises(AttachmentError) as info:
        MessageBuilder(make_spec(base, attachments=["../outside.pdf"]))
    assert "../outside.pdf" in str(info.value)
    with pytest.raises(AttachmentError) as info:
        MessageBuilder(make_spec(base, attachments=[str(tmp_path / "outside.pdf")]))
    assert "outside.pdf" in str(info.value)


def test_attachment_symlink_pointing_outside(tmp_path: Path) -> None:
    base = tmp_path / "campaign"
    base.mkdir()
    (tmp_path / "secret.pdf").write_bytes(b"secret")
    (base / "innocent.pdf").symlink_to(tmp_path / "secret.pdf")
    with pytest.raises(AttachmentError) as info:
        MessageBuilder(make_spec(base, attachments=["innocent.pdf"]))
    assert "innocent.pdf" in str(info.value)
    # A symlink that stays inside the folder is fine.
    (base / "real.pdf").write_bytes(b"ok")
    (base / "alias.pdf").symlink_to(base / "real.pdf")
    MessageBuilder(make_spec(base, attachments=["alias.pdf"]))


def test_attachments_over_the_size_limit(tmp_path: Path) -> None:
    (tmp_path / "small.pdf").write_bytes(b"x" * 1000)
    (tmp_path / "big.pdf").write_bytes(os.urandom(4000))
    spec = make_spec(tmp_path, attachments=["small.pdf", "big.pdf"], max_message_bytes=4096)
    with pytest.raises(AttachmentError) as info:
        MessageBuilder(spec)
    assert "big.pdf" in str(info.value)


def test_message_over_the_size_limit(tmp_path: Path) -> None:
    builder = MessageBuilder(make_spec(tmp_path, max_message_bytes=2048))
    builder.build(rendered(), "z@example.com", "x")
    with pytest.raises(AttachmentError) as info:
        builder.build(rendered(text="x" * 3000 + "\n"), "z@example.com", "x", row=12)
    assert "row 12" in str(info.value)
    assert "2048" in str(info.value)


# -- header injection -------------------------------------------------------------------------

SEPARATORS = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]
SEPARATORS += ["\u2028", "\u2029", "\t"]
EVIL_PIECES = [
    *SEPARATORS,
    "Bcc: x@evil.example",
    "\r\nBcc: x@evil.example",
    "\nBcc: x@evil.example\n\n",
    "\r\n\r\n<html>",
    " ",
    "é",
    "日本",
    '"',
    ",",
    "<a@b.example>",
    "=?utf-8?b?",
    "?=",
]
evil_text = st.lists(
    st.one_of(st.sampled_from(EVIL_PIECES), st.text(max_size=6)), min_size=1, max_size=10
).map("".join)


@HYPOTHESIS
@given(to_name=evil_text, subject=evil_text, header=evil_text)
def test_no_header_injection(tmp_path: Path, to_name: str, subject: str, header: str) -> None:
    spec = make_spec(tmp_path, html=None, headers={"X-Ref": "{{ ref }}", "X-Static": "s"})
    builder = MessageBuilder(spec)
    data = builder.build(
        rendered(
            to_name=to_name,
            subject=subject,
            html=None,
            text="body\n",
            headers={"X-Ref": "ref " + header, "X-Static": "s", "Bcc": "x@evil.example"},
        ),
        "z@example.com",
        "id1",
    )
    assert_wire_format(data)
    assert b"\nbcc:" not in data.lower()
    msg = parse(data)
    expected = [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "x-static",
        "x-ref",
        "content-type",
        "content-transfer-encoding",
    ]
    assert header_names(msg) == expected
    assert [a.addr_spec for a in msg["To"].addresses] == ["z@example.com"]
    assert msg["From"].addresses[0].addr_spec == "news@acme.example"
    assert msg.get_content() == "body\r\n"
    for value in (str(msg["Subject"]), str(msg["X-Ref"]), msg["To"].addresses[0].display_name):
        assert not any(sep in value for sep in SEPARATORS if sep != "\t")
    assert " ".join(str(msg["X-Ref"]).split()) == " ".join(
        clean_header_value("ref " + header).split()
    )


# -- round trips ------------------------------------------------------------------------------


@HYPOTHESIS
@given(subject=st.text(max_size=200), text=st.text(max_size=400), html=st.text(max_size=400))
def test_unicode_round_trip(tmp_path: Path, subject: str, text: str, html: str) -> None:
    builder = MessageBuilder(make_spec(tmp_path))
    data = builder.build(rendered(subject=subject, text=text, html=html), "z@example.com", "x")
    assert_wire_format(data)
    msg = parse(data)
    assert " ".join(str(msg["Subject"]).split()) == " ".join(clean_header_value(subject).split())
    plain = msg.get_body(("plain",))
    rich = msg.get_body(("html",))
    assert plain is not None and rich is not None
    assert lf(cast(str, plain.get_content())) == lf(text)
    assert lf(cast(str, rich.get_content())) == lf(html)


@HYPOTHESIS
@given(text=st.text(max_size=300))
def test_single_part_round_trip(tmp_path: Path, text: str) -> None:
    builder = MessageBuilder(make_spec(tmp_path, html=None))
    data = builder.build(rendered(text=text, html=None), "z@example.com", "x")
    assert_wire_format(data)
    assert lf(cast(str, parse(data).get_content())) == lf(text)


@HYPOTHESIS
@given(name=st.text(min_size=1, max_size=40))
def test_display_name_round_trip(tmp_path: Path, name: str) -> None:
    builder = MessageBuilder(make_spec(tmp_path))
    data = builder.build(rendered(to_name=name), "z@example.com", "x")
    assert_wire_format(data)
    to = parse(data)["To"]
    assert [a.addr_spec for a in to.addresses] == ["z@example.com"]
    expected = clean_header_value(name)
    if len(expected.encode()) <= 45:  # one encoded-word (or plain): exact
        assert to.addresses[0].display_name.split() == expected.split()
    else:  # Python's parser adds a space between encoded-words (see test_long_headers_are_folded)
        assert "".join(to.addresses[0].display_name.split()) == "".join(expected.split())
