"""Check every recipient row: a valid address, the required fields, not on the suppression list.

Rows that fail get a ``reason`` (they are recorded as skipped, never sent); rows that pass get
their address normalized (``result.normalized`` from email-validator) and a ``key``, the
normalized address lower-cased, which dedupe and the suppression list compare on.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

from email_validator import EmailNotValidError, validate_email

from mailcast.errors import SpecError
from mailcast.recipients import Recipient, RecipientTable, gc_paused

try:
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES as _CI_NAMES
except ImportError:  # pragma: no cover - older/newer email-validator layouts
    _CI_NAMES = []
# RFC 2142 role names that email-validator lower-cases: such local parts take the full path.
_ROLE_NAMES = frozenset(_CI_NAMES) | {
    "info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster",
    "hostmaster", "usenet", "news", "webmaster", "www", "uucp", "ftp",
}  # fmt: skip
_ATOM = r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+"
# A plain address: an ASCII dot-atom local part (which email-validator returns unchanged) at an
# ASCII host name. Only these take the per-domain fast path.
_PLAIN = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9.-]+)\Z")
_PLAIN_MAX_LENGTH = 200  # well inside the 254-octet limit email-validator enforces


# (address as validated, normalized address, key, error) - a tuple: cheap to make by the million
_Checked = tuple[str, str | None, str | None, str | None]
_SLOW = "\x00slow"  # a domain whose addresses always take email-validator's full path


class _Validator:
    """email-validator with a per-domain fast path.

    Most of email-validator's ~40 µs per address goes into checking the domain, and a list has
    far fewer domains than addresses. For a plain address (ASCII dot-atom local part, which
    email-validator returns unchanged, at an ASCII host name) the result is
    ``local + "@" + domain.lower()`` or the domain's error, so each domain is checked once with a
    probe address. The first address at each domain is also validated in full and compared with
    the fast path's answer; on any difference that domain takes the full path for every
    address, so the fast path cannot change a result.
    """

    def __init__(self, check_deliverability: bool) -> None:
        self.check_deliverability = check_deliverability
        # domain -> its error (str), None when plain addresses there are valid, or _SLOW
        self.domains: dict[str, str | None] = {}

    def full(self, address: str) -> _Checked:
        try:
            result = validate_email(address, check_deliverability=self.check_deliverability)
        except EmailNotValidError as exc:
            return (address, None, None, f"invalid address: {exc}")
        normalized = result.normalized
        return (address, normalized, normalized.lower(), None)

    def _learn(self, address: str, local: str, domain: str) -> _Checked:
        result = self.full(address)
        probe = self.full("a@" + domain)
        state: str | None = _SLOW
        if probe[3] is not None:
            if result == (address, None, None, probe[3]):
                state = probe[3]
        elif probe[1] == "a@" + domain.lower():
            normalized = f"{local}@{domain.lower()}"
            if result == (address, normalized, normalized.lower(), None):
                state = None
        self.domains[domain] = state
        return result

    def check(self, address: str) -> _Checked:
        match = _PLAIN.match(address)
        if match is None or len(address) > _PLAIN_MAX_LENGTH:
            return self.full(address)
        local, domain = match.groups()
        if local.lower() in _ROLE_NAMES:
            return self.full(address)
        try:
            state = self.domains[domain]
        except KeyError:
            return self._learn(address, local, domain)
        if state is None:
            normalized = f"{local}@{domain.lower()}"
            return (address, normalized, normalized.lower(), None)
        if state == _SLOW:
            return self.full(address)
        return (address, None, None, state)


def validate_recipients(
    table: RecipientTable,
    *,
    required: Iterable[str] = (),
    suppressed: Collection[str] = frozenset(),
    check_deliverability: bool = False,
) -> RecipientTable:
    """Validate the rows of ``table`` whose ``reason`` is None, in place; returns ``table``.

    Sets ``address`` to email-validator's normalized form and ``key`` to that lower-cased, or
    ``reason`` to ``missing address`` / ``invalid address: ...`` / ``missing field: a, b`` /
    ``suppressed`` (``suppressed:<reason>`` when ``suppressed`` maps each key to its reason, as
    the ledger's suppression list does). ``required`` names columns that must be non-empty (a
    name that is not a column raises SpecError); ``suppressed`` holds lower-cased addresses never
    to send to.
    Results are cached per lower-cased address within one call (reused for the same spelling;
    another letter case is answered by the per-domain fast path).
    """
    rows = validate_rows(
        table.rows,
        table.columns,
        required=required,
        suppressed=suppressed,
        check_deliverability=check_deliverability,
    )
    with gc_paused():
        for _ in rows:
            pass
    return table


def validate_rows(
    rows: Iterable[Recipient],
    columns: Sequence[str],
    *,
    required: Iterable[str] = (),
    suppressed: Collection[str] = frozenset(),
    check_deliverability: bool = False,
) -> Iterator[Recipient]:
    """``validate_recipients`` for a stream of rows: each row checked as it passes (the same
    results, in the same order; memory stays flat). An unknown required column raises
    SpecError here, before any row is read."""
    check = RowChecker(
        columns,
        required=required,
        suppressed=suppressed,
        check_deliverability=check_deliverability,
    )
    return _checked(rows, check)


def _checked(rows: Iterable[Recipient], check: RowChecker) -> Iterator[Recipient]:
    for r in rows:
        check(r)
        yield r


class RowChecker:
    """Checks one row at a time (see ``validate_recipients``), keeping what it learnt about
    domains, and a bounded cache of addresses, between rows."""

    CACHE_SIZE = 200_000  # addresses; emptied when full (memory stays bounded on any input)

    def __init__(
        self,
        columns: Sequence[str],
        *,
        required: Iterable[str] = (),
        suppressed: Collection[str] = frozenset(),
        check_deliverability: bool = False,
    ) -> None:
        self.required = list(required)
        unknown = [name for name in self.required if name not in columns]
        if unknown:
            found = ", ".join(repr(c) for c in columns)
            raise SpecError(
                f"required column(s) {', '.join(repr(n) for n in unknown)} not in the recipient "
                f"data; columns found: {found}",
                where="recipients.required_columns",
                hint="`required_columns:` must list columns of the recipient data",
            )
        self.suppressed = suppressed
        self._check = _Validator(check_deliverability).check
        self._cache: dict[str, _Checked] = {}

    def __call__(self, r: Recipient) -> None:
        if r.reason is not None:
            return
        if r.key is not None:  # validated already (a contact kept in mailcast): not again
            self._rest(r, r.key)
            return
        address = r.address.strip() if isinstance(r.address, str) else str(r.address or "")
        if not address:
            r.reason = "missing address"
            return
        folded = address.lower()
        cache = self._cache
        checked = cache.get(folded)
        if checked is None:
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            checked = cache[folded] = self._check(address)
        elif checked[0] != address:
            checked = self._check(address)  # same address, other letter case
        _, normalized, key, error = checked
        if error is not None:
            r.reason = error
            return
        r.address = normalized  # type: ignore[assignment]
        r.key = key
        self._rest(r, key)

    def _rest(self, r: Recipient, key: str | None) -> None:
        """The required fields and the suppression list."""
        required = self.required
        if required:
            missing = [n for n in required if not str(r.fields.get(n) or "").strip()]
            if missing:
                r.reason = f"missing field: {', '.join(missing)}"
                return
        suppressed = self.suppressed
        if key in suppressed:
            why = suppressed[key] if isinstance(suppressed, Mapping) else None
            r.reason = f"suppressed:{why}" if why else "suppressed"


def reason_category(reason: str | None) -> str:
    """``"ok"`` or the kind of a reason: ``"invalid address"``, ``"duplicate"``, ..."""
    if reason is None:
        return "ok"
    if reason.startswith("duplicate"):
        return "duplicate"
    if reason.startswith("row has "):
        return "wrong number of fields"
    return reason.split(":", 1)[0].strip()


def summarize(table: RecipientTable) -> dict[str, int]:
    """Rows per outcome: ``{"ok": 95, "invalid address": 3, "duplicate": 2}`` ("ok" first)."""
    counts: dict[str, int] = {"ok": 0}
    for r in table.rows:
        category = reason_category(r.reason)
        counts[category] = counts.get(category, 0) + 1
    return counts
