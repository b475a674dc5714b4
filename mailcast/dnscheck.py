"""``mailcast validate --dns``: the authentication records a campaign's mail needs, read from DNS.

* **SPF** of the bounce domain (the envelope sender's: ``bounce_domain``, else the sender's
  domain) passes for the sending host: the SMTP server's addresses (``--smtp``, or
  MAILCAST_SMTP_URL; ``--sending-ip`` for the public address of a local relay), or includes
  the provider's SPF domain (``amazonses.com``, ``sendgrid.net``, ``mailgun.org``,
  ``spf.mailjet.com``...) when the transport is a provider's. Evaluated by ``mailcast.spf``,
  within 10 DNS lookups.
* **DKIM**: the TXT record at ``SELECTOR._domainkey.DOMAIN`` holds the public key of the
  campaign's private key.
* **DMARC**: ``_dmarc.`` of the sender's domain (or of its organizational domain) exists, and
  SPF or DKIM aligns with the From domain (relaxed alignment unless ``aspf``/``adkim`` say
  ``s``). The organizational domain is found with a simple public-suffix rule: the last two
  labels, or three under a known two-label suffix such as ``co.uk`` (:data:`TWO_LABEL_SUFFIXES`),
  not the full Public Suffix List.

Each check gives one :class:`Finding`; a problem says which record to publish, with the exact
TXT value when it is known (the DKIM record is built from the private key). The resolver is the
system's, or MAILCAST_DNS_SERVER (``HOST[:PORT]``, comma-separated).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

from mailcast import spf
from mailcast.errors import SpecError
from mailcast.spec import CampaignSpec

SERVER = "MAILCAST_DNS_SERVER"

# (name, SPF domain to include, transport URL schemes, SMTP host name suffixes)
PROVIDERS = (
    ("Amazon SES", "amazonses.com", ("ses",), (".amazonaws.com",)),
    ("SendGrid", "sendgrid.net", ("sendgrid",), ("sendgrid.net",)),
    ("Mailgun", "mailgun.org", ("mailgun",), ("mailgun.org", "mailgun.eu")),
    ("Mailjet", "spf.mailjet.com", ("mailjet",), ("mailjet.com",)),
    ("Google", "_spf.google.com", ("gmail",), ("gmail.com", "google.com", "googlemail.com")),
    ("Microsoft 365", "spf.protection.outlook.com", ("m365",), ("office365.com", "outlook.com")),
)
TWO_LABEL_SUFFIXES = frozenset(
    f"{second}.{tld}"
    for tld, seconds in {
        "uk": "co ac gov org ltd plc me net sch",
        "au": "com net org edu gov id",
        "nz": "co net org ac govt",
        "jp": "co ne or ac go",
        "br": "com net org gov",
        "za": "co org net gov",
        "in": "co net org gov ac",
        "cn": "com net org gov edu",
        "mx": "com org gob",
        "tr": "com org net gov",
        "kr": "co or ne go",
        "sg": "com org net gov edu",
        "il": "co org ac gov",
    }.items()
    for second in seconds.split()
)


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``check`` (SPF, DKIM, DMARC), ``ok``, and one line of text."""

    check: str
    ok: bool
    text: str


def org_domain(domain: str) -> str:
    """The organizational domain (simple public-suffix rule, see the module doc)."""
    labels = domain.lower().rstrip(".").split(".")
    n = 3 if ".".join(labels[-2:]) in TWO_LABEL_SUFFIXES else 2
    return ".".join(labels[-n:])


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment: the same domain (``s``), or the same organizational domain."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def tags(record: str) -> dict[str, str]:
    """A DKIM/DMARC tag list (``k=v; k=v``): names lower-cased, whitespace inside values gone."""
    out: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out.setdefault(name.strip().lower(), "".join(value.split()))
    return out


# -- the resolver -----------------------------------------------------------------------------


def parse_servers(value: str) -> list[tuple[str, int]]:
    """``HOST[:PORT]`` (``[v6]:PORT`` for IPv6), comma-separated, as (host, port) pairs."""
    servers = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") or "53"
        elif item.count(":") == 1:
            host, port = item.split(":")
        else:
            host, port = item, "53"
        servers.append((host, int(port)))
    return servers


