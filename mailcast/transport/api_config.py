"""What configures an HTTP API transport, without a secret: where the API is
(``ApiEndpoint``), the ``provider://NAME?option=...`` URL forms (``UrlForm``), and the checks of
credentials and named choices (regions)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from mailcast.errors import SpecError
from mailcast.redact import redact_url

DEFAULT_TIMEOUT = 30.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ApiEndpoint:
    """Where a provider's API is and how long to wait for it (no secret here)."""

    provider: str
    base_url: str
    timeout: float = DEFAULT_TIMEOUT
    verify_tls: bool = True

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise SpecError(
                f"not an http(s) base URL: {redact_url(self.base_url)!r}",
                where=self.provider,
                hint="base_url is https://HOST[:PORT] (http:// only for a local test server),"
                " without credentials",
            )
        if not self.timeout > 0:
            raise SpecError(f"timeout must be > 0: {self.timeout}", where=self.provider)
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @property
    def where(self) -> str:
        """``sendgrid api.sendgrid.com`` (host and port, no slash: it also names the run's
        concurrency limit)."""
        return f"{self.provider} {urlsplit(self.base_url).netloc}"

    def url(self, path: str) -> str:
        return self.base_url + path


@dataclass(frozen=True)
class UrlForm:
    """A ``provider://NAME?option=value&...`` URL taken apart."""

    scheme: str
    name: str  # the host part (Mailgun's domain; empty for the others)
    options: dict[str, str]

    @classmethod
    def parse(cls, url: str, scheme: str, allowed: tuple[str, ...], hint: str) -> UrlForm:
        """``timeout`` and ``base_url`` are always allowed; an unknown option, credentials or a
        path are refused (the secret never goes in the URL)."""
        allowed = (*allowed, "timeout", "base_url")
        shown = redact_url(url)
        parts = urlsplit(url)
        if parts.scheme.lower() != scheme:
            raise SpecError(f"not a {scheme}:// URL: {shown!r}", where=scheme, hint=hint)
        if parts.password is not None or parts.username is not None:
            raise SpecError(
                f"no credentials in the {scheme}:// URL: {shown!r}",
                where=scheme,
                hint=f"keep the API key in the {scheme} block or the environment; {hint}",
            )
        if parts.path not in ("", "/") or parts.fragment:
            raise SpecError(f"unexpected path in {shown!r}", where=scheme, hint=hint)
        options: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in allowed:
                known = ", ".join(allowed)
                raise SpecError(
                    f"unknown option {key!r} in {shown!r} (known: {known})", where=scheme, hint=hint
                )
            options[key] = value
        return cls(scheme, parts.netloc, options)

    def no_name(self, hint: str) -> UrlForm:
        if self.name:
            raise SpecError(
                f"{self.scheme}:// takes no host: {self.name!r}", where=self.scheme, hint=hint
            )
        return self

    @property
    def base_url(self) -> str | None:
        return self.options.get("base_url") or None

    @property
    def timeout(self) -> float:
        try:
            return float(self.options.get("timeout", DEFAULT_TIMEOUT))
        except ValueError:
            raise SpecError(
                f"timeout must be a number of seconds: {self.options['timeout']!r}",
                where=self.scheme,
            ) from None

    def flag(self, name: str) -> bool:
        """A yes/no option (default no)."""
        value = self.options.get(name, "false").lower()
        if value not in _TRUE | _FALSE:
            raise SpecError(f"{name} must be true or false: {value!r}", where=self.scheme)
        return value in _TRUE


def secret(value: SecretStr | str | None, what: str, where: str, hint: str) -> SecretStr:
    """A credential as a SecretStr; a missing one is a SpecError saying where to put it."""
    if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
        raise SpecError(f"no {what}", where=where, hint=hint)
    return value if isinstance(value, SecretStr) else SecretStr(value)


def choose(value: str, choices: dict[str, str], what: str, where: str, hint: str) -> str:
    """``choices[value]`` (case-insensitive), or a SpecError naming ``what``."""
    try:
        return choices[value.lower()]
    except KeyError:
        raise SpecError(f"unknown {what} {value!r}", where=where, hint=hint) from None


class ApiSetup:
    """What the provider configurations share as a transport registry entry's setup
    (``factory.TransportSetup``): ``where``, and ``check`` (their ``create`` checked the form
    and that the credentials are there; the rest needs a request)."""

    endpoint: ApiEndpoint

    @property
    def where(self) -> str:
        return self.endpoint.where

    def check(self) -> None:
        """Nothing left to check without sending."""
