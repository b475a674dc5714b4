"""`mailcast validate --dns` (issue 14): SPF, DKIM and DMARC read from a real DNS server on
127.0.0.1 (dnslib; MAILCAST_DNS_SERVER points the checks at it): a domain set up right passes,
and each problem is one line naming the record to publish, with its exact value when known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mailcast import spf
from mailcast.cli import app
from mailcast.compose.dkim import parse_key
from mailcast.dnscheck import Resolver, check_campaign, org_domain
from mailcast.spec import CampaignSpec
from tests.dkim_campaign import pem, signed_campaign
from tests.dnszone import LocalDns

SMTP = "smtp://smtp.mailcast.example:587"
SMTP_IP = "203.0.113.25"
KEY_NAME = "mc1._domainkey.mailcast.example"


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A domain set up right: SPF of the bounce domain passes for the SMTP server through mx,
    include, ip4 and redirect=; the DKIM key; DMARC at the organizational domain."""
    with LocalDns() as dns:
        monkeypatch.setenv("MAILCAST_DNS_SERVER", dns.address)
        monkeypatch.setenv("MAILCAST_DNS_TIMEOUT", "2")
        dns.a("smtp.mailcast.example", SMTP_IP)
        dns.txt("bounces.mailcast.example", "v=spf1 mx include:_spf.mailcast.example -all")
        dns.mx("bounces.mailcast.example", "mx1.mailcast.example")
        dns.a("mx1.mailcast.example", "192.0.2.10")
        dns.txt(
            "_spf.mailcast.example", "v=spf1 ip4:198.51.100.0/24 redirect=_spf2.mailcast.example"
        )
        dns.txt("_spf2.mailcast.example", "v=spf1 ip6:2001:db8::/32 a:smtp.mailcast.example -all")
        dns.txt(KEY_NAME, parse_key(pem("rsa"), "k").record())
        dns.txt("_dmarc.mailcast.example", "v=DMARC1; p=quarantine; rua=mailto:d@mailcast.example")
        yield dns


@pytest.fixture
def campaign(tmp_path: Path) -> CampaignSpec:
    return signed_campaign(tmp_path / "c", "rsa", n=2, bounce_domain="bounces.mailcast.example")


def validate(spec: CampaignSpec, *args: str) -> Any:
    spec_path = Path(spec.base_dir) / "spec.yaml"
    return CliRunner().invoke(app, ["validate", str(spec_path), "--dns", *args])


def problems(spec: CampaignSpec, url: str | None = SMTP, ips: list[str] | None = None) -> list[str]:
    findings = check_campaign(spec, Resolver.from_settings(), url=url, ips=ips)
    return [f"{f.check}: {f.text}" for f in findings if not f.ok]


def test_a_domain_set_up_right_passes(zone: LocalDns, campaign: CampaignSpec) -> None:
    result = validate(campaign, "--smtp", SMTP)
    assert result.exit_code == 0, result.output
    lines = result.output.replace("\n  ", "  ").splitlines()
    assert f"DNS ({zone.address}):" in result.output
    spf_line = next(line for line in lines if "SPF" in line and "ok" in line)
    assert f"bounces.mailcast.example passes for smtp.mailcast.example ({SMTP_IP})" in spf_line
    assert "4 of 10 lookups" in spf_line  # mx, include, redirect=, a
    assert f"{KEY_NAME} holds the campaign's public key (rsa-sha256, 2048-bit)" in result.output
    assert "_dmarc.mailcast.example p=quarantine; aligned by DKIM (d=mailcast.example) and SPF" in (
        result.output
    )
    assert "problem" not in result.output
    # the same host given by its address, and by the settings' SMTP URL
    assert not problems(campaign, ips=[SMTP_IP])
    assert not problems(campaign, url=f"smtp://{SMTP_IP}:25")


def test_no_spf_record_says_what_to_publish(zone: LocalDns, campaign: CampaignSpec) -> None:
    zone.clear("bounces.mailcast.example")
    result = validate(campaign, "--smtp", SMTP)
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if "problem" in x]
    assert "SPF" in line
    assert 'publish TXT bounces.mailcast.example "v=spf1 ip4:203.0.113.25 ~all"' in line


