"""Check every recipient row: a valid address, the required fields, not on the suppression list.

Rows that fail get a ``reason`` (they are recorded as skipped, never sent); rows that pass get
their address normalized (``result.normalized`` from email-validator) and a ``key``, the
normalized address lower-cased, which dedupe and the suppression list compare on.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager

from email_validator import EmailNotValidError, validate_email

from mailcast.errors import SpecError
from mailcast.recipients import RecipientTable
from tasks._prefect import task

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


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC around loops that allocate millions of acyclic objects: otherwise
    each collection re-walks the whole table (30-40 % of the time on 1M rows)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    required = list(required)
    unknown = [name for name in required if name not in table.columns]
    if unknown:
        columns = ", ".join(repr(c) for c in table.columns)
        raise SpecError(
            f"required column(s) {', '.join(repr(n) for n in unknown)} not in the recipient "
            f"data; columns found: {columns}",
            where="recipients.required_columns",
            hint="`required_columns:` must list columns of the recipient data",
        )
    check = _Validator(check_deliverability).check
    cache: dict[str, _Checked] = {}
    with _gc_paused():
        for r in table.rows:
            if r.reason is not None:
                continue
            address = r.address.strip() if isinstance(r.address, str) else str(r.address or "")
            if not address:
                r.reason = "missing address"
                continue
            folded = address.lower()
            checked = cache.get(folded)
            if checked is None:
                checked = cache[folded] = check(address)
            elif checked[0] != address:
                checked = check(address)  # same address, other letter case
            _, normalized, key, error = checked
            if error is not None:
                r.reason = error
                continue
            r.address = normalized  # type: ignore[assignment]
            r.key = key
            if required:
                missing = [n for n in required if not str(r.fields.get(n) or "").strip()]
                if missing:
                    r.reason = f"missing field: {', '.join(missing)}"
                    continue
            if key in suppressed:
                why = suppressed[key] if isinstance(suppressed, Mapping) else None
                r.reason = f"suppressed:{why}" if why else "suppressed"
    return table


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


@task(name="validate", retries=0, persist_result=False)
def validate_task(
    table: RecipientTable,
    required: list[str] | None = None,
    suppressed: Collection[str] | None = None,
    check_deliverability: bool = False,
) -> RecipientTable:
    return validate_recipients(
        table,
        required=required or (),
        suppressed=suppressed if suppressed is not None else frozenset(),
        check_deliverability=check_deliverability,
    )