class Resolver:
    """The queries of the checks, through dnspython: ``txt``, ``addresses`` (A and AAAA) and
    ``mx`` of a name, each a list (empty for NXDOMAIN or no data). Timeouts and SERVFAIL raise
    ``dns.exception.DNSException``."""

    def __init__(self, server: str | None = None, timeout: float = 5.0) -> None:
        import dns.nameserver
        import dns.resolver

        hint = "set MAILCAST_DNS_SERVER to HOST[:PORT] (an address), e.g. 9.9.9.9 or [::1]:53"
        if server:
            try:
                servers = parse_servers(server)
                for host, _port in servers:
                    ipaddress.ip_address(host)
            except ValueError:
                raise SpecError(
                    f"{server!r} is not HOST[:PORT], comma-separated", where=SERVER, hint=hint
                ) from None
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
            self.where = server
        else:
            try:
                self.resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise SpecError("the system has no DNS resolver", where=SERVER, hint=hint) from None
            self.where = "the system's resolver"
        self.resolver.lifetime = timeout

    @classmethod
    def from_settings(cls) -> Resolver:
        from mailcast.settings import get_settings

        settings = get_settings()
        return cls(settings.dns_server, settings.dns_timeout)

    def _query(self, name: str, rdtype: str) -> list[Any]:
        import dns.resolver

        try:
            return list(self.resolver.resolve(name.rstrip(".") + ".", rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []

    def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._query(name, "TXT")]

    def addresses(self, name: str) -> list[str]:
        return [r.address for kind in ("A", "AAAA") for r in self._query(name, kind)]

    def mx(self, name: str) -> list[str]:
        found = sorted(self._query(name, "MX"), key=lambda r: r.preference)
        return [str(r.exchange).rstrip(".") for r in found if str(r.exchange) != "."]

    def lookups(self) -> spf.Lookups:
        return spf.Lookups(self.txt, self.addresses, self.mx)


# -- who sends --------------------------------------------------------------------------------


# loopback, RFC 1918, link-local, unique local: a relay's address, not the one mail leaves from
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
              "::1/128", "fc00::/7", "fe80::/10")
)  # fmt: skip


@dataclass(frozen=True)
class Sender:
    """The sending host as SPF sees it: a provider's SPF domain, or addresses (``local``: all
    loopback or private, i.e. a relay whose public address is unknown)."""

    label: str
    include: str | None = None
    ips: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return bool(self.ips) and all(
            any(ipaddress.ip_address(ip) in net for net in LOCAL_NETWORKS) for ip in self.ips
        )


def sending_host(resolver: Resolver, url: str | None, ips: list[str]) -> Sender | None:
    """Who sends: ``ips`` when given (the public addresses mail leaves from), else the
    transport URL's provider or SMTP host (its addresses looked up); None when unknown."""
    if ips:
        for ip in ips:
            ipaddress.ip_address(ip)  # ValueError for a typo: the CLI says so
        return Sender("--sending-ip", ips=tuple(ips))
    if not url:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    for name, include, schemes, suffixes in PROVIDERS:
        if parts.scheme.lower() in schemes or (host and host.endswith(suffixes)):
            return Sender(name, include=include)
    if not host:
        return None
    try:
        return Sender(host, ips=(str(ipaddress.ip_address(host)),))
    except ValueError:
        return Sender(host, ips=tuple(resolver.addresses(host)))


# -- the checks -------------------------------------------------------------------------------


def _txt_line(name: str, value: str) -> str:
    return f'publish TXT {name} "{value}"'


