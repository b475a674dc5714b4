"""The campaign spec: one Pydantic model, read from YAML by the CLI and used as the flow parameter
(the Prefect UI renders it as a nested form on a deployment's Run page).

Files a campaign reads stay in its folder. A spec can come from an operator in the Prefect UI,
who must not read the worker's files through it: every file a campaign reads (templates,
attachments, the recipient file) must resolve, symlinks followed, inside the campaign folder
(``base_dir``), and the campaign folder inside one of the campaign roots: the folder a spec
file was loaded from (by this process: a flow parameter cannot name one), and the setting
``campaign_roots`` (MAILCAST_CAMPAIGN_ROOTS), by default the example ``deployments/`` folders.
Nothing under /proc, /sys or /dev, whatever the roots.
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from mailcast.errors import MailcastError, SpecError
from mailcast.settings import get_settings

PACKAGE = Path(__file__).resolve().parent
NEVER = (Path("/proc"), Path("/sys"), Path("/dev"))
# Folders of the spec files this process loaded (``load_spec``): trusted campaign roots by
# default (whoever runs the CLI on a spec file can read that folder anyway).
_loaded_folders: set[Path] = set()


def default_campaign_roots() -> list[Path]:
    """The campaign roots when the setting is empty: ``deployments/`` under the working directory (what ``prefect.yaml``'s
    ``base_dir: deployments/example`` resolves against), the checkout's ``deployments/`` and the
    installed example campaign."""
    return [
        Path.cwd() / "deployments",
        PACKAGE.parent / "deployments",
        PACKAGE / "example",
    ]


def campaign_roots(loaded_from: str | None = None) -> list[Path]:
    """The folders a campaign folder must be inside (resolved): the setting ``campaign_roots``
    or, when it is empty, ``default_campaign_roots()``; plus, either way, the folders of the
    spec files this process loaded (``loaded_from``, and ``load_spec``'s): a flow parameter
    cannot add one, and whoever runs the CLI on a spec file can read its folder anyway."""
    configured = get_settings().campaign_roots
    roots = list(configured) if configured else default_campaign_roots()
    roots += sorted(_loaded_folders)
    if loaded_from:
        roots.append(Path(loaded_from))
    return [_real(root.expanduser(), "campaign_roots", SpecError) for root in roots]


def _real(path: Path, where: str, error: type[MailcastError]) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise error(f"cannot resolve {path}: {exc}", where=where) from None


def _never(real: Path) -> bool:
    return any(real == never or real.is_relative_to(never) for never in NEVER)


def campaign_folder(base_dir: str | Path, *, loaded_from: str | None = None) -> Path:
    """``base_dir`` resolved, checked to be inside a campaign root (and not in /proc, /sys,
    /dev); raises SpecError naming ``base_dir`` and the path otherwise."""
    real = _real(Path(base_dir).expanduser(), "base_dir", SpecError)
    if _never(real):
        raise SpecError(
            f"the campaign folder {base_dir} is a system folder ({real}): campaigns never read"
            " files under /proc, /sys or /dev",
            where="base_dir",
            hint="point `base_dir` at the campaign's own folder",
        )
    roots = campaign_roots(loaded_from)
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise SpecError(
            f"the campaign folder {base_dir} (resolves to {real}) is outside the campaign roots: "
            + ", ".join(str(r) for r in roots),
            where="base_dir",
            hint="put the campaign under a campaign root, or add its folder to "
            "MAILCAST_CAMPAIGN_ROOTS (the setting `campaign_roots`) on the machine that runs it",
        )
    return real


def campaign_file(
    base_dir: str | Path,
    relative: str,
    *,
    field: str,
    error: type[MailcastError] = SpecError,
    loaded_from: str | None = None,
) -> Path:
    """The file ``relative`` (as written in the spec's ``field``) resolved, symlinks followed,
    and checked to be inside the campaign folder, itself inside a campaign root. Raises
    ``error`` (where: the path as written) for a file outside the folder, SpecError for a
    campaign folder outside the roots."""
    base = campaign_folder(base_dir, loaded_from=loaded_from)
    path = Path(relative).expanduser()
    if not path.is_absolute():
        path = Path(base_dir).expanduser() / path
    real = _real(path, relative, error)
    if _never(real) or not real.is_relative_to(base):
        raise error(
            f"`{field}`: the file is outside the campaign folder {base} (resolves to {real})",
            where=relative,
            hint="campaign files (templates, attachments, recipients) must be inside the"
            " campaign folder `base_dir`",
        )
    return real


class SqlSource(BaseModel):
    """Recipients from a SQL query (any SQLAlchemy URL)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="SQLAlchemy database URL, e.g. postgresql+psycopg://host/db")
    query: str = Field(description="A SELECT returning one row per recipient")


class RecipientSource(BaseModel):
    """Where recipients come from: a file (.csv, .tsv, .txt, .xlsx), a SQL query, or the
    contacts kept in mailcast: a list's members or a segment (the row's fields are the
    contact's attributes plus ``email`` and ``name``)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, description="CSV/TSV/XLSX file, relative to the spec")
    sql: SqlSource | None = None
    list: str | None = Field(
        default=None,
        description="A mailing list's name: its confirmed members (every member of a single"
        " opt-in list who did not leave) who are enabled",
    )
    segment: str | None = Field(
        default=None, description="A saved segment's name: its enabled contacts"
    )
    email_column: str = Field(default="email", description="Column holding the address")
    name_column: str | None = Field(
        default=None, description="Column holding the display name for the To header (optional)"
    )
    sheet: str | None = Field(default=None, description="Excel sheet name (default: the first)")
    delimiter: str | None = Field(default=None, description="CSV delimiter (default: sniffed)")
    encoding: str | None = Field(default=None, description="File encoding (default: sniffed)")
    required_columns: builtins.list[str] = Field(
        default_factory=builtins.list,
        description="Columns that must be non-empty for a row to be sent",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RecipientSource:
        given = [self.path, self.sql, self.list, self.segment]
        if sum(v is not None for v in given) != 1:
            raise ValueError("give exactly one of `path`, `sql`, `list` or `segment`")
        return self

    @property
    def audience(self) -> tuple[str, str] | None:
        """("list" or "segment", its name) for contacts kept in mailcast, else None."""
        if self.list is not None:
            return ("list", self.list)
        if self.segment is not None:
            return ("segment", self.segment)
        return None


_DOMAIN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
_LABELS = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?)*"


class DkimSpec(BaseModel):
    """DKIM signing (RFC 6376): every message is signed with a private key whose public key is
    published in DNS at SELECTOR._domainkey.DOMAIN (README: DKIM)."""

    model_config = ConfigDict(extra="forbid")
    selector: str = Field(description="The selector s=: the public key's TXT record is at "
                          "SELECTOR._domainkey.DOMAIN, e.g. mc2026")  # fmt: skip
    domain: str | None = Field(
        None,
        description="The signing domain d= (default: the sender's domain); for DMARC it must be "
        "the sender's domain or a parent of it",
    )
    key_block: str | None = Field(
        None,
        description="Name of the Prefect Secret block holding the private key (PEM: RSA "
        "2048-bit, or Ed25519)",
    )
    key_file: str | None = Field(
        None, description="Or a PEM file in the campaign folder (local use)"
    )

    @field_validator("selector", "domain")
    @classmethod
    def _dns_name(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        value = value.strip().lower().rstrip(".")
        if not re.fullmatch(_DOMAIN if info.field_name == "domain" else _LABELS, value):
            raise ValueError(f"{value!r} is not a DNS name")
        return value

    @model_validator(mode="after")
    def _one_key(self) -> DkimSpec:
        if bool(self.key_block) == bool(self.key_file):
            raise ValueError("give exactly one of `key_block` or `key_file`")
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
        default=None,
        gt=0,
        description="Messages per second across the run, all worker processes together, "
        "paced evenly (default: unlimited)",
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Tries per message on 4xx")
    retry_base_seconds: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="First retry delay after a 4xx or a lost connection; doubles per attempt",
    )
    max_retry_seconds: float = Field(
        default=600,
        ge=0,
        description="Most time a run spends waiting to retry (backoffs, slow-down replies, an "
        "unreachable server); after that 4xx are final and an unreachable server pauses it",
    )
    pause_after_failures: int = Field(
        default=50,
        ge=0,
        description="Pause the run after this many recipients in a row failed (0: never)",
    )
    max_hard_bounce_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Pause the run when hard bounces (permanent refusals of the recipient) are"
        " more than this share of the last 1,000 attempts of a sending process, judged once it"
        " made 200 (0: never). A list that bounces this much harms the sender's reputation",
    )
    max_complaint_rate: float = Field(
        default=0.003,
        ge=0,
        le=1,
        description="Pause the run when spam complaints recorded for it (feedback loops,"
        " provider webhooks) are more than this share of its messages sent, checked every 30 s"
        " once 1,000 were sent (0: never)",
    )
    crash_window: Literal["message", "ledger", "batch"] = Field(
        default="message",
        description="What a crash of the sender may leave in doubt (unknown) per connection:"
        " 'message' (only the message on the wire; each hand-over is one append to a local"
        " journal that a resume on the same machine reads: MAILCAST_JOURNAL_DIR), 'ledger' (the"
        " same window wherever the resume runs: one ledger write per message, ~30% slower"
        " against a local relay) or 'batch' (the rows of its claim batch, ~0.1 s of sending)",
    )
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    check_deliverability: bool = Field(
        default=False, description="Look up the domain's MX records while validating (needs DNS)"
    )
    tracking_base_url: str | None = Field(
        default=None,
        description="Public base URL of the tracking service (`mailcast serve`), e.g. "
        "https://t.acme.example; without it there is no open/click tracking and no "
        "List-Unsubscribe link",
    )
    track_opens: bool = Field(default=True, description="Add the open pixel to HTML bodies")
    track_clicks: bool = Field(
        default=True, description="Rewrite the links of HTML bodies to count clicks"
    )
    bounce_domain: str | None = Field(
        default=None,
        description="Domain of the VERP return path bounces+TOKEN@DOMAIN (its mail must reach "
        "the bounce mailbox); default: bounces go to the sender",
    )
    unsubscribe_mailto: str | None = Field(
        default=None,
        description="Also offer unsubscribing by mail to this address (List-Unsubscribe mailto:)",
    )
    suppress_smtp_bounces: bool = Field(
        default=True,
        description="Suppress an address (for every later campaign) when the server refuses it "
        "at RCPT as bad (a hard bounce such as 550 5.1.1 unknown user), as a DSN with that code "
        "would; false: record the bounce event only",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes that send (rendering and building messages needs CPU: "
        "use one more than the machine's cores). 1: threads in the flow's process. More: a "
        "process pool; "
        "each process sends one chunk at a time over ceil(connections / workers) connections",
    )
    server_limit: bool = Field(
        default=True,
        description="Hold the Prefect global concurrency limit `smtp:HOST:PORT` (`smtp:BLOCK` "
        "for a saved block) while connected: simultaneous connections to the server stay "
        "within it across runs and workers. When it does not exist it is created with this "
        "run's `connections` as its size (change it on the Prefect UI's Concurrency page)",
    )

    dkim: DkimSpec | None = Field(
        default=None,
        description="Sign every message with DKIM: selector, domain and the private key's "
        "Secret block (default: not signed)",
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A key for recurring campaigns: every real run records the addresses it"
        " sent the key to; with `once_per_contact` an address never receives it twice",
    )
    once_per_contact: bool = Field(
        default=False,
        description="Skip addresses that already received `key` (reason `already sent: KEY`)",
    )
    allow_repeats: bool = Field(
        default=False,
        description="Let a deployment send this campaign again to a recipients source it was"
        " already sent to (a completed real run); the CLI asks instead (or `--again`)",
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
        if self.once_per_contact and not self.key:
            raise ValueError("`once_per_contact: true` needs a `key`")
        return self

    @field_validator("tracking_base_url")
    @classmethod
    def _tracking_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        scheme, sep, rest = value.partition("://")
        if (
            scheme.lower() not in ("http", "https")
            or not sep
            or not rest
            or rest.startswith("/")
            or any(c <= " " or c in '<>"\\^`{|}' or ord(c) > 126 for c in value)
            or "?" in value
            or "#" in value
        ):
            raise ValueError(
                f"{value!r} is not a base URL like https://t.example.com (http or https, no"
                " spaces, query or fragment)"
            )
        return value

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().lower()
        if not re.fullmatch(_DOMAIN, value):
            raise ValueError(f"{value!r} is not a domain name like bounces.acme.example")
        return value

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _unsubscribe_mailto(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().removeprefix("mailto:")
        if not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", value):
            raise ValueError(f"{value!r} is not a plain address like unsubscribe@acme.example")
        return value

    _loaded_from: str | None = PrivateAttr(default=None)  # set by load_spec, never by a dict

    def resolve(self, relative: str) -> Path:
        """A path from the spec, resolved against the spec's folder (not checked: see
        ``campaign_file``)."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def campaign_folder(self) -> Path:
        """``base_dir``, resolved and checked to be inside a campaign root."""
        return campaign_folder(self.base_dir, loaded_from=self._loaded_from)

    def campaign_file(
        self, relative: str, *, field: str, error: type[MailcastError] = SpecError
    ) -> Path:
        """A file the campaign reads, resolved and confined (see the module doc)."""
        return campaign_file(
            self.base_dir, relative, field=field, error=error, loaded_from=self._loaded_from
        )


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
    spec = spec_from_dict(data, where=str(path), base_dir=str(path.parent))
    folder = path.parent.resolve()
    _loaded_folders.add(folder)
    spec._loaded_from = str(folder)
    return spec
