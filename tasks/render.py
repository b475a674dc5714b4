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
``message_id``       the message's Message-ID (may be "")

The HTML body is autoescaped; the subject, text body and headers are not (they are not HTML).
"""

from __future__ import annotations

import math
import operator
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mailcast.errors import SpecError, TemplateError
from mailcast.recipients import Recipient
from mailcast.spec import CampaignSpec
from tasks._prefect import task

BUILTIN_NAMES: tuple[str, ...] = (
    "email",
    "row",
    "recipient",
    "campaign",
    "unsubscribe_url",
    "message_id",
)

_FILENAME_PREFIX = "<mailcast-template:"  # code-object file name: finds a template's frame
_MAX_SEQUENCE = 1_000_000  # "x" * n in a template may not build anything longer than this
_MAX_EXPONENT = 1_000


def is_template(value: str) -> bool:
    """True when a spec value holds Jinja2 markup (custom headers without it are static)."""
    return "{{" in value or "{%" in value or "{#" in value


def looks_inline(value: str) -> bool:
    """A body value is inline template text (rather than a file path) when it contains a
    newline, ``{{``, ``{%`` or ``<``."""
    return "\n" in value or "{{" in value or "{%" in value or "<" in value


@dataclass(frozen=True, slots=True)
class Rendered:
    """One recipient's personal parts, ready for ``tasks.message.MessageBuilder.build``.

    ``headers`` holds every custom header of the spec (static ones as written, templated ones
    rendered), keyed by the spec's header name.
    """

    to_name: str | None
    subject: str
    html: str | None
    text: str | None
    headers: dict[str, str]


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a cap on ``*`` and ``**`` so a template cannot exhaust
    memory with ``"x" * 10**12``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is too large for a template")
            return operator.pow(left, right)
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > _MAX_SEQUENCE
                ):
                    raise SecurityError("repetition is too large for a template")
            return operator.mul(left, right)
        return super().call_binop(context, operator_, left, right)


def _make_env(*, autoescape: bool) -> _Sandbox:
    return _Sandbox(
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        loader=None,
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
        path = self.spec.resolve(value)
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
        ctx["message_id"] = ""
        if extra:
            ctx.update(extra)
        return ctx

    def _run(self, part: _Part, ctx: dict[str, Any], row: int) -> str:
        try:
            return part.template.render(ctx)
        except Exception as exc:
            line = _error_line(exc, part.filename)
            where = f"{part.name}:{line}" if line is not None else part.name
            raise TemplateError(f"row {row}: {exc}", where=where) from None

    def render(self, recipient: Recipient, extra: Mapping[str, str] | None = None) -> Rendered:
        """Render one recipient's subject, bodies, templated headers and display name.

        ``extra`` supplies ``unsubscribe_url`` and ``message_id`` (both default to "").
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


def _display_name(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def check_templates(spec: CampaignSpec, columns: Sequence[str]) -> list[str]:
    """Compile and check every template of the campaign; returns their names.
    Raises ``TemplateError`` (or ``SpecError`` for an unknown name column)."""
    return CampaignTemplates(spec, columns).names


check_templates_task = task(name="check-templates")(check_templates)

__all__ = [
    "BUILTIN_NAMES",
    "CampaignTemplates",
    "Rendered",
    "check_templates",
    "check_templates_task",
    "is_template",
    "looks_inline",
]
