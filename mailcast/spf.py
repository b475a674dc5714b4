"""SPF (RFC 7208) as far as ``mailcast validate --dns`` needs it: evaluate a domain's policy for
an address (``ip4``, ``ip6``, ``a``, ``mx``, ``include``, ``exists``, ``all``, ``redirect=``,
qualifiers), count its DNS lookups against the limit of 10, and find which ``include:``
domains it reaches (a provider's, such as ``amazonses.com``).

Not evaluated: macros (``%{i}``...: the term is reported, the evaluation says ``unsupported``)
and ``ptr`` (deprecated by RFC 7208; never matches here). Lookups are counted as receivers
count them: ``include``, ``a``, ``mx``, ``ptr``, ``exists`` and ``redirect``, across the whole
tree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

LOOKUP_LIMIT = 10
MX_LIMIT = 10
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_LOOKUP_TERMS = {"include", "a", "mx", "ptr", "exists"}


class Lookups:
    """The DNS the evaluation asks (``txt``, ``addresses``, ``mx`` of a name; each returns a
    list, empty when there is none) and the count of lookups so far. A lookup failure (a
    timeout, SERVFAIL) propagates as the resolver's exception."""

    def __init__(
        self,
        txt: Callable[[str], list[str]],
        addresses: Callable[[str], list[str]],
        mx: Callable[[str], list[str]],
    ) -> None:
        self.txt = txt
        self.addresses = addresses
        self.mx = mx


@dataclass
class Walk:
    """A policy tree walked whole: each domain's record, the include/redirect targets reached,
    the lookups counted, and the problems found (one line each)."""

    records: dict[str, str] = field(default_factory=dict)
    includes: set[str] = field(default_factory=set)
    lookups: int = 0
    problems: list[str] = field(default_factory=list)


