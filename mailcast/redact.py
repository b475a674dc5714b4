"""One redaction helper: a URL (SMTP, database, IMAP) with its password replaced by ``***``,
for messages, logs, summaries and the ledger. A URL that does not parse is returned with
anything between ``://`` and ``@`` masked."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``; the user name stays."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return _USERINFO.sub("***@", url)
