"""Templates: the Jinja2 environment, compiling and checking a campaign's templates once, and
rendering one recipient's parts.

Everything a campaign author writes runs in Jinja2's ``ImmutableSandboxedEnvironment`` with
``StrictUndefined``: attribute access to internals (``''.__class__``) fails, collections cannot be
mutated, and there is no loader, so ``{% include %}``/``{% import %}``/``{% extends %}`` cannot
read files (they are refused when the template is compiled).

The names a template may use are the recipient data's columns that are valid identifiers, plus
the built-ins below, which win over a column of the same name (every column, whatever its name,
is also reachable as ``recipient["First Name"]``):

``email``            the recipient's address
``row``              the row number (line of the CSV, row of the sheet, ...)
``recipient``        a dict of every field of the row
``campaign``         the campaign's name
``unsubscribe_url``  given by the send step (may be "")
``preferences_url``  the recipient's preference page (lists to stay on or leave; may be "")
``message_id``       the message's Message-ID (may be "")

The HTML body is autoescaped; the subject, text body and headers are not (they are not HTML).

Rendering is bounded: every loop iteration and every call counts against a budget (at most
``_MAX_STEPS`` of them and ``_MAX_RENDER_SECONDS`` per template per recipient), the output may
not grow past ``_MAX_OUTPUT`` characters, and the operations that build large strings in one
step (``*``, ``+``, ``~``, ``%``, padding, ``join``, ``replace``, format widths, nested ones
included, ``lipsum``) are refused beyond ``_MAX_SEQUENCE``. Integers may not grow past
``_MAX_INT_BITS`` (``**``, ``*``, ``+``). Filters and the str methods that split do the work of
one step in C, out of the budget's sight: they refuse an input longer than ``_MAX_FILTER_INPUT``
(a lazy input, such as ``map``'s output, is counted item by item) and a number argument beyond
``_MAX_SEQUENCE`` (``batch(10**9)``, ``slice(10**9)``). A template that goes past a bound fails
with a TemplateError naming it and the line.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import string
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from itertools import islice
from typing import Any, cast

from jinja2 import StrictUndefined, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from markupsafe import Markup

from mailcast.errors import SpecError, TemplateError
from mailcast.recipients import Recipient
from mailcast.spec import CampaignSpec

BUILTIN_NAMES: tuple[str, ...] = (
    "email",
    "row",
    "recipient",
    "campaign",
    "unsubscribe_url",
    "preferences_url",
    "message_id",
)

_FILENAME_PREFIX = "<mailcast-template:"  # code-object file name: finds a template's frame
_MAX_SEQUENCE = 1_000_000  # "x" * n in a template may not build anything longer than this
_MAX_EXPONENT = 1_000
_MAX_INT_BITS = 100_000  # ~30,000 digits: more than any template needs, cheap to compute
# The longest string, list or mapping a filter (or str.split) takes: above a recipient field's
# limit (131,072 characters), well below what makes one C-level step slow or large.
_MAX_FILTER_INPUT = 256 * 1024
# Filters that are O(1) whatever their input's size.
_CHEAP_FILTERS = frozenset({"length", "count", "default", "d", "first", "last", "random", "safe"})
_SPLITTING_METHODS = frozenset({"split", "rsplit", "splitlines"})
_MAX_OUTPUT = 20_000_000  # characters one template may render (a message is at most 10 MB)
_MAX_STEPS = 1_000_000  # loop iterations + calls per template per recipient
_MAX_RENDER_SECONDS = 2.0  # per template per recipient
_BIG_WIDTH = re.compile(r"\d{7,}")  # a format width/precision of a million or more
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


class _Budget(threading.local):
    """The current render's budget (one render at a time per thread)."""

    deadline = math.inf
    steps = 0


_budget = _Budget()


def _tick() -> None:
    """One loop iteration or call of a template: within the step and time budget?"""
    _budget.steps += 1
    _check_budget()


def _check_budget() -> None:
    budget = _budget
    if budget.steps > _MAX_STEPS:
        raise SecurityError(
            f"the template takes more than {_MAX_STEPS:,} loop iterations and calls to render"
        )
    if time.monotonic() > budget.deadline:
        raise SecurityError(f"the template takes more than {_MAX_RENDER_SECONDS:g}s to render")