def spf_records(texts: list[str]) -> list[str]:
    """The SPF records among a name's TXT records (``v=spf1`` alone or followed by a space)."""
    return [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


def _terms(record: str) -> list[str]:
    return record.split()[1:]


def _split(term: str) -> tuple[str, str, str]:
    """(qualifier, lower-case mechanism or modifier name, argument) of a term; a modifier's
    name ends with ``=``."""
    qualifier = "+"
    if term[0] in _QUALIFIERS:
        qualifier, term = term[0], term[1:]
    name_end = len(term)
    for i, c in enumerate(term):
        if c in ":/=":
            name_end = i
            break
    name = term[:name_end].lower()
    rest = term[name_end:]
    if rest.startswith("="):
        return qualifier, name + "=", rest[1:]
    return qualifier, name, rest.removeprefix(":")


def walk(lookups: Lookups, domain: str) -> Walk:
    """Walk ``domain``'s policy and every include and redirect below it (to a depth of 10)."""
    result = Walk()
    _walk(lookups, domain.lower().rstrip("."), result, 0)
    if result.lookups > LOOKUP_LIMIT:
        result.problems.append(
            f"the SPF policy of {domain} needs {result.lookups} DNS lookups, over the limit of"
            f" {LOOKUP_LIMIT}: receivers return permerror (replace includes by the ip4:/ip6:"
            " ranges they publish)"
        )
    return result


def _walk(lookups: Lookups, domain: str, result: Walk, depth: int) -> None:
    if depth > LOOKUP_LIMIT or domain in result.records:
        return
    records = spf_records(lookups.txt(domain))
    if len(records) != 1:
        if depth:  # the top record's absence is the caller's to report
            what = "no SPF record" if not records else f"{len(records)} SPF records"
            result.problems.append(f"{domain} (included) has {what}: receivers return permerror")
        return
    result.records[domain] = records[0]
    for term in _terms(records[0]):
        _qualifier, name, arg = _split(term)
        if "%" in arg:
            continue  # macros: not expanded
        if name in _LOOKUP_TERMS or name == "redirect=":
            result.lookups += 1
        if name in ("include", "redirect=") and arg:
            target = arg.lower().rstrip(".")
            result.includes.add(target)
            _walk(lookups, target, result, depth + 1)
        elif name == "mx":
            host = _host(arg, domain)
            if len(lookups.mx(host)) > MX_LIMIT:
                result.problems.append(f"{host} has more than {MX_LIMIT} MX hosts: permerror")


def _host(arg: str, domain: str) -> str:
    """The domain of an ``a``/``mx`` argument (``host/24`` → host; empty → the current one)."""
    host = arg.split("/", 1)[0]
    return (host or domain).lower().rstrip(".")


def _cidr(arg: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """The prefix length of an ``a``/``mx`` argument for ``ip``'s family (``/24//64``)."""
    parts = arg.split("/")
    v4 = parts[1] if len(parts) > 1 and parts[1] else "32"
    v6 = parts[3] if len(parts) > 3 and parts[3] else "128"
    return int(v4 if ip.version == 4 else v6)


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, address: str, prefix: int) -> bool:
    try:
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    except ValueError:
        return False
    return ip.version == network.version and ip in network


def evaluate(lookups: Lookups, domain: str, ip: str) -> str:
    """check_host(): ``pass``, ``fail``, ``softfail``, ``neutral``, ``none``, ``permerror`` or
    ``unsupported`` (a macro was reached) for mail from ``ip`` with ``domain`` as its
    envelope domain."""
    counter = [0]
    return _evaluate(lookups, domain.lower().rstrip("."), ipaddress.ip_address(ip), counter)


def _evaluate(
    lookups: Lookups,
    domain: str,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    counter: list[int],
) -> str:
    records = spf_records(lookups.txt(domain))
    if not records:
        return "none"
    if len(records) > 1:
        return "permerror"
    redirect = None
    for term in _terms(records[0]):
        qualifier, name, arg = _split(term)
        if "%" in arg:
            return "unsupported"
        if name in _LOOKUP_TERMS:
            counter[0] += 1
            if counter[0] > LOOKUP_LIMIT:
                return "permerror"
        if name == "redirect=":
            redirect = arg.lower().rstrip(".")
            continue
        if name.endswith("="):  # exp= and unknown modifiers
            continue
        matched = _matches(lookups, name, arg, domain, ip, counter)
        if matched in ("permerror", "unsupported"):
            return matched
        if matched:
            return _QUALIFIERS[qualifier]
    if redirect:
        counter[0] += 1
        if counter[0] > LOOKUP_LIMIT:
            return "permerror"
        result = _evaluate(lookups, redirect, ip, counter)
        return "permerror" if result == "none" else result
    return "neutral"


def _matches(
    lookups: Lookups,
    name: str,
    arg: str,
    domain: str,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    counter: list[int],
) -> bool | str:
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        address, _, prefix = arg.partition("/")
        return _in(ip, address, int(prefix) if prefix else (32 if name == "ip4" else 128))
    if name == "include":
        result = _evaluate(lookups, arg.lower().rstrip("."), ip, counter)
        if result in ("none", "permerror"):
            return "permerror"
        if result == "unsupported":
            return result
        return result == "pass"
    if name == "a":
        bits = _cidr(arg, ip)
        return any(_in(ip, a, bits) for a in lookups.addresses(_host(arg, domain)))
    if name == "mx":
        bits = _cidr(arg, ip)
        hosts = lookups.mx(_host(arg, domain))[:MX_LIMIT]
        return any(_in(ip, a, bits) for host in hosts for a in lookups.addresses(host))
    if name == "exists":
        return bool(lookups.addresses(arg.lower().rstrip(".")))
    if name == "ptr":
        return False
    return "permerror"  # an unknown mechanism


def with_mechanism(record: str | None, mechanism: str, fallback_all: str = "~all") -> str:
    """``record`` with ``mechanism`` added before its ``all`` or ``redirect=`` (a new record
    when there is none)."""
    if not record:
        return f"v=spf1 {mechanism} {fallback_all}"
    terms = record.split()
    for i, term in enumerate(terms[1:], start=1):
        name = _split(term)[1]
        if name in ("all", "redirect="):
            return " ".join([*terms[:i], mechanism, *terms[i:]])
    return " ".join([*terms, mechanism])
