"""One redaction helper: a URL (SMTP, database, IMAP) with its password replaced by ``***``,
for messages, logs, summaries and the ledger. A URL that does not parse is returned with
anything between ``://`` and ``@`` masked."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def redact_url(url: str, *, mask: str | None = "***") -> str:
    """``url`` with its password (if any) shown as ``mask``; the user name, host, port, path,
    query and fragment stay as written. ``mask=None`` leaves the password out altogether
    (``user@host``: a URL that can travel, with the password handed over some other way)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return _USERINFO.sub("" if mask is None else f"{mask}@", url)
    # as urllib splits it: the user info ends at the last "@", the user name at its first ":"
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if mask is None else f"{user}:{mask}@{hostport}"
    if parts.netloc in url:  # the first occurrence: the scheme before it holds no "@"
        return url.replace(parts.netloc, netloc, 1)  # everything else exactly as written
    return urlunsplit(parts._replace(netloc=netloc))
