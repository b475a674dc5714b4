"""One typed Settings object. Every field can be set from the environment with the MAILCAST_
prefix (MAILCAST_DATABASE_URL, MAILCAST_SMTP_URL, MAILCAST_SMTP_PASSWORD, ...). Secrets live
here only as SecretStr read from the environment, or in Prefect blocks."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("mailcast", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILCAST_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="Ledger database (default: SQLite file in the data dir)"
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    outbox_dir: Path | None = Field(default=None, description="Where dry runs write .eml files")
    smtp_url: str | None = Field(default=None, description="smtp://user@host:port?security=...")
    smtp_password: SecretStr | None = None
    smtp_block: str | None = Field(default=None, description="Name of a saved SMTP server block")

    def ledger_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    def outbox(self) -> Path:
        return self.outbox_dir or (self.data_dir / "outbox")


def get_settings() -> Settings:
    return Settings()
