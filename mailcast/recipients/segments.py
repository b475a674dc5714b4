"""Segments: saved filters over contacts, in a small expression language.

This module holds the language (tokenizer, recursive-descent parser, the AST) and the library
API for saved segments (create, edit, delete, show, count, list); the SQL lives in
``mailcast/ledger/segments.py``, which compiles an AST into a SQLAlchemy Core condition with
bound parameters (never a string built from the expression, never ``eval``).

The grammar (keywords are case-insensitive)::

    expression := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expression ")" | condition
    condition  := "in" "list" STRING                  confirmed member (any member of a
                                                      single-opt-in list who did not leave)
                | "unconfirmed" "in" "list" STRING    double opt-in, not yet confirmed
                | "unsubscribed" "from" "list" STRING
                | EVENT [which] [period]              engagement, from the ledger
                | "created" period                    when the contact was created
                | "created" ("before" | "after") STRING    an ISO date, "2026-01-31"
                | field test
    EVENT      := "received" | "opened" | "clicked" | "bounced"
    which      := "any" "campaign" | "campaign" STRING
    period     := "within" NUMBER unit | "in" "the" "last" NUMBER unit
    unit       := "hour" | "hours" | "day" | "days" | "week" | "weeks"
    field      := "email" | "name"                    the contact's address and name
                | NAME                                an attribute: letters, digits, _
                | `ANY NAME`                          an attribute, in backticks
    test       := ("=" | "!=" | "<" | "<=" | ">" | ">=") value
                | ["not"] "in" "(" value ("," value)* ")"
                | "contains" STRING | "starts" "with" STRING | "ends" "with" STRING
                | "is" "set" | "is" "not" "set"
    value      := STRING | NUMBER | "true" | "false"
    STRING     := "..." or '...' (backslash escapes: \\" \\' \\\\ \\n \\t)
    NUMBER     := [-]digits[.digits]

Meaning: a string compares with a string attribute (``=`` is exact; ``contains``, ``starts
with``, ``ends with`` ignore letter case); a number compares numerically with a number or a
numeric string (``"30"``); ``true``/``false`` match JSON booleans and the strings
``"true"``/``"false"`` in any case. A contact without the attribute matches no comparison
(``city != "Paris"`` is ``not city = "Paris"`` and so includes them). ``is set``: present,
not null and not empty. Engagement counts real sends only (dry runs never).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from mailcast.errors import SegmentError

Value = str | Decimal | bool

MAX_LENGTH = 10_000  # characters in an expression
MAX_DEPTH = 40  # nested parentheses / not
MAX_DIGITS = 30
MAX_DAYS = 36_500

RESERVED = frozenset(
    {
        "and", "or", "not", "in", "true", "false", "unsubscribed", "unconfirmed", "received",
        "opened", "clicked", "bounced", "created",
    }
)  # fmt: skip
EVENTS = ("received", "opened", "clicked", "bounced")
UNITS = {"hour": 1 / 24, "hours": 1 / 24, "day": 1, "days": 1, "week": 7, "weeks": 7}
OPERATORS = ("=", "!=", "<", "<=", ">", ">=")


# -- the AST --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """``kind``: ``email`` (the contact's address), ``name`` (its display name) or
    ``attribute`` (``key`` in its attributes)."""

    kind: str
    key: str = ""

    def describe(self) -> str:
        return self.kind if self.kind != "attribute" else f"`{self.key}`"


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str  # one of OPERATORS
    value: Value


@dataclass(frozen=True)
class OneOf:
    field: Field
    values: tuple[Value, ...]


@dataclass(frozen=True)
class TextMatch:
    field: Field
    how: str  # contains, starts, ends
    value: str


@dataclass(frozen=True)
class IsSet:
    field: Field


@dataclass(frozen=True)
class InList:
    list_name: str
    status: str  # member, unconfirmed, unsubscribed
    column: int  # where the list's name is (for "no list named …")


@dataclass(frozen=True)
class Engagement:
    event: str  # received, opened, clicked, bounced
    campaign: str | None  # None: any campaign
    within: timedelta | None  # None: ever


@dataclass(frozen=True)
class Created:
    how: str  # within, before, after
    within: timedelta | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Compare | OneOf | TextMatch | IsSet | InList | Engagement | Created | Not | And | Or


def list_names(node: Node) -> list[tuple[str, int]]:
    """The lists an expression names, with the column of each name."""
    if isinstance(node, InList):
        return [(node.list_name, node.column)]
    if isinstance(node, Not):
        return list_names(node.item)
    if isinstance(node, And | Or):
        return [found for item in node.items for found in list_names(item)]
    return []


# -- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # word, quoted (a `field`), string, number, op, "(", ")", ",", end
    text: str  # as written (a word lower-cased)
    value: Any
    column: int  # 1-based


_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t"}


def _fail(column: int, message: str) -> SegmentError:
    """A parse error at ``column``; ``parse`` adds where it is and the column to the text."""
    return SegmentError(message, column=column)


def _checked_text(text: str, column: int, what: str) -> str:
    if "\x00" in text:
        raise _fail(column, f"{what} cannot hold a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(column, f"{what} is not valid Unicode (a lone surrogate)") from None
    return text


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        col = i + 1
        if c.isspace():
            i += 1
        elif c in "\"'":
            out: list[str] = []
            j = i + 1
            while True:
                if j >= n:
                    raise _fail(col, f"unterminated string (no closing {c})")
                d = source[j]
                if d == c:
                    break
                if d == "\\":
                    if j + 1 >= n:
                        raise _fail(col, f"unterminated string (no closing {c})")
                    e = source[j + 1]
                    if e not in _ESCAPES:
                        raise _fail(j + 1, f"unknown escape \\{e} in a string (use \\\\ for \\)")
                    out.append(_ESCAPES[e])
                    j += 2
                    continue
                out.append(d)
                j += 1
            text = _checked_text("".join(out), col, "a string")
            tokens.append(Token("string", source[i : j + 1], text, col))
            i = j + 1
        elif c == "`":
            j = source.find("`", i + 1)
            if j < 0:
                raise _fail(col, "unterminated `name` (no closing `)")
            name = _checked_text(source[i + 1 : j], col, "a `name`")
            if not name:
                raise _fail(col, "an empty `name`")
            tokens.append(Token("quoted", source[i : j + 1], name, col))
            i = j + 1
        elif c.isdigit() or (c == "-" and i + 1 < n and source[i + 1].isdigit()):
            m = _NUMBER.match(source, i)
            assert m is not None
            text = m.group()
            if sum(ch.isdigit() for ch in text) > MAX_DIGITS:
                raise _fail(col, f"a number of more than {MAX_DIGITS} digits")
            end = m.end()
            if end < n and (source[end].isalnum() or source[end] in "_."):
                raise _fail(col, f"not a number: {source[i : end + 1]!r}")
            tokens.append(Token("number", text, Decimal(text), col))
            i = end
        elif c.isalpha() or c == "_":
            m = _WORD.match(source, i)
            if m is None:  # a non-ASCII letter
                raise _fail(col, f"unexpected character {c!r} (attribute names with other "
                            "characters go in backticks: `name`)")  # fmt: skip
            tokens.append(Token("word", m.group().lower(), m.group(), col))
            i = m.end()
        elif source.startswith(("!=", "<=", ">=", "<>", "=="), i):
            op = {"<>": "!=", "==": "="}.get(source[i : i + 2], source[i : i + 2])
            tokens.append(Token("op", op, op, col))
            i += 2
        elif c in "=<>":
            tokens.append(Token("op", c, c, col))
            i += 1
        elif c in "(),":
            tokens.append(Token(c, c, c, col))
            i += 1
        else:
            raise _fail(col, f"unexpected character {c!r}")
    tokens.append(Token("end", "", None, n + 1))
    return tokens


# -- the parser -----------------------------------------------------------------------------


def _shown(t: Token) -> str:
    if t.kind == "end":
        return "the end of the expression"
    text = t.text if len(t.text) <= 40 else t.text[:37] + "…"
    return repr(text)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        t = self.tokens[self.pos]
        if t.kind != "end":
            self.pos += 1
        return t

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "word" and self.tok.text in words

    def expect_word(self, word: str, after: str) -> Token:
        if not self.is_word(word):
            raise _fail(
                self.tok.column, f"expected '{word}' after {after}, found {_shown(self.tok)}"
            )
        return self.take()

    def expect_string(self, what: str) -> Token:
        if self.tok.kind != "string":
            raise _fail(
                self.tok.column, f'expected {what} (a "quoted" string), found {_shown(self.tok)}'
            )
        return self.take()

    # expression := term ("or" term)*
    def expression(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fail(self.tok.column, f"nested more than {MAX_DEPTH} deep")
        items = [self.term()]
        while self.is_word("or"):
            self.take()
            items.append(self.term())
        self.depth -= 1
        return items[0] if len(items) == 1 else Or(tuple(items))

    def term(self) -> Node:
        items = [self.factor()]
        while self.is_word("and"):
            self.take()
            items.append(self.factor())
        return items[0] if len(items) == 1 else And(tuple(items))

    def factor(self) -> Node:
        t = self.tok
        if self.is_word("not"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _fail(t.column, f"nested more than {MAX_DEPTH} deep")
            item = self.factor()
            self.depth -= 1
            return Not(item)
        if t.kind == "(":
            self.take()
            inner = self.expression()
            if self.tok.kind != ")":
                raise _fail(
                    self.tok.column,
                    f"expected ')' to close the '(' of column {t.column}, found {_shown(self.tok)}",
                )
            self.take()
            return inner
        return self.condition()

    def condition(self) -> Node:
        t = self.tok
        if t.kind == "end":
            raise _fail(t.column, "expected a condition, found the end of the expression")
        if t.kind == "word":
            if t.text == "in":
                self.take()
                self.expect_word("list", "'in'")
                name = self.expect_string("a list's name")
                return InList(name.value, "member", name.column)
            if t.text == "unconfirmed":
                self.take()
                self.expect_word("in", "'unconfirmed'")
                self.expect_word("list", "'unconfirmed in'")
                name = self.expect_string("a list's name")
                return InList(name.value, "unconfirmed", name.column)
            if t.text == "unsubscribed":
                self.take()
                self.expect_word("from", "'unsubscribed'")
                self.expect_word("list", "'unsubscribed from'")
                name = self.expect_string("a list's name")
                return InList(name.value, "unsubscribed", name.column)
            if t.text in EVENTS:
                return self.engagement()
            if t.text == "created":
                return self.created()
            if t.text in RESERVED:
                raise _fail(
                    t.column,
                    f"expected a condition, found {_shown(t)} (an attribute of that name goes"
                    f" in backticks: `{t.value}`)",
                )
        field = self.field()
        return self.test(field, t)

    def field(self) -> Field:
        t = self.tok
        if t.kind == "quoted":
            self.take()
            return Field("attribute", t.value)
        if t.kind == "word":
            self.take()
            if t.text in ("email", "name"):
                return Field(t.text)
            return Field("attribute", t.value)
        raise _fail(t.column, f"expected a condition, found {_shown(t)}")

    def value(self, after: str) -> Value:
        t = self.tok
        if t.kind == "string":
            self.take()
            return str(t.value)
        if t.kind == "number":
            self.take()
            return Decimal(t.value)
        if self.is_word("true", "false"):
            self.take()
            return t.text == "true"
        raise _fail(t.column, f"expected a value after {after}, found {_shown(t)}")

    def test(self, field: Field, start: Token) -> Node:
        t = self.tok
        named = f"'{start.text if start.kind == 'word' else start.value}'"
        if t.kind == "op":
            self.take()
            return Compare(field, t.value, self.value(f"'{t.value}'"))
        negate = False
        if self.is_word("not"):
            self.take()
            negate = True
            if not self.is_word("in"):
                raise _fail(self.tok.column, f"expected 'in' after 'not', found {_shown(self.tok)}")
        if self.is_word("in"):
            self.take()
            if self.tok.kind != "(":
                raise _fail(self.tok.column, f"expected '(' after 'in', found {_shown(self.tok)}")
            self.take()
            values = [self.value("'('")]
            while self.tok.kind == ",":
                self.take()
                values.append(self.value("','"))
            if self.tok.kind != ")":
                raise _fail(
                    self.tok.column, f"expected ',' or ')' in the list of values, found "
                    f"{_shown(self.tok)}"
                )  # fmt: skip
            self.take()
            node: Node = OneOf(field, tuple(values))
            return Not(node) if negate else node
        if self.is_word("contains"):
            self.take()
            return TextMatch(
                field, "contains", self.expect_string("a string after 'contains'").value
            )
        if self.is_word("starts", "ends"):
            how = self.take().text
            self.expect_word("with", f"'{how}'")
            value = self.expect_string(f"a string after '{how} with'").value
            return TextMatch(field, how, value)
        if self.is_word("is"):
            self.take()
            negate = False
            if self.is_word("not"):
                self.take()
                negate = True
            self.expect_word("set", "'is'" if not negate else "'is not'")
            return Not(IsSet(field)) if negate else IsSet(field)
        raise _fail(
            t.column,
            f"expected a comparison after {named} (=, !=, <, <=, >, >=, in, contains, starts"
            f" with, ends with, is set), found {_shown(t)}",
        )

    def period(self, after: str) -> timedelta | None:
        if self.is_word("within"):
            self.take()
        elif self.is_word("in"):
            self.take()
            self.expect_word("the", "'in'")
            self.expect_word("last", "'in the'")
        else:
            return None
        t = self.tok
        if t.kind != "number":
            raise _fail(t.column, f"expected a number of days after {after}, found {_shown(t)}")
        self.take()
        u = self.tok
        if not (u.kind == "word" and u.text in UNITS):
            raise _fail(
                u.column, f"expected days, hours or weeks after {t.text}, found {_shown(u)}"
            )
        self.take()
        days = Decimal(t.value) * Decimal(UNITS[u.text])
        if days <= 0 or days > MAX_DAYS:
            raise _fail(t.column, f"a period must be more than 0 and at most {MAX_DAYS} days")
        return timedelta(days=float(days))

    def engagement(self) -> Node:
        event = self.take()
        campaign: str | None = None
        if self.is_word("any"):
            self.take()
            self.expect_word("campaign", "'any'")
        elif self.is_word("campaign"):
            self.take()
            campaign = self.expect_string("a campaign's name").value
        within = self.period(f"'{event.text}'")
        return Engagement(event.text, campaign, within)

    def created(self) -> Node:
        self.take()
        if self.is_word("before", "after"):
            how = self.take().text
            t = self.expect_string('a date ("2026-01-31")')
            try:
                at = datetime.fromisoformat(t.value)
            except ValueError:
                try:
                    at = datetime.combine(date.fromisoformat(t.value), datetime.min.time())
                except ValueError:
                    raise _fail(t.column, f'not a date: {t.value!r} (write "2026-01-31")') from None
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            return Created(how, at=at)
        within = self.period("'created'")
        if within is None:
            raise _fail(
                self.tok.column,
                f"expected 'within N days', 'before \"DATE\"' or 'after \"DATE\"' after 'created',"
                f" found {_shown(self.tok)}",
            )
        return Created("within", within=within)


def parse(expression: str, *, where: str = "segment") -> Node:
    """The AST of ``expression``; SegmentError (``where``: ``column N: what``) otherwise."""
    try:
        if len(expression) > MAX_LENGTH:
            raise _fail(MAX_LENGTH + 1, f"the expression is longer than {MAX_LENGTH} characters")
        tokens = tokenize(expression)
        if tokens[0].kind == "end":
            raise _fail(1, "the expression is empty")
        parser = _Parser(tokens)
        node = parser.expression()
        if parser.tok.kind != "end":
            t = parser.tok
            if t.kind == ")":
                raise _fail(t.column, "a ')' without its '('")
            raise _fail(t.column, f"expected 'and', 'or' or the end, found {_shown(t)}")
        return node
    except SegmentError as exc:
        raise SegmentError(
            f"column {exc.column}: {exc.message}", where=where, column=exc.column
        ) from None


def segment_where(name: str) -> str:
    return f"segment {name!r}"


# -- the library API: saved segments ----------------------------------------------------------


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    expression: str
    description: str | None
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expression": self.expression,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class SegmentCount:
    """``contacts``: contacts the expression matches; ``enabled``: of them, those a campaign
    may reach (not blocklisted; suppression is checked when a run is planned)."""

    name: str | None
    expression: str
    contacts: int
    enabled: int
    seconds: float
    sample: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "segment": self.name,
            "expression": self.expression,
            "contacts": self.contacts,
            "enabled": self.enabled,
            "seconds": round(self.seconds, 4),
            "sample": list(self.sample),
        }


def _info(saved: Any) -> SegmentInfo:
    return SegmentInfo(
        saved.name, saved.expression, saved.description, saved.created_at, saved.updated_at
    )


def check(engine: Any, expression: str, *, where: str = "segment") -> Node:
    """Parse ``expression`` and check that the lists it names exist."""
    from mailcast.ledger import segments as sql

    node = parse(expression, where=where)
    with engine.connect() as conn:
        sql.resolve_lists(conn, node, where)
    return node


def create(engine: Any, name: str, expression: str, description: str | None = None) -> SegmentInfo:
    """Save a segment (the expression parsed and its lists checked first)."""
    from mailcast.ledger import segments as sql

    sql.check_name(name)
    check(engine, expression, where=segment_where(name))
    sql.insert(engine, name, expression.strip(), description)
    return show(engine, name)


def edit(
    engine: Any,
    name: str,
    *,
    expression: str | None = None,
    description: str | None = None,
    rename: str | None = None,
) -> SegmentInfo:
    from mailcast.ledger import segments as sql

    values: dict[str, Any] = {}
    if expression is not None:
        check(engine, expression, where=segment_where(name))
        values["expression"] = expression.strip()
    if description is not None:
        values["description"] = description or None
    if rename is not None:
        values["name"] = sql.check_name(rename)
    if values:
        sql.change(engine, name, values)
    else:
        show(engine, name)
    return show(engine, rename or name)


def delete(engine: Any, name: str) -> None:
    from mailcast.ledger import segments as sql

    sql.remove(engine, name)


def show(engine: Any, name: str) -> SegmentInfo:
    from mailcast.ledger import segments as sql

    with engine.connect() as conn:
        return _info(sql.get(conn, name))


def all_segments(engine: Any) -> list[SegmentInfo]:
    from mailcast.ledger import segments as sql

    with engine.connect() as conn:
        return [_info(s) for s in sql.all_saved(conn)]


def count(
    engine: Any,
    name: str | None = None,
    *,
    expression: str | None = None,
    sample: int = 0,
) -> SegmentCount:
    """Count the contacts of saved segment ``name`` (or of an ad-hoc ``expression``), and
    optionally the first ``sample`` addresses."""
    import time

    from mailcast.ledger import segments as sql

    started = time.perf_counter()
    with engine.connect() as conn:
        if expression is None:
            assert name is not None
            expression = sql.get(conn, name).expression
            where = segment_where(name)
        else:
            where = segment_where(name) if name else "segment expression"
        node = parse(expression, where=where)
        cond = sql.condition(conn, node, where=where)
        counted = sql.count(conn, cond)
        seconds = time.perf_counter() - started
        found = tuple(sql.sample(conn, cond, sample)) if sample else ()
    return SegmentCount(name, expression, counted.contacts, counted.enabled, seconds, found)