def check_spf(resolver: Resolver, domain: str, sender: Sender | None) -> tuple[list[Finding], bool]:
    """SPF of ``domain`` for ``sender``: the findings and whether it passes."""
    lookups = resolver.lookups()
    records = spf.spf_records(resolver.txt(domain))
    if sender is None:
        mechanism = "ip4:ADDRESS-OF-YOUR-SMTP-SERVER"
    elif sender.include:
        mechanism = f"include:{sender.include}"
    else:
        mechanism = " ".join(f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in sender.ips)
    if not records:
        text = f"{domain} has no SPF record: " + _txt_line(
            domain, spf.with_mechanism(None, mechanism)
        )
        return [Finding("SPF", False, text)], False
    if len(records) > 1:
        text = f"{domain} has {len(records)} SPF records (receivers return permerror): keep one"
        return [Finding("SPF", False, text)], False
    record = records[0]
    tree = spf.walk(lookups, domain)
    findings = [Finding("SPF", False, problem) for problem in tree.problems]
    if sender is None:
        text = (
            f"{domain}: {record!r}; no sending host given (--smtp, MAILCAST_SMTP_URL or"
            " --sending-ip): not evaluated"
        )
        return [*findings, Finding("SPF", not findings, text)], False
    if sender.include:
        if sender.include in tree.includes:
            text = f"{domain} includes {sender.include} ({sender.label})"
            return [*findings, Finding("SPF", True, text)], not findings
        text = f"{domain} does not include {sender.label}'s {sender.include}: " + _txt_line(
            domain, spf.with_mechanism(record, mechanism)
        )
        return [*findings, Finding("SPF", False, text)], False
    if not sender.ips:
        text = f"the SMTP server {sender.label} has no address in DNS: SPF not evaluated"
        return [*findings, Finding("SPF", False, text)], False
    if sender.local:
        text = (
            f"the SMTP server {sender.label} is a local relay ({', '.join(sender.ips)}): give"
            " the public address mail leaves it from with --sending-ip"
        )
        return [*findings, Finding("SPF", False, text)], False
    failing = {ip: spf.evaluate(lookups, domain, ip) for ip in sender.ips}
    failing = {ip: result for ip, result in failing.items() if result != "pass"}
    if not failing:
        text = f"{domain} passes for {sender.label} ({', '.join(sender.ips)}); {tree.lookups} of 10 lookups"
        return [*findings, Finding("SPF", True, text)], not findings
    missing = " ".join(f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in failing)
    results = ", ".join(f"{result} for {ip}" for ip, result in failing.items())
    text = f"{domain} gives {results} ({sender.label}): " + _txt_line(
        domain, spf.with_mechanism(record, missing)
    )
    return [*findings, Finding("SPF", False, text)], False


def _same_public_key(published: bytes, key: Any) -> bool:
    """Whether ``published`` (a ``p=``, decoded) is ``key``'s public key; an RSA key may be
    published as SubjectPublicKeyInfo (usual) or PKCS#1."""
    if published == key.public_bytes():
        return True
    if key.key_type != "rsa":
        return False
    from cryptography.hazmat.primitives import serialization

    ours = key.key.public_key().public_numbers()
    loaders: tuple[Any, ...] = (serialization.load_der_public_key, _load_pkcs1)
    for load in loaders:
        try:
            return bool(load(published).public_numbers() == ours)
        except (ValueError, TypeError, AttributeError):
            continue
    return False


