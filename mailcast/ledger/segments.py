"""Segments in SQL: a parsed segment expression (``mailcast.recipients.segments``) compiled into
one SQLAlchemy Core condition over ``contacts``, with every value a bound parameter; the saved
segments' statements; counting; and the audience of a campaign sent to a list or a segment.

How the conditions are built, so that a count over a million contacts stays under a second on
Postgres:

- attributes (``contacts.attributes``, JSONB with a GIN index): a string equality is
  ``attributes @> {"city": "Paris"}`` (served by the GIN index), ``is set`` uses ``?`` (also
  GIN); other comparisons read ``attributes ->> key``. A numeric comparison casts only values
  that are JSON numbers or strings that look like numbers (a guarded ``CASE``), so a value like
  ``"abc"`` never raises an SQL error; ordering of strings uses the "C" collation (byte order,
  as SQLite).
- list membership: ``EXISTS`` over ``memberships`` (primary key contact × list, and the
  (list_id, status) index); the list's id is looked up first (an unknown list is an error).
- engagement: ``EXISTS`` over ``deliveries`` (indexed address_key) and ``events``, real runs
  only (``runs.dry_run`` false).

Every condition is two-valued (a missing attribute makes a comparison false, never NULL), so
``not`` means what it says. On SQLite an attribute is read with ``json_each`` (any key, even one
with quotes), the rest is the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Float,
    Numeric,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    distinct,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from mailcast.errors import SegmentError
from mailcast.ledger.models import (
    Campaign,
    Contact,
    ContactStatus,
    Delivery,
    Event,
    MailingList,
    Membership,
    MembershipStatus,
    OptIn,
    Run,
    Segment,
    utcnow,
)
from mailcast.recipients import segments as ast

C = cast(Table, Contact.__table__)
L = cast(Table, MailingList.__table__)
M = cast(Table, Membership.__table__)
D = cast(Table, Delivery.__table__)
E = cast(Table, Event.__table__)
R = cast(Table, Run.__table__)
K = cast(Table, Campaign.__table__)
S = cast(Table, Segment.__table__)

# A string Postgres can cast to numeric without an error (bounded digits and exponent).
_PG_NUMERIC = r"^\s*[-+]?([0-9]{1,40}(\.[0-9]{0,40})?|\.[0-9]{1,40})([eE][-+]?[0-9]{1,3})?\s*$"
_EVENT_KIND = {"opened": "open", "clicked": "click", "bounced": "bounce"}
TS = DateTime(timezone=True)


@dataclass(frozen=True)
class ListRef:
    id: int
    optin: str


def _member_statuses(status: str, optin: str) -> list[str]:
    if status == "member":  # confirmed; a single-opt-in list's members count at once
        if optin == OptIn.SINGLE:
            return [MembershipStatus.CONFIRMED, MembershipStatus.UNCONFIRMED]
        return [MembershipStatus.CONFIRMED]
    return [status]


def resolve_lists(conn: Connection, node: ast.Node, where: str) -> dict[str, ListRef]:
    """The lists ``node`` names (name → id, opt-in kind); SegmentError for one that does not
    exist (with the column of its name)."""
    names = ast.list_names(node)
    if not names:
        return {}
    wanted = sorted({n for n, _ in names})
    rows = conn.execute(select(L.c.name, L.c.id, L.c.optin).where(L.c.name.in_(wanted))).all()
    found = {r.name: ListRef(r.id, r.optin) for r in rows}
    for name, column in names:
        if name not in found:
            raise SegmentError(
                f"column {column}: no list named {name!r}",
                where=where,
                hint="`mailcast lists show` lists them (names are case-sensitive)",
                column=column,
            )
    return found


class _Compiler:
    def __init__(self, dialect: str, lists: dict[str, ListRef]) -> None:
        self.pg = dialect == "postgresql"
        self.lists = lists
        self.now = utcnow()

    def __call__(self, node: ast.Node) -> ColumnElement[bool]:
        if isinstance(node, ast.And):
            return and_(*(self(n) for n in node.items))
        if isinstance(node, ast.Or):
            return or_(*(self(n) for n in node.items))
        if isinstance(node, ast.Not):
            return not_(self(node.item))
        if isinstance(node, ast.InList):
            ref = self.lists[node.list_name]
            return exists().where(
                M.c.contact_id == C.c.id,
                M.c.list_id == ref.id,
                M.c.status.in_(_member_statuses(node.status, ref.optin)),
            )
        if isinstance(node, ast.Engagement):
            return self.engagement(node)
        if isinstance(node, ast.Created):
            if node.how == "within":
                assert node.within is not None
                return C.c.created_at >= bindparam(None, self.now - node.within, type_=TS)
            at = bindparam(None, node.at, type_=TS)
            return C.c.created_at < at if node.how == "before" else C.c.created_at > at
        field = node.field
        if field.kind == "attribute":
            return self.attribute(node)
        column = C.c.address_key if field.kind == "email" else C.c.name
        return self.contact_field(node, column, lower=field.kind == "email")

    # -- the contact's own columns --------------------------------------------------------

    def contact_field(self, node: ast.Node, column: Any, *, lower: bool) -> ColumnElement[bool]:
        def text(v: ast.Value) -> str:
            s = ("true" if v else "false") if isinstance(v, bool) else str(v)
            return s.lower() if lower else s

        if isinstance(node, ast.IsSet):
            return func.coalesce(column, "") != ""
        if isinstance(node, ast.TextMatch):
            return self.text_match(func.lower(column), node)
        if isinstance(node, ast.OneOf):
            return func.coalesce(column.in_([text(v) for v in node.values]), false())
        assert isinstance(node, ast.Compare)
        value = bindparam(None, text(node.value), type_=String)
        if self.pg:
            column = column.collate("C")
        return func.coalesce(column.operate(_op(node.op), value), false())

    def text_match(self, lowered: Any, node: ast.TextMatch) -> ColumnElement[bool]:
        v = node.value.lower()
        if node.how == "contains":
            cond = lowered.contains(v, autoescape=True)
        elif node.how == "starts":
            cond = lowered.startswith(v, autoescape=True)
        else:
            cond = lowered.endswith(v, autoescape=True)
        return func.coalesce(cond, false())

    # -- attributes -------------------------------------------------------------------------

    def attribute(self, node: ast.Node) -> ColumnElement[bool]:
        if self.pg:
            return self.pg_attribute(node)
        return self.sqlite_attribute(node)

    def pg_attribute(self, node: ast.Node) -> ColumnElement[bool]:
        key = node.field.key  # type: ignore[union-attr]
        doc = type_coerce(C.c.attributes, JSONB)
        k = bindparam(None, key, type_=String)
        value = doc[k]
        text = value.astext
        kind = func.jsonb_typeof(value)
        if isinstance(node, ast.IsSet):
            return and_(doc.has_key(k), func.coalesce(text, "") != "")
        if isinstance(node, ast.TextMatch):
            return and_(kind.in_(["string", "number"]), self.text_match(func.lower(text), node))
        if isinstance(node, ast.OneOf):
            return or_(*(self.pg_equal(doc, value, kind, text, key, v) for v in node.values))
        assert isinstance(node, ast.Compare)
        if node.op == "=":
            return self.pg_equal(doc, value, kind, text, key, node.value)
        if node.op == "!=":
            return not_(self.pg_equal(doc, value, kind, text, key, node.value))
        v = node.value
        if isinstance(v, Decimal):
            number = self.pg_number(value, kind, text)
            cond = number.operate(_op(node.op), bindparam(None, v, type_=Numeric))
            return func.coalesce(cond, false())
        if isinstance(v, bool):  # true > false, as JSON booleans (and "true"/"false" strings)
            flag = self.pg_flag(kind, text)
            cond = flag.operate(_op(node.op), literal(int(v)))
            return func.coalesce(cond, false())
        cond = and_(
            kind == "string",
            text.collate("C").operate(_op(node.op), bindparam(None, v, type_=String)),
        )
        return func.coalesce(cond, false())

    @staticmethod
    def pg_number(value: Any, kind: Any, text: Any) -> Any:
        """The value as numeric: a JSON number, or a string that looks like one (checked before
        the cast: never an SQL error); else NULL. The type is read once (a simple CASE)."""
        looks = case((text.regexp_match(_PG_NUMERIC), text.cast(Numeric)))
        return case({"number": value.cast(Numeric), "string": looks}, value=kind)

    @staticmethod
    def pg_flag(kind: Any, text: Any) -> Any:
        """1 for true, 0 for false (JSON booleans, or the strings "true"/"false"), else NULL."""
        lowered = func.lower(text)
        return case(
            (and_(kind == "boolean", text == "true"), 1),
            (and_(kind == "boolean", text == "false"), 0),
            (and_(kind == "string", lowered == "true"), 1),
            (and_(kind == "string", lowered == "false"), 0),
        )

    def pg_equal(self, doc: Any, value: Any, kind: Any, text: Any, key: str, v: ast.Value) -> Any:
        if isinstance(v, bool):
            return func.coalesce(self.pg_flag(kind, text) == int(v), false())
        if isinstance(v, Decimal):
            number = self.pg_number(value, kind, text)
            return func.coalesce(number == bindparam(None, v, type_=Numeric), false())
        # the GIN index serves @>
        return doc.contains(bindparam(None, {key: v}, type_=JSONB))

    def sqlite_attribute(self, node: ast.Node) -> ColumnElement[bool]:
        j = func.json_each(C.c.attributes).table_valued("key", "value", "type").alias("j")
        jtype, jvalue = j.c.type, j.c.value
        key = node.field.key  # type: ignore[union-attr]

        def number() -> Any:
            trimmed = func.trim(jvalue)
            looks = case(
                (func.json_valid(trimmed) == 1, func.json_type(trimmed)),
            )
            return case(
                (jtype.in_(["integer", "real"]), jvalue),
                (and_(jtype == "text", looks.in_(["integer", "real"])), trimmed.cast(Float)),
            )

        def flag() -> Any:
            lowered = func.lower(jvalue)
            return case(
                (jtype == "true", 1),
                (jtype == "false", 0),
                (and_(jtype == "text", lowered == "true"), 1),
                (and_(jtype == "text", lowered == "false"), 0),
            )

        def equal(v: ast.Value) -> Any:
            if isinstance(v, bool):
                return flag() == int(v)
            if isinstance(v, Decimal):
                return number() == bindparam(None, float(v), type_=Float)
            return and_(jtype == "text", jvalue == bindparam(None, v, type_=String))

        cond: Any
        if isinstance(node, ast.IsSet):
            cond = and_(jtype != "null", or_(jtype != "text", jvalue != ""))
        elif isinstance(node, ast.TextMatch):
            cond = and_(
                jtype.in_(["text", "integer", "real"]),
                self.text_match(func.lower(jvalue.cast(String)), node),
            )
        elif isinstance(node, ast.OneOf):
            cond = or_(*(equal(v) for v in node.values))
        else:
            assert isinstance(node, ast.Compare)
            v = node.value
            if node.op in ("=", "!="):
                found = exists(select(literal(1)).select_from(j).where(j.c.key == key, equal(v)))
                return found if node.op == "=" else not_(found)
            if isinstance(v, Decimal):
                cond = number().operate(_op(node.op), bindparam(None, float(v), type_=Float))
            elif isinstance(v, bool):
                cond = flag().operate(_op(node.op), literal(int(v)))
            else:
                cond = and_(
                    jtype == "text",
                    jvalue.operate(_op(node.op), bindparam(None, v, type_=String)),
                )
        return exists(
            select(literal(1)).select_from(j).where(j.c.key == key, func.coalesce(cond, false()))
        )

    # -- engagement -------------------------------------------------------------------------

    def engagement(self, node: ast.Engagement) -> ColumnElement[bool]:
        real = select(R.c.id).where(R.c.dry_run == false())
        if node.campaign is not None:
            real = real.where(R.c.campaign_id.in_(select(K.c.id).where(K.c.name == node.campaign)))
        since = (
            bindparam(None, self.now - node.within, type_=TS) if node.within is not None else None
        )
        if node.event == "received":
            conds = [
                D.c.address_key == C.c.address_key,
                D.c.status == "sent",
                D.c.run_id.in_(real),
            ]
            if since is not None:
                conds.append(D.c.sent_at >= since)
            return exists().where(*conds)
        conds = [
            D.c.address_key == C.c.address_key,
            E.c.kind == _EVENT_KIND[node.event],
            E.c.run_id.in_(real),
        ]
        if since is not None:
            conds.append(E.c.occurred_at >= since)
        return exists(
            select(literal(1)).select_from(E.join(D, D.c.id == E.c.delivery_id)).where(*conds)
        )


def _op(op: str) -> Any:
    import operator

    return {
        "=": operator.eq,
        "!=": operator.ne,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }[op]


def condition(conn: Connection, node: ast.Node, *, where: str = "segment") -> ColumnElement[bool]:
    """The condition over ``contacts`` that ``node`` means (lists resolved through ``conn``)."""
    lists = resolve_lists(conn, node, where)
    return _Compiler(conn.dialect.name, lists)(node)


# -- counting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    contacts: int  # matching contacts
    enabled: int  # of them, enabled (a campaign may reach them; blocklisted never)


def count(conn: Connection, cond: ColumnElement[bool]) -> Counted:
    query = select(
        func.count(),
        func.coalesce(func.sum(case((C.c.status == ContactStatus.ENABLED, 1), else_=0)), 0),
    ).where(cond)
    total, enabled = conn.execute(query).one()
    return Counted(int(total), int(enabled))


def sample(conn: Connection, cond: ColumnElement[bool], limit: int) -> list[str]:
    query = select(C.c.address).where(cond).order_by(C.c.id).limit(limit)
    return list(conn.execute(query).scalars())


# -- saved segments -------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedSegment:
    id: int
    name: str
    expression: str
    description: str | None
    created_at: datetime
    updated_at: datetime


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,199}")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise SegmentError(
            f"{name!r} is not a segment name",
            where="segment name",
            hint="letters, digits, '.', '_', '-' and spaces, starting with a letter or digit"
            " (at most 200)",
        )
    return name


def _not_found(name: str) -> SegmentError:
    return SegmentError(
        "no such segment",
        where=ast.segment_where(name),
        hint="`mailcast segments list` lists them",
    )


def get(conn: Connection, name: str) -> SavedSegment:
    row = conn.execute(select(S).where(S.c.name == name)).mappings().first()
    if row is None:
        raise _not_found(name)
    return SavedSegment(**{k: row[k] for k in SavedSegment.__dataclass_fields__})


def all_saved(conn: Connection) -> list[SavedSegment]:
    rows = conn.execute(select(S).order_by(S.c.name)).mappings().all()
    return [SavedSegment(**{k: r[k] for k in SavedSegment.__dataclass_fields__}) for r in rows]


def insert(engine: Engine, name: str, expression: str, description: str | None) -> None:
    now = utcnow()
    try:
        with engine.begin() as conn:
            conn.execute(
                S.insert().values(
                    name=name,
                    expression=expression,
                    description=description,
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError:
        raise SegmentError(
            "a segment of that name exists",
            where=ast.segment_where(name),
            hint="`mailcast segments edit` changes it",
        ) from None


def change(engine: Engine, name: str, values: dict[str, Any]) -> None:
    try:
        with engine.begin() as conn:
            done = conn.execute(
                update(S).where(S.c.name == name).values(**values, updated_at=utcnow())
            )
    except IntegrityError:
        raise SegmentError(
            f"a segment named {values.get('name')!r} exists", where=ast.segment_where(name)
        ) from None
    if not done.rowcount:
        raise _not_found(name)


def remove(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(delete(S).where(S.c.name == name))
    if not done.rowcount:
        raise _not_found(name)


# -- a campaign's audience --------------------------------------------------------------------


def list_condition(conn: Connection, list_name: str) -> ColumnElement[bool] | None:
    """Members of ``list_name`` a campaign sends to (confirmed; a single-opt-in list's members
    who did not leave); None when there is no such list."""
    row = conn.execute(select(L.c.id, L.c.optin).where(L.c.name == list_name)).first()
    if row is None:
        return None
    return exists().where(
        M.c.contact_id == C.c.id,
        M.c.list_id == row.id,
        M.c.status.in_(_member_statuses("member", row.optin)),
    )


def audience_keys(conn: Connection, cond: ColumnElement[bool]) -> list[str]:
    """The attribute names the audience's contacts have, sorted."""
    enabled = C.c.status == ContactStatus.ENABLED
    if conn.dialect.name == "postgresql":
        keys = func.jsonb_object_keys(type_coerce(C.c.attributes, JSONB))
        query = select(distinct(keys)).where(enabled, cond)
    else:
        j = func.json_each(C.c.attributes).table_valued("key").alias("j")
        query = select(distinct(j.c.key)).select_from(C).join(j, literal(True)).where(enabled, cond)
    return sorted(str(k) for k in conn.execute(query).scalars() if k is not None)


def audience_rows(
    conn: Connection, cond: ColumnElement[bool], keys: list[str], *, batch: int = 20_000
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of (address, address_key, name, value of each of ``keys``) of the audience's
    enabled contacts, in id order, streamed (a server-side cursor on Postgres). On Postgres
    each value is the attribute as text (``->>``: JSON numbers and booleans as written, NULL
    when missing); on SQLite the row ends with the attributes as a dict instead."""
    if conn.dialect.name == "postgresql":
        doc = type_coerce(C.c.attributes, JSONB)
        values = [doc[bindparam(None, k, type_=String)].astext for k in keys]
    else:
        values = [C.c.attributes]
    query = (
        select(C.c.address, C.c.address_key, C.c.name, *values)
        .where(C.c.status == ContactStatus.ENABLED, cond)
        .order_by(C.c.id)
    )
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
    for part in result.partitions():
        yield [tuple(r) for r in part]


__all__ = [
    "Counted",
    "ListRef",
    "SavedSegment",
    "all_saved",
    "audience_keys",
    "audience_rows",
    "change",
    "check_name",
    "condition",
    "count",
    "get",
    "insert",
    "list_condition",
    "remove",
    "resolve_lists",
    "sample",
]
