"""One typed Settings object, the only reader of the environment. Every field can be set from the
environment with the MAILCAST_ prefix (MAILCAST_DATABASE_URL, MAILCAST_SMTP_URL,
MAILCAST_SMTP_PASSWORD, ...); ``prefect_api_url`` is Prefect's own PREFECT_API_URL. An empty
variable counts as unset. Secrets live here only as SecretStr read from the environment, or in
Prefect blocks. ``get_settings()`` reads the environment as it is now (tests that set a variable
see it at once)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("mailcast", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILCAST_", extra="ignore", env_ignore_empty=True)

    database_url: str | None = Field(
        default=None, description="Ledger database (default: SQLite file in the data dir)"
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    outbox_dir: Path | None = Field(default=None, description="Where dry runs write .eml files")
    journal_dir: Path | None = Field(
        default=None,
        description="Where senders keep their hand-over journals (crash_window: message); a"
        " local disk that outlives the worker process (default: DATA_DIR/journal)",
    )
    smtp_url: str | None = Field(default=None, description="smtp://user@host:port?security=...")
    smtp_password: SecretStr | None = None
    smtp_block: str | None = Field(default=None, description="Name of a saved SMTP server block")
    transport_url: str | None = Field(
        default=None, description="The transport by URL: smtp://…, ses://REGION, sendgrid://…"
    )
    transport_block: str | None = Field(
        default=None, description="Name of a saved transport block (NAME or KIND/NAME)"
    )
    # the HTTP API providers' credentials for their URL forms (sendgrid://, mailgun://DOMAIN,
    # mailjet://); their Prefect blocks are the other way
    sendgrid_api_key: SecretStr | None = None
    mailgun_api_key: SecretStr | None = None
    mailjet_api_key: SecretStr | None = None
    mailjet_secret_key: SecretStr | None = None
    campaign_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders campaign folders (a spec's base_dir) must be inside, besides the "
        "folder of a spec file the CLI loaded: a JSON list or paths separated by the OS path "
        "separator (`:`). Default: the example `deployments/` folders (under the working "
        "directory, the checkout, the installed package). /proc, /sys and /dev never",
    )

    @field_validator("campaign_roots", "ses_topic_arns", mode="before")
    @classmethod
    def _split_list(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            if info.field_name == "ses_topic_arns":  # ARNs hold colons: comma-separated
                return [a.strip() for a in text.split(",") if a.strip()]
            return [p for p in text.split(os.pathsep) if p.strip()]
        return value

    # tracking tokens (opens, clicks, unsubscribe, VERP): the sending worker and `mailcast serve`
    # need the same secret
    tracking_secret: SecretStr | None = Field(
        default=None, description="The tracking tokens' signing secret (16+ characters)"
    )
    tracking_secret_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the tracking secret"
    )

    tracking_queue_limit: int = Field(
        default=200_000,
        ge=1000,
        description="Opens and clicks each `mailcast serve` process holds in memory while the"
        " ledger is unreachable or slow; past it new ones are not recorded (the pixel and the"
        " redirect still answer)",
    )

    # the public subscription forms of `mailcast serve` (/s/LIST, /s/LIST/confirm/TOKEN, /p/TOKEN)
    public_url: str | None = Field(
        default=None,
        description="The public base URL of `mailcast serve` (e.g. https://t.acme.example): the"
        " links of confirmation messages (double opt-in) point there",
    )
    subscribe_sender: str | None = Field(
        default=None,
        description='From of the confirmation messages, e.g. "Acme News <news@acme.example>"'
        " (needed by double opt-in lists)",
    )
    subscribe_consent_text: str = Field(
        default="Yes, send me email from {list}. I can unsubscribe at any time with the link in"
        " each message.",
        max_length=2000,
        description="The consent text shown on a list's form ({list}: the list's name); it is"
        " kept in each consent record",
    )
    subscribe_challenge_bits: int = Field(
        default=16,
        ge=0,
        le=28,
        description="The form's proof-of-work difficulty: leading zero bits of sha256 (each bit"
        " doubles the work; 16: ~65,000 hashes, well under a second in a browser)",
    )
    subscribe_challenge_seconds: int = Field(
        default=1800, ge=30, description="Seconds a form's challenge stays valid"
    )
    subscribe_rate_per_minute: float = Field(
        default=6.0,
        ge=0,
        description="Form posts a minute per client IP address (0: no limit), after a burst",
    )
    subscribe_burst: int = Field(
        default=5, ge=1, description="Form posts a client IP address may make at once"
    )
    subscribe_confirm_days: float = Field(
        default=7.0, gt=0, description="Days a confirmation link (double opt-in) stays valid"
    )

    # provider event webhooks on `mailcast serve` (/hooks/ses, /hooks/sendgrid, /hooks/mailgun,
    # /hooks/mailjet): a provider with nothing configured has no endpoint (404)
    ses_topic_arns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="SNS topics whose SES notifications are accepted (JSON list or comma-separated)",
    )
    sendgrid_webhook_key: SecretStr | None = Field(
        default=None, description="The SendGrid Event Webhook's verification key (base64)"
    )
    mailgun_webhook_key: SecretStr | None = Field(
        default=None, description="Mailgun's HTTP webhook signing key"
    )
    mailjet_webhook_auth: SecretStr | None = Field(
        default=None, description="user:password of the HTTP Basic credentials in Mailjet's URL"
    )
    webhook_secrets_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding a JSON object with any of "
        "sendgrid_webhook_key, mailgun_webhook_key, mailjet_webhook_auth, ses_topic_arns",
    )
    webhook_max_age: int = Field(
        default=300, ge=30, description="Seconds a signed webhook post stays acceptable"
    )
    # Tests only: an https://host:port origin allowed besides https://sns.<region>.amazonaws.com
    # for SNS signing certificates and subscription confirmations, and the CA file its TLS
    # certificate is checked against. Never set them in production.
    sns_test_origin: str | None = None
    sns_test_ca: Path | None = None

    # the bounce mailbox read by `process-bounces`
    bounce_maildir: Path | None = Field(default=None, description="A Maildir of bounces")
    bounce_imap_url: str | None = Field(
        default=None, description="imaps://user@host[:993][/FOLDER] of the bounce mailbox"
    )
    bounce_imap_password: SecretStr | None = None
    bounce_imap_password_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the IMAP password"
    )

    # `mailcast validate --dns`: the DNS server asked (default: the system's resolvers)
    dns_server: str | None = Field(
        default=None, description="DNS server(s) for `validate --dns`: HOST[:PORT], comma-separated"
    )
    dns_timeout: float = Field(default=5.0, gt=0, description="Seconds per DNS query")

    # Prefect's own setting (no MAILCAST_ prefix): is a Prefect server already running?
    prefect_api_url: str | None = Field(default=None, validation_alias="PREFECT_API_URL")

    # Fault injection for tests/test_chaos.py: hold each outcome batch's transaction open this
    # many seconds before committing, so a SIGKILL lands inside ledger commits. Never set it in
    # production.
    fault_commit_pause: float = Field(default=0.0, ge=0)

    def ledger_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    def journals(self) -> Path:
        return self.journal_dir or (self.data_dir / "journal")

    def outbox(self) -> Path:
        return self.outbox_dir or (self.data_dir / "outbox")


def get_settings() -> Settings:
    return Settings()
