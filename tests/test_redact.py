"""The one redaction helper: no password survives, everything else stays as written."""

from __future__ import annotations

import string
from urllib.parse import quote, urlsplit

from hypothesis import assume, example, given
from hypothesis import strategies as st

from mailcast.redact import redact_url

_TEXT = st.text(min_size=1, max_size=20)
_SCHEMES = st.sampled_from(["smtp", "smtps", "postgresql", "postgresql+psycopg", "imaps", "https"])
_LABEL = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_PATHS = st.lists(_TEXT.map(lambda t: quote(t, safe="")), max_size=3).map(
    lambda parts: "".join("/" + p for p in parts)
)
_QUERIES = st.one_of(
    st.just(""),
    st.dictionaries(_LABEL, _TEXT, min_size=1, max_size=3).map(
        lambda d: "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in d.items())
    ),
)


@given(
    scheme=_SCHEMES,
    user=st.one_of(st.just(""), _TEXT),
    password=_TEXT,
    host=_HOSTS,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=_PATHS,
    query=_QUERIES,
)
@example("smtp", "news", "s3cr@t", "127.0.0.1", 2525, "", "?security=none")
@example("postgresql", "u", ":@/?#", "[::1]", None, "/db", "")
def test_redact_url_never_shows_the_password(
    scheme: str, user: str, password: str, host: str, port: int | None, path: str, query: str
) -> None:
    quser, qpassword = quote(user, safe=""), quote(password, safe="")
    hostport = host if port is None else f"{host}:{port}"
    url = f"{scheme}://{quser}:{qpassword}@{hostport}{path}{query}"

    shown = redact_url(url)
    assert shown == f"{scheme}://{quser}:***@{hostport}{path}{query}"
    parts = urlsplit(shown)
    assert parts.password == "***"
    assert (parts.username or "") == quser
    assert parts.netloc.rpartition("@")[2] == hostport and parts.port == port
    assert parts.path == path and ("?" + parts.query if parts.query else "") == query
    dropped = redact_url(url, mask=None)
    assert dropped == f"{scheme}://{quser}@{hostport}{path}{query}"
    # the password itself (as written and decoded) is nowhere, unless another part holds it
    for secret in {qpassword, password}:
        assume(secret not in f"{scheme}://{quser}:***@{hostport}{path}{query}")
        assert secret not in shown and secret not in dropped


@given(st.text(max_size=60))
def test_redact_url_never_shows_a_password_of_any_string(text: str) -> None:
    """Whatever the input (unparseable URLs included), what urllib would read as the password
    is not in the output."""
    try:
        password = urlsplit(text).password
    except ValueError:
        password = None
    shown = redact_url(text)
    if password:
        assert urlsplit(shown).password in ("***", None)
        rest = text.replace(password, "", 1)
        assume(password not in rest)
        assert password not in shown


def test_redact_url_keeps_urls_without_a_password() -> None:
    for url in ("smtp://127.0.0.1:25", "smtp://news@mail.example.com:587?security=starttls",
                "sqlite:///x.db", "not a url", ""):  # fmt: skip
        assert redact_url(url) == url
        assert redact_url(url, mask=None) == url
    assert redact_url("smtp://u:p@host:notaport/x") == "smtp://u:***@host:notaport/x"
