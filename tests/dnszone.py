"""A real DNS server on 127.0.0.1 (dnslib, UDP and TCP on one free port) serving a zone the
test writes: ``zone.txt("sel._domainkey.example.com", "v=DKIM1; ...")``, ``zone.a(...)``,
``zone.mx(...)``. A name with no record of the asked type answers NOERROR with no data; an
unknown name NXDOMAIN. TXT values longer than 255 bytes are split into strings, as a DNS
provider publishes them."""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from types import TracebackType
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

_TYPES = {"A": A, "AAAA": AAAA, "MX": MX, "TXT": TXT}


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: LocalDns) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.zone.lock:
            self.zone.queries.append((name, qtype))
            records = self.zone.records.get(name)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for rdata in records.get(qtype, []):
                reply.add_answer(RR(request.q.qname, QTYPE.reverse[qtype], rdata=rdata, ttl=60))
        return reply


class LocalDns:
    """``with LocalDns() as dns: dns.txt(...)``; ``dns.address`` is ``127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[Any]]] = defaultdict(dict)
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.port = 0
        self._servers: list[DNSServer] = []

    def add(self, name: str, qtype: str, rdata: Any) -> None:
        with self.lock:
            self.records[name.rstrip(".").lower()].setdefault(qtype, []).append(rdata)

    def txt(self, name: str, value: str) -> None:
        data = value.encode("utf-8")
        self.add(name, "TXT", TXT([data[i : i + 255] for i in range(0, len(data), 255)] or [b""]))

    def a(self, name: str, address: str) -> None:
        self.add(
            name,
            "AAAA" if ":" in address else "A",
            _TYPES["AAAA" if ":" in address else "A"](address),
        )

    def mx(self, name: str, host: str, preference: int = 10) -> None:
        self.add(name, "MX", MX(host, preference))

    def clear(self, name: str | None = None) -> None:
        with self.lock:
            if name is None:
                self.records.clear()
            else:
                self.records.pop(name.rstrip(".").lower(), None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def resolver(self) -> Any:
        """A dnspython resolver that asks this server only."""
        import dns.nameserver
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        resolver.lifetime = 5
        return resolver

    def dkim_txt(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        """dkimpy's ``dnsfunc``: the TXT record of ``name`` from this server (strings joined)."""
        import dns.resolver

        host = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            answer = self.resolver().resolve(host.rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)  # type: ignore[attr-defined]

    def __enter__(self) -> LocalDns:
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        resolver = _Resolver(self)
        for _attempt in range(20):
            udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=logger)
            except OSError:  # the TCP port is taken: another pair
                udp.server.server_close()
                continue
            break
        else:  # pragma: no cover
            raise OSError("no free port for the test DNS server")
        self.port = port
        self._servers = [udp, tcp]
        for server in self._servers:
            server.start_thread()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stopping = [threading.Thread(target=s.stop) for s in self._servers]  # ~0.5 s each
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        for server in self._servers:
            server.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
