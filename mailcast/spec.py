"""The campaign spec: one Pydantic model, read from YAML by the CLI and used as the flow parameter
(the Prefect UI renders it as a nested form on a deployment's Run page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailcast.errors import SpecError


class SqlSource(BaseModel):
    """Recipients from a SQL query (any SQLAlchemy URL)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="SQLAlchemy database URL, e.g. postgresql+psycopg://host/db")
    query: str = Field(description="A SELECT returning one row per recipient")


class RecipientSource(BaseModel):
    """Where recipients come from: a file (.csv, .tsv, .txt, .xlsx) or a SQL query."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, description="CSV/TSV/XLSX file, relative to the spec")
    sql: SqlSource | None = None
    email_column: str = Field(default="email", description="Column holding the address")
    name_column: str | None = Field(
        default=None, description="Column holding the display name for the To header (optional)"
    )
    sheet: str | None = Field(default=None, description="Excel sheet name (default: the first)")
    delimiter: str | None = Field(default=None, description="CSV delimiter (default: sniffed)")
    encoding: str | None = Field(default=None, description="File encoding (default: sniffed)")
    required: list[str] = Field(
        default_factory=list, description="Columns that must be non-empty for a row to be sent"
    )

    @model_validator(mode="after")
    def _one_source(self) -> RecipientSource:
        if (self.path is None) == (self.sql is None):
            raise ValueError("give exactly one of `path` or `sql`")
        return self


class CampaignSpec(BaseModel):
    """A campaign: who sends what to whom. Template fields take a path (relative to the spec)
    or inline Jinja2 text."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    sender: str = Field(description='From header, e.g. "Acme News <news@acme.example>"')
    reply_to: str | None = None
    subject: str = Field(description="Jinja2 template for the subject line")
    html: str | None = Field(default=None, description="HTML body: template path or inline text")
    text: str | None = Field(default=None, description="Text body: template path or inline text")
    recipients: RecipientSource
    attachments: list[str] = Field(default_factory=list, description="Files, relative to the spec")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers (templated)")
    base_dir: str = Field(
        default=".", description="Folder that relative paths resolve against (the spec's folder)"
    )
    chunk_size: int = Field(default=500, ge=1, le=100_000, description="Recipients per send task")
    connections: int = Field(
        default=4, ge=1, le=500, description="Simultaneous SMTP connections for this run"
    )
    rate_limit: float | None = Field(
        default=None, gt=0, description="Messages per second across the run (default: unlimited)"
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Tries per message on 4xx")
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    check_deliverability: bool = Field(
        default=False, description="Look up the domain's MX records while validating (needs DNS)"
    )

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {
            "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
            "content-type", "content-transfer-encoding", "reply-to",
        }  # fmt: skip
        for name in value:
            if not name or any(c <= " " or c == ":" or ord(c) > 126 for c in name):
                raise ValueError(f"header name {name!r} is not a valid RFC 5322 field name")
            if name.lower() in reserved:
                raise ValueError(f"header {name!r} is set by mailcast; use the spec's own field")
        return value

    @model_validator(mode="after")
    def _has_body(self) -> CampaignSpec:
        if not self.html and not self.text:
            raise ValueError("give at least one of `html` or `text`")
        return self

    def resolve(self, relative: str) -> Path:
        """A path from the spec, resolved against the spec's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def spec_from_dict(data: Any, *, where: str = "spec", base_dir: str | None = None) -> CampaignSpec:
    if not isinstance(data, dict):
        raise SpecError("a campaign spec must be a mapping of fields", where=where)
    if base_dir is not None and "base_dir" not in data:
        data = {**data, "base_dir": base_dir}
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SpecError(
            f"field `{_field_path(first['loc'])}`: {first['msg']}{more}", where=where
        ) from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read a YAML spec; relative paths in it resolve against the spec's folder."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such file", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read: {exc}", where=str(path)) from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"not valid YAML: {problem}", where=where) from None
    return spec_from_dict(data, where=str(path), base_dir=str(path.parent))