def _load_pkcs1(data: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(data)
    return serialization.load_pem_public_key(pem + b"-----END RSA PUBLIC KEY-----\n")


def check_dkim(resolver: Resolver, spec: CampaignSpec) -> tuple[Finding, str | None]:
    """The selector's record holds the campaign's public key: the finding and, when it does,
    the signing domain."""
    from mailcast.compose.dkim import read_key, signing_domain
    from mailcast.errors import DkimError

    if spec.dkim is None:
        text = (
            "the campaign is not signed: add a `dkim` section (README: DKIM signing); Gmail and"
            " Yahoo require DKIM for bulk mail (unless your provider signs for you)"
        )
        return Finding("DKIM", False, text), None
    domain = signing_domain(spec)
    name = f"{spec.dkim.selector}._domainkey.{domain}"
    try:
        key, where = read_key(spec)
    except DkimError as exc:
        return Finding("DKIM", False, f"{exc} (hint: {exc.hint})"), None
    wanted = key.record()
    records = [t for t in resolver.txt(name) if "p=" in t]
    if not records:
        return Finding("DKIM", False, f"{name} has no DKIM key: " + _txt_line(name, wanted)), None
    if len(records) > 1:
        text = f"{name} has {len(records)} DKIM keys: keep one, " + _txt_line(name, wanted)
        return Finding("DKIM", False, text), None
    found = tags(records[0])
    try:
        published = base64.b64decode(found.get("p", ""), validate=True)
    except ValueError:
        published = b""
    if not published:
        problem = "has an empty or unreadable p= (a revoked key)"
    elif found.get("k", "rsa").lower() != key.key_type:
        problem = f"is a k={found.get('k', 'rsa')} key, the campaign's is {key.key_type}"
    elif not _same_public_key(published, key):
        problem = f"is not the public key of the campaign's private key ({where})"
    elif "h" in found and "sha256" not in found["h"].lower().split(":"):
        problem = f"allows only h={found['h']}: mailcast signs with sha256"
    else:
        text = f"{name} holds the campaign's public key ({key.describe()})"
        return Finding("DKIM", True, text), domain
    return Finding("DKIM", False, f"{name} {problem}: " + _txt_line(name, wanted)), None


def check_dmarc(
    resolver: Resolver, from_domain: str, spf_domain: str | None, dkim_domain: str | None
) -> Finding:
    """``_dmarc.`` of the From domain (or of its organizational domain) exists, is valid, and
    SPF (``spf_domain``: the bounce domain, when SPF passes) or DKIM (``dkim_domain``: d=, when
    the key checks out) aligns with the From domain."""
    org = org_domain(from_domain)
    names = [f"_dmarc.{from_domain}"] + ([f"_dmarc.{org}"] if org != from_domain else [])
    for name in names:
        records = [
            t for t in resolver.txt(name) if t.replace(" ", "").upper().startswith("V=DMARC1")
        ]
        if records:
            break
    else:
        value = f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{org}"
        text = f"no DMARC policy for {from_domain}: " + _txt_line(f"_dmarc.{org}", value)
        return Finding("DMARC", False, text + " (rua: a mailbox for the reports)")
    if len(records) > 1:
        return Finding("DMARC", False, f"{name} has {len(records)} DMARC records: keep one")
    policy = tags(records[0])
    p = policy.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        value = f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{org}"
        return Finding("DMARC", False, f"{name} has no valid p=: " + _txt_line(name, value))
    ways = []
    if dkim_domain and aligned(dkim_domain, from_domain, policy.get("adkim", "r").lower()):
        ways.append(f"DKIM (d={dkim_domain})")
    if spf_domain and aligned(spf_domain, from_domain, policy.get("aspf", "r").lower()):
        ways.append(f"SPF ({spf_domain})")
    if ways:
        note = (
            " (monitoring only: p=quarantine or reject once reports look right)"
            if p == "none"
            else ""
        )
        return Finding("DMARC", True, f"{name} p={p}; aligned by {' and '.join(ways)}{note}")
    fixes = (
        f"sign with d={from_domain} or a parent of it (`dkim.domain`) and publish its key, or "
        f"send with a bounce domain under {org} that SPF passes"
    )
    return Finding(
        "DMARC", False, f"{name} p={p}: neither DKIM nor SPF aligns with {from_domain}: {fixes}"
    )


def check_campaign(
    spec: CampaignSpec, resolver: Resolver, *, url: str | None = None, ips: list[str] | None = None
) -> list[Finding]:
    """Every finding for ``spec``'s domains, sent through ``url`` (or from ``ips``)."""
    import dns.exception

    from_domain = parseaddr(spec.sender)[1].rpartition("@")[2].lower()
    bounce_domain = spec.bounce_domain or from_domain
    findings: list[Finding] = []
    spf_ok, dkim_domain = False, None
    try:
        sender = sending_host(resolver, url, ips or [])
        spf_findings, spf_ok = check_spf(resolver, bounce_domain, sender)
        findings += spf_findings
    except dns.exception.DNSException as exc:
        findings.append(_failed("SPF", bounce_domain, exc, resolver))
    try:
        dkim_finding, dkim_domain = check_dkim(resolver, spec)
        findings.append(dkim_finding)
    except dns.exception.DNSException as exc:
        findings.append(_failed("DKIM", "the selector's record", exc, resolver))
    try:
        spf_domain = bounce_domain if spf_ok else None
        findings.append(check_dmarc(resolver, from_domain, spf_domain, dkim_domain))
    except dns.exception.DNSException as exc:
        findings.append(_failed("DMARC", f"_dmarc.{from_domain}", exc, resolver))
    return findings


def _failed(check: str, what: str, exc: Exception, resolver: Resolver) -> Finding:
    text = f"cannot look up {what}: {type(exc).__name__}: {exc} (resolver: {resolver.where}; MAILCAST_DNS_SERVER)"
    return Finding(check, False, text)
