"""Choosing a run's transport (issue 14): by URL scheme or by a saved block, the arguments
before the settings, a secret-free record that resume and retry reuse, and ``mailcast
validate`` checking what can be checked without sending."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailcast.cli import app
from mailcast.errors import SpecError, TransportError
from mailcast.settings import Settings
from mailcast.transport.factory import (
    KINDS,
    Target,
    channel_of,
    check_target,
    choose,
    describe_record,
    resolve_block,
    target_for,
    url_kind,
)
from mailcast.transport.smtp import SmtpConfig
from tests.campaigns import people, write_campaign

runner = CliRunner()


def test_a_url_chooses_its_transport_by_scheme() -> None:
    assert url_kind("smtp://h:25").scheme == "smtp"
    assert url_kind("SMTPS://h").scheme == "smtp"
    with pytest.raises(SpecError) as err:
        url_kind("ftp://user:pw@h")
    message = str(err.value)
    assert "smtp://" in message and "pw" not in message
    assert set(KINDS) >= {"smtp"}


def test_arguments_before_settings_blocks_before_urls() -> None:
    env = Settings(transport_url="smtp://env:25", smtp_block="envblock")
    pick = dict(transport_block=None, smtp_block=None, transport_url=None, smtp_url=None)
    assert choose(**pick, settings=env) == Target(block="smtp/envblock")
    assert choose(**{**pick, "smtp_url": "smtp://arg:25"}, settings=env).url == "smtp://arg:25"
    both = {**pick, "transport_url": "smtp://arg:25", "transport_block": "ses/b"}
    assert choose(**both, settings=env) == Target(block="ses/b")
    assert choose(**pick, settings=Settings()) == Target()
    with pytest.raises(SpecError):
        target_for(Settings(), False, None, None, None, "r1")  # a real send needs a transport


def test_the_record_holds_no_secret_and_reads_back() -> None:
    target = Target(url="smtp://news:s3cret@mail.example.org:587")
    record = target.record()
    assert "s3cret" not in record
    assert Target.from_record(record) == Target(url="smtp://news@mail.example.org:587")
    assert describe_record(record) == "mail.example.org:587"
    assert channel_of(record) == "SMTP"
    # runs recorded before issue 14
    old = json.dumps({"smtp_url": None, "smtp_block": "relay", "outbox": None})
    assert Target.from_record(old) == Target(block="smtp/relay")
    assert describe_record(old) == "smtp block relay"
    assert Target(smtp_url="smtp://h:25").url == "smtp://h:25"
    assert channel_of("127.0.0.1:25") == "SMTP"  # a record from before targets were JSON


def test_saved_blocks_by_name_or_kind(prefect_harness: None) -> None:
    from mailcast.blocks import SmtpServer

    name = f"sel-{uuid.uuid4().hex[:8]}"
    SmtpServer(host="127.0.0.1", port=2525, security="none").save(name)
    for ref in (name, f"smtp/{name}", f"mailcast-smtp-server/{name}"):
        kind, block = resolve_block(ref)
        assert kind.scheme == "smtp" and isinstance(block, SmtpServer)
    # a plain name is recorded with its kind: resume finds it without searching
    target = target_for(Settings(), False, None, None, None, "r1", transport_block=name)
    assert target.block == f"smtp/{name}"
    assert isinstance(target.setup(), SmtpConfig)
    assert check_target(target) == "127.0.0.1:2525"
    assert target.limit_key() == f"smtp:{name}"
    with pytest.raises(TransportError) as err:
        resolve_block("no-such-block")
    assert "no saved transport block named 'no-such-block'" in str(err.value)
    with pytest.raises(SpecError):
        resolve_block("nosuchkind/x")


def test_validate_checks_the_transport_without_sending(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path / "c", people(2), attachments=False)
    ok = runner.invoke(app, ["validate", str(spec), "--transport", "smtp://127.0.0.1:1"])
    assert ok.exit_code == 0, ok.output
    assert "transport: 127.0.0.1:1 (checked without sending)" in ok.output
    bad = runner.invoke(app, ["validate", str(spec), "--transport", "smtp://h:99999"])
    assert bad.exit_code != 0 and "invalid SMTP URL" in bad.stderr
    unknown = runner.invoke(app, ["validate", str(spec), "--transport", "gopher://h"])
    assert unknown.exit_code != 0 and "unknown transport URL" in unknown.stderr
    assert "Traceback" not in unknown.stderr + bad.stderr