def test_spf_that_fails_for_the_server(zone: LocalDns, campaign: CampaignSpec) -> None:
    assert problems(campaign, ips=["203.0.113.99"]) == [  # DMARC still aligns through DKIM
        "SPF: bounces.mailcast.example gives fail for 203.0.113.99 (--sending-ip): "
        'publish TXT bounces.mailcast.example "v=spf1 mx include:_spf.mailcast.example'
        ' ip4:203.0.113.99 -all"'
    ]


def test_spf_over_ten_lookups_and_duplicate_records(zone: LocalDns, campaign: CampaignSpec) -> None:
    zone.clear("bounces.mailcast.example")
    zone.txt("bounces.mailcast.example", "v=spf1 include:i0.mailcast.example -all")
    for i in range(11):
        zone.txt(f"i{i}.mailcast.example", f"v=spf1 include:i{i + 1}.mailcast.example ?all")
    zone.txt("i11.mailcast.example", f"v=spf1 ip4:{SMTP_IP} -all")
    (problem, *_rest) = problems(campaign)
    assert "DNS lookups, over the limit of 10: receivers return permerror" in problem
    zone.txt("bounces.mailcast.example", f"v=spf1 ip4:{SMTP_IP} -all")
    assert problems(campaign)[0] == (
        "SPF: bounces.mailcast.example has 2 SPF records (receivers return permerror): keep one"
    )


@pytest.mark.parametrize(
    "url", ["ses://eu-west-1", "smtp://email-smtp.eu-west-1.amazonaws.com:587"]
)
def test_a_provider_must_be_included(zone: LocalDns, campaign: CampaignSpec, url: str) -> None:
    (problem,) = [p for p in problems(campaign, url=url) if p.startswith("SPF")]
    assert problem == (
        "SPF: bounces.mailcast.example does not include Amazon SES's amazonses.com: publish TXT"
        ' bounces.mailcast.example "v=spf1 mx include:_spf.mailcast.example include:amazonses.com'
        ' -all"'
    )
    zone.clear("_spf2.mailcast.example")
    zone.txt("_spf2.mailcast.example", "v=spf1 include:amazonses.com -all")
    zone.txt("amazonses.com", "v=spf1 ip4:199.255.192.0/22 -all")
    assert not problems(campaign, url=url)


def test_a_local_relay_needs_its_public_address(zone: LocalDns, campaign: CampaignSpec) -> None:
    (problem,) = problems(campaign, url="smtp://127.0.0.1:25")
    assert "is a local relay (127.0.0.1): give the public address mail leaves it from" in problem
    result = validate(campaign, "--smtp", "smtp://127.0.0.1:25", "--sending-ip", SMTP_IP)
    assert result.exit_code == 0, result.output
    result = validate(campaign, "--sending-ip", "not-an-ip")
    assert result.exit_code == 2 and "--sending-ip" in result.output


def test_dkim_record_missing_or_another_key(zone: LocalDns, campaign: CampaignSpec) -> None:
    record = parse_key(pem("rsa"), "k").record()
    zone.clear(KEY_NAME)
    (problem,) = problems(campaign)
    assert problem == f'DKIM: {KEY_NAME} has no DKIM key: publish TXT {KEY_NAME} "{record}"'
    zone.txt(KEY_NAME, parse_key(pem("ed25519"), "k").record())
    (problem,) = problems(campaign)
    assert "is a k=ed25519 key, the campaign's is rsa" in problem and record in problem
    zone.clear(KEY_NAME)
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mailcast.compose.dkim import DkimKey

    other = DkimKey(
        rsa.generate_private_key(public_exponent=65537, key_size=1024), "rsa-sha256", 1024
    )
    zone.txt(KEY_NAME, other.record())
    (problem,) = problems(campaign)
    assert "is not the public key of the campaign's private key (dkim.key_file dkim.pem)" in problem
    zone.clear(KEY_NAME)
    zone.txt(KEY_NAME, "v=DKIM1; k=rsa; p=")
    assert "empty or unreadable p= (a revoked key)" in problems(campaign)[0]