def _guarded_iter(iterable: Iterable[Any]) -> Iterable[Any]:
    """What every ``{% for %}`` iterates over: the loop's items, counted against the budget."""
    for item in iterable:
        _tick()
        yield item


def _capped(value: Any) -> Any:
    """The result of ``a ~ b``: refused when too long (a doubling loop stops here)."""
    if isinstance(value, str) and len(value) > _MAX_OUTPUT:
        raise SecurityError("a string built by the template is too long")
    return value


def _too_long(n: int) -> None:
    if n > _MAX_SEQUENCE:
        raise SecurityError(f"the template would build a string of {n:,} characters")


def _check_percent(fmt: str, args: Any) -> None:
    """``fmt % args``: no width or precision of a million or more (also through ``*``)."""
    for match in _PERCENT_SPEC.finditer(fmt):
        for group in match.groups():
            if group and group != "*" and len(group) > 6:
                _too_long(int(group))
        if "*" in match.group(0):
            values = args if isinstance(args, tuple) else (args,)
            for value in values:
                if isinstance(value, int):
                    _too_long(abs(value))


def _check_format_spec(spec: str) -> None:
    """A resolved format spec (nested ``{w}`` already replaced): no width or precision of a
    million or more."""
    if spec and _BIG_WIDTH.search(spec):
        raise SecurityError("a format width in the template is too large")


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` in templates: each field's spec is checked once its nested fields
    (``'{:>{w}}'``) are filled in."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        _check_int(value)
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    pass


def _check_int(value: Any) -> Any:
    """An integer a template computed: refused when it is too big (its arithmetic, and turning
    it into text, would take seconds)."""
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise SecurityError(f"a number computed by the template has over {_MAX_INT_BITS:,} bits")
    return value


def _check_format(fmt: str) -> None:
    """``fmt.format(...)``: no width or precision of a million or more."""
    try:
        for _literal, _field, spec, _conversion in string.Formatter().parse(fmt):
            if spec and _BIG_WIDTH.search(spec):
                raise SecurityError("a format width in the template is too large")
    except ValueError:
        return  # str.format raises its own error


def _check_str_call(target: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse the str method calls that would build a very long string in one step."""
    values = list(args) + list(kwargs.values())
    if name in ("ljust", "rjust", "center", "zfill") and values and isinstance(values[0], int):
        _too_long(values[0])
    elif name == "expandtabs" and values and isinstance(values[0], int):
        _too_long(len(target) + target.count("\t") * max(values[0], 0))
    elif name == "replace" and len(values) >= 2:
        old, new = values[0], values[1]
        if isinstance(old, str) and isinstance(new, str):
            count = target.count(old) if old else len(target) + 1
            _too_long(len(target) + count * max(len(new) - len(old), 0))
    elif name in ("format", "format_map"):
        _check_format(target)
    elif name in _SPLITTING_METHODS and len(target) > _MAX_FILTER_INPUT:
        raise SecurityError(
            f"{name}() of a string of {len(target):,} characters is too much for a template"
        )


def _str_method(value: Any) -> Any:
    """A str method that can build a large string, wrapped to check its arguments first."""
    name = getattr(value, "__name__", "")
    if name not in ("ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join",
                    "format", "format_map", "split", "rsplit", "splitlines"):  # fmt: skip
        return value
    bound = getattr(value, "__wrapped__", value)  # the sandbox wraps str.format already
    target = getattr(bound, "__self__", None)
    if not isinstance(target, str):
        return value

    if name == "join":

        def join(items: Iterable[Any]) -> Any:
            items = list(items)
            size = sum(len(i) for i in items if isinstance(i, str))
            _too_long(size + len(target) * max(len(items) - 1, 0))
            return value(items)

        return join

    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_str_call(target, name, args, kwargs)
        return value(*args, **kwargs)

    return guarded


def _bounded_filters(filters: dict[str, Callable[..., Any]]) -> None:
    """Wrap the built-in filters that can build a large string in one step."""
    center, indent, join, replace, format_ = (
        filters["center"], filters["indent"], filters["join"], filters["replace"],
        filters["format"],
    )  # fmt: skip

    def do_center(value: Any, width: int = 80) -> Any:
        _too_long(width if isinstance(width, int) else 0)
        return center(value, width)

    def do_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> Any:
        size = width if isinstance(width, int) else len(str(width))
        _too_long(len(str(s)) + size * (str(s).count("\n") + 1))
        return indent(s, width, first, blank)

    def do_join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
        items = list(value)
        _too_long(len(str(d)) * max(len(items) - 1, 0))
        return join(eval_ctx, items, d, attribute)

    def do_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_str_call(str(s), "replace", (str(old), str(new)), {})
        return replace(eval_ctx, s, old, new, count)

    def do_format(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_percent(str(value), tuple(args) or kwargs)
        return format_(value, *args, **kwargs)

    for name, wrapper in (("center", do_center), ("indent", do_indent), ("join", do_join),
                          ("replace", do_replace), ("format", do_format)):  # fmt: skip
        original = filters[name]
        for attr in ("jinja_pass_arg",):  # pass_eval_context and friends
            if hasattr(original, attr):
                setattr(wrapper, attr, getattr(original, attr))
        filters[name] = wrapper
    for name, function in list(filters.items()):
        filters[name] = _input_bounded(name, function)


def _input_bounded(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a filter) refusing an input longer than ``_MAX_FILTER_INPUT`` and a number
    argument beyond ``_MAX_SEQUENCE``; a lazy input (an iterator: the output of ``map``,
    ``select``, ...) is counted item by item against the budget. Each call is a step."""
    passes = hasattr(function, "jinja_pass_arg")  # the first argument is the context
    first = 1 if passes else 0
    cheap = name in _CHEAP_FILTERS

    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if len(args) > first:
            value = args[first]
            if isinstance(value, Iterator):
                args = (*args[:first], _guarded_iter(value), *args[first + 1 :])
            elif not cheap and isinstance(value, Sized) and len(value) > _MAX_FILTER_INPUT:
                raise SecurityError(
                    f"the filter {name!r} was given {len(value):,} characters or items; "
                    f"at most {_MAX_FILTER_INPUT:,} in a template"
                )
            for arg in (*args[first + 1 :], *kwargs.values()):
                if isinstance(arg, int) and abs(arg) > _MAX_SEQUENCE:
                    raise SecurityError(f"the filter {name!r} was given the number {arg:,}")
        return function(*args, **kwargs)

    if passes:
        bounded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    bounded.__name__ = getattr(function, "__name__", name)
    return bounded


def is_template(value: str) -> bool:
    """True when a spec value holds Jinja2 markup (custom headers without it are static)."""
    return "{{" in value or "{%" in value or "{#" in value


def looks_inline(value: str) -> bool:
    """A body value is inline template text (rather than a file path) when it contains a
    newline, ``{{``, ``{%`` or ``<``."""
    return "\n" in value or "{{" in value or "{%" in value or "<" in value


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's personal parts, ready for ``mailcast.compose.mime.MessageBuilder.build``.

    ``headers`` holds every custom header of the spec (static ones as written, templated ones
    rendered), keyed by the spec's header name.
    """

    to_name: str | None
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str]


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus bounds on what one render may cost (see the module doc):
    caps on ``*``, ``**``, ``+`` and ``%``, on the str methods and filters that build long
    strings, and a step and time budget checked at every call and loop iteration."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is too large for a template")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and abs(left) > 1
                and right > 0
                and (abs(left).bit_length() - 1) * right > _MAX_INT_BITS
            ):
                raise SecurityError(
                    f"a number computed by the template has over {_MAX_INT_BITS:,} bits"
                )
            return operator.pow(left, right)
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > _MAX_SEQUENCE
                ):
                    raise SecurityError("repetition is too large for a template")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > _MAX_INT_BITS + 1
            ):
                raise SecurityError(
                    f"a number computed by the template has over {_MAX_INT_BITS:,} bits"
                )
            return operator.mul(left, right)
        if operator_ == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                return _capped(operator.add(left, right))
            return _check_int(operator.add(left, right))
        if operator_ == "%":
            if isinstance(left, str):
                _check_percent(left, right)
            return operator.mod(left, right)
        return super().call_binop(context, operator_, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """The sandbox's ``str.format``/``format_map``, with every field's spec checked after
        its nested fields are filled in (``'{:>{w}}'.format('x', w=10**9)``)."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        target = value.__self__
        if not isinstance(target, str):
            return None
        str_type: type[str] = type(target)
        is_format_map = value.__name__ == "format_map"
        formatter: _BoundedFormatter
        if isinstance(target, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=target.escape)
        else:
            formatter = _BoundedFormatter(self)
        vformat = formatter.vformat

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return str_type(vformat(target, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        return _str_method(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return _str_method(super().getitem(obj, argument))


def _lipsum(lipsum: Callable[..., str]) -> Callable[..., str]:
    def bounded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if not all(isinstance(v, int) and abs(v) <= 1000 for v in (n, min, max)):
            raise SecurityError("lipsum() takes numbers up to 1000 in a template")
        return lipsum(n, html, min, max)

    return bounded


def _make_env(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        loader=None,
    )
    _bounded_filters(env.filters)
    env.globals["lipsum"] = _lipsum(env.globals["lipsum"])  # type: ignore[arg-type]
    env.globals[_LOOP_GUARD] = _guarded_iter
    env.globals[_CAP] = _capped
    return env


_LOOP_GUARD = "_mailcast_loop"
_CAP = "_mailcast_cap"


def _guard(ast: nodes.Template) -> None:
    """Route every ``{% for %}`` through the loop guard and every ``~`` through the length
    cap (after the template was checked, before it is compiled)."""
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.Name(_LOOP_GUARD, "load", lineno=loop.lineno),
            [loop.iter],
            [],
            None,
            None,
            lineno=loop.lineno,
        )
    for parent in list(ast.find_all(nodes.Node)):
        for name in parent.fields:
            value = getattr(parent, name, None)
            if isinstance(value, nodes.Concat):
                setattr(parent, name, _cap_call(value))
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, nodes.Concat):
                        value[i] = _cap_call(item)


def _cap_call(node: nodes.Concat) -> nodes.Call:
    return nodes.Call(
        nodes.Name(_CAP, "load", lineno=node.lineno), [node], [], None, None, lineno=node.lineno
    )


@dataclass(slots=True)
class _Part:
    name: str  # for messages: "subject", "html", "header X-Foo", or the file's name
    template: Template
    filename: str  # the code object's file name, to find the template's frame in a traceback


def _first_line(ast: nodes.Template, predicate: Callable[[nodes.Node], bool]) -> int | None:
    lines = [node.lineno for node in ast.find_all(nodes.Node) if predicate(node)]
    return min(lines) if lines else None


def _error_line(exc: BaseException, filename: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


class CampaignTemplates:
    """A campaign's templates, compiled and checked against the recipient data's columns.

    Construction raises ``TemplateError`` (``where="name:line"``) for a syntax error, a
    variable that is not a column, an include/import/extends, or access to an underscore
    attribute; ``render`` raises it for errors that only show with a row's values.
    """

    def __init__(self, spec: CampaignSpec, columns: Sequence[str]) -> None:
        self.spec = spec
        self.columns = list(columns)
        self._campaign = spec.name
        self._html_env = _make_env(autoescape=True)
        self._text_env = _make_env(autoescape=False)
        # Columns a template can name directly; the built-ins win over a column of the same name.
        self._identifier_columns = [
            c for c in self.columns if c.isidentifier() and c not in BUILTIN_NAMES
        ]
        self._available = (
            set(self._identifier_columns) | set(BUILTIN_NAMES) | set(self._text_env.globals)
        )

        self._subject = self._compile("subject", spec.subject, self._text_env)
        self._html = self._load_body(spec.html, "html", self._html_env) if spec.html else None
        self._text = self._load_body(spec.text, "text", self._text_env) if spec.text else None
        self._static_headers: dict[str, str] = {}
        self._header_parts: dict[str, _Part] = {}
        for header, value in spec.headers.items():
            if is_template(value):
                self._header_parts[header] = self._compile(
                    f"header {header}", value, self._text_env
                )
            else:
                self._static_headers[header] = value

        self._name_column: str | None = None
        self._name_part: _Part | None = None
        name_column = spec.recipients.name_column
        if name_column:
            if is_template(name_column):
                self._name_part = self._compile("name", name_column, self._text_env)
            elif name_column in self.columns:
                self._name_column = name_column
            else:
                raise SpecError(
                    f"name column `{name_column}` is not a column of the recipient data"
                    f" (columns: {', '.join(self.columns)})",
                    where="recipients.name_column",
                )

    # -- compiling ---------------------------------------------------------------------------

    def _load_body(self, value: str, kind: str, env: _Sandbox) -> _Part:
        if looks_inline(value):
            return self._compile(kind, value, env)
        path = self.spec.campaign_file(value, field=kind, error=TemplateError)
        if not path.is_file():
            raise TemplateError(
                "template file not found",
                where=str(path),
                hint=f"`{kind}` is a path relative to the spec's folder, or inline template"
                " text (which must contain a newline, `{{`, `{%` or `<`)",
            )
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TemplateError(f"not UTF-8 text: {exc}", where=str(path)) from None
        except OSError as exc:
            raise TemplateError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None
        return self._compile(path.name, source, env)

    def _compile(self, name: str, source: str, env: _Sandbox) -> _Part:
        filename = f"{_FILENAME_PREFIX}{name}>"
        try:
            ast = env.parse(source, name=name, filename=filename)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                exc.message or "syntax error", where=f"{name}:{exc.lineno}"
            ) from None

        line = _first_line(
            ast,
            lambda n: isinstance(
                n, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends
            ),
        )
        if line is not None:
            raise TemplateError(
                "include, import and extends are not available: a template cannot read other files",
                where=f"{name}:{line}",
            )
        line = _first_line(
            ast, lambda n: isinstance(n, nodes.Getattr) and str(n.attr).startswith("_")
        )
        if line is not None:
            raise TemplateError(
                "attributes starting with `_` are not accessible in templates",
                where=f"{name}:{line}",
            )

        try:  # also finds unknown filters and tests (TemplateAssertionError)
            undeclared = find_undeclared_variables(ast)
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or "invalid", where=f"{name}:{exc.lineno}") from None
        unknown = sorted(undeclared - self._available)
        if unknown:
            # Report the one used first in the template.
            first: tuple[int, str] | None = None
            for node in ast.find_all(nodes.Name):
                if (
                    node.ctx == "load"
                    and node.name in unknown
                    and (first is None or node.lineno < first[0])
                ):
                    first = (node.lineno, node.name)
            lineno, var = first if first is not None else (1, unknown[0])
            raise TemplateError(
                f"variable `{var}` is not a column of the recipient data"
                f" (columns: {', '.join(self.columns)})",
                where=f"{name}:{lineno}",
                hint='use a column name, `recipient["Column Name"]` for columns that are not'
                " identifiers, or one of: " + ", ".join(BUILTIN_NAMES),
            )

        _guard(ast)
        try:
            code = env.compile(ast, name=name, filename=filename)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                exc.message or "syntax error", where=f"{name}:{exc.lineno}"
            ) from None
        template = env.template_class.from_code(env, code, env.make_globals(None), None)
        return _Part(name=name, template=template, filename=filename)

    # -- introspection -------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The names of every compiled template, as used in error messages."""
        parts: Iterable[_Part | None] = (
            self._subject,
            self._html,
            self._text,
            *self._header_parts.values(),
            self._name_part,
        )
        return [p.name for p in parts if p is not None]

    @property
    def templated_headers(self) -> list[str]:
        return list(self._header_parts)

    # -- rendering -----------------------------------------------------------------------------

    def context(
        self, recipient: Recipient, extra: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        fields = recipient.fields
        ctx: dict[str, Any] = {c: fields.get(c) for c in self._identifier_columns}
        ctx["email"] = recipient.address
        ctx["row"] = recipient.row
        ctx["recipient"] = fields
        ctx["campaign"] = self._campaign
        ctx["unsubscribe_url"] = ""
        ctx["preferences_url"] = ""
        ctx["message_id"] = ""
        if extra:
            ctx.update(extra)
        return ctx

    def _run(self, part: _Part, ctx: dict[str, Any], row: int) -> str:
        try:
            return _render_bounded(part.template, ctx)
        except Exception as exc:
            line = getattr(exc, "template_line", None) or _error_line(exc, part.filename)
            where = f"{part.name}:{line}" if line is not None else part.name
            raise TemplateError(f"row {row}: {exc}", where=where) from None

    def render(self, recipient: Recipient, extra: Mapping[str, str] | None = None) -> Rendered:
        """Render one recipient's subject, bodies, templated headers and display name.

        ``extra`` supplies ``unsubscribe_url``, ``preferences_url`` and ``message_id`` (they
        default to "").
        The subject, header values and display name are stripped of surrounding whitespace.
        """
        ctx = self.context(recipient, extra)
        row = recipient.row
        subject = self._run(self._subject, ctx, row).strip()
        html = self._run(self._html, ctx, row) if self._html is not None else None
        text = self._run(self._text, ctx, row) if self._text is not None else None
        headers: dict[str, str] = {}
        for header in self.spec.headers:  # the spec's order
            part = self._header_parts.get(header)
            if part is None:
                headers[header] = self._static_headers[header]
            else:
                headers[header] = self._run(part, ctx, row).strip()
        to_name: str | None
        if self._name_part is not None:
            to_name = self._run(self._name_part, ctx, row).strip() or None
        elif self._name_column is not None:
            to_name = _display_name(recipient.fields.get(self._name_column))
        else:
            to_name = None
        return Rendered(to_name=to_name, subject=subject, html=html, text=text, headers=headers)


def _render_bounded(template: Template, ctx: dict[str, Any]) -> str:
    """``template.render(ctx)`` within the step, time and output budget."""
    _budget.steps = 0
    _budget.deadline = time.monotonic() + _MAX_RENDER_SECONDS
    pieces: list[str] = []
    size = 0
    budget = _budget
    try:
        output = template.root_render_func(template.new_context(ctx))
        # The output in slices of 64 pieces (collected and measured in C): each slice counts
        # against the step budget like 64 calls of _tick(), and the output's size is checked.
        while batch := list(islice(output, 64)):
            try:
                size += sum(map(len, batch))
                if size > _MAX_OUTPUT:
                    raise SecurityError(
                        f"the template renders more than {_MAX_OUTPUT:,} characters"
                    )
                pieces += batch
                budget.steps += len(batch)
                _check_budget()
            except SecurityError as exc:  # raised here, outside the template: name its line
                frame = getattr(output, "gi_frame", None)
                line: int | None
                if frame is not None:
                    line = template.get_corresponding_lineno(frame.f_lineno)
                else:  # the template had finished: find the piece that went over
                    pieces.clear()
                    batch.clear()
                    line = _overflow_line(template, ctx)
                exc.template_line = line  # type: ignore[attr-defined]
                raise
        return template.environment.concat(pieces)  # type: ignore[attr-defined,no-any-return]
    except Exception:
        template.environment.handle_exception()  # re-raises with the template's line numbers
        raise  # pragma: no cover - handle_exception always raises
    finally:
        _budget.deadline = math.inf


def _overflow_line(template: Template, ctx: dict[str, Any]) -> int | None:
    """The line of the output piece that takes a render past ``_MAX_OUTPUT`` characters: the
    template rendered again (within a fresh budget), one piece at a time, nothing kept. Only
    for the error message of a render that went over after its last line."""
    _budget.steps = 0
    _budget.deadline = time.monotonic() + _MAX_RENDER_SECONDS
    output = cast(types.GeneratorType, template.root_render_func(template.new_context(ctx)))
    size = 0
    try:
        for piece in output:
            size += len(piece)
            frame = output.gi_frame
            if size > _MAX_OUTPUT and frame is not None:
                return template.get_corresponding_lineno(frame.f_lineno)
    except Exception:
        return None
    finally:
        output.close()
    return None


def _display_name(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def check_templates(spec: CampaignSpec, columns: Sequence[str]) -> list[str]:
    """Compile and check every template of the campaign; returns their names.
    Raises ``TemplateError`` (or ``SpecError`` for an unknown name column)."""
    return CampaignTemplates(spec, columns).names


__all__ = [
    "BUILTIN_NAMES",
    "CampaignTemplates",
    "Rendered",
    "check_templates",
    "is_template",
    "looks_inline",
]