def test_unsigned_campaign_and_missing_dmarc(zone: LocalDns, campaign: CampaignSpec) -> None:
    unsigned = campaign.model_copy(update={"dkim": None})
    unsigned._loaded_from = campaign._loaded_from
    assert problems(unsigned) == [
        "DKIM: the campaign is not signed: add a `dkim` section (README: DKIM signing); Gmail and"
        " Yahoo require DKIM for bulk mail (unless your provider signs for you)"
    ]  # DMARC still aligns through SPF (bounces.mailcast.example)
    zone.clear("_dmarc.mailcast.example")
    assert problems(campaign) == [
        "DMARC: no DMARC policy for mailcast.example: publish TXT _dmarc.mailcast.example"
        ' "v=DMARC1; p=none; rua=mailto:dmarc-reports@mailcast.example" (rua: a mailbox for the'
        " reports)"
    ]


def test_dmarc_needs_an_aligned_identifier(zone: LocalDns, campaign: CampaignSpec) -> None:
    other = campaign.model_copy(update={
        "bounce_domain": "bounces.other.example",
        "dkim": campaign.dkim.model_copy(update={"domain": "other.example"}),  # type: ignore[union-attr]
    })  # fmt: skip
    other._loaded_from = campaign._loaded_from
    zone.txt("mc1._domainkey.other.example", parse_key(pem("rsa"), "k").record())
    zone.txt("bounces.other.example", f"v=spf1 ip4:{SMTP_IP} -all")
    assert problems(other) == [
        "DMARC: _dmarc.mailcast.example p=quarantine: neither DKIM nor SPF aligns with"
        " mailcast.example: sign with d=mailcast.example or a parent of it (`dkim.domain`) and"
        " publish its key, or send with a bounce domain under mailcast.example that SPF passes"
    ]


def test_an_unreachable_resolver_is_one_line_per_check(
    campaign: CampaignSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.dnszone import free_port

    monkeypatch.setenv("MAILCAST_DNS_SERVER", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("MAILCAST_DNS_TIMEOUT", "0.3")
    result = validate(campaign, "--smtp", f"smtp://{SMTP_IP}:25")
    assert result.exit_code == 1
    lines = [x for x in result.output.splitlines() if "problem" in x]
    assert len(lines) == 3 and all("cannot look up" in x for x in lines), result.output


def test_a_bad_resolver_setting_is_one_line(
    campaign: CampaignSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCAST_DNS_SERVER", "dns.example:5x")
    result = validate(campaign)
    assert result.exit_code == 2
    assert "MAILCAST_DNS_SERVER: 'dns.example:5x' is not HOST[:PORT]" in result.output


def test_organizational_domains() -> None:
    assert org_domain("news.mail.acme.example") == "acme.example"
    assert org_domain("a.b.acme.co.uk") == "acme.co.uk"
    assert org_domain("acme.com.au") == "acme.com.au"


# -- SPF evaluation on its own ----------------------------------------------------------------

_TERMS = st.sampled_from(
    ["a", "mx", "a/24", "mx:mx.t.example//64", "ip4:203.0.113.0/24", "ip6:2001:db8::1",
     "include:inc.t.example", "include:missing.t.example", "exists:x.t.example", "ptr",
     "redirect=inc.t.example", "exp=explain.t.example", "%{i}.t.example", "bogus", "all"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(terms=st.lists(st.tuples(st.sampled_from(["", "+", "-", "~", "?"]), _TERMS), max_size=8),
       ip=st.sampled_from(["203.0.113.7", "192.0.2.1", "2001:db8::1"]))  # fmt: skip
def test_any_spf_record_evaluates_to_a_result(terms: list[tuple[str, str]], ip: str) -> None:
    record = "v=spf1 " + " ".join(q + t for q, t in terms)
    zone = {"t.example": [record], "inc.t.example": ["v=spf1 ip4:192.0.2.0/24 -all"]}
    lookups = spf.Lookups(
        lambda name: zone.get(name, []),
        lambda name: ["203.0.113.7"] if name in ("t.example", "x.t.example") else [],
        lambda name: ["t.example"],
    )
    result = spf.evaluate(lookups, "t.example", ip)
    assert result in {"pass", "fail", "softfail", "neutral", "permerror", "unsupported"}
    walked = spf.walk(lookups, "t.example")
    assert walked.lookups >= 0
    assert spf.with_mechanism(record, "ip4:1.2.3.4").startswith("v=spf1")
