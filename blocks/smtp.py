"""The ``mailcast SMTP server`` Prefect block: SMTP settings saved once, password encrypted.

Create one in the Prefect UI (after ``prefect block register -m blocks``) or in Python::

    SmtpServer(host="smtp.example.org", username="news", password="...").save("newsletter")

and use it with ``mailcast send --smtp-block newsletter``.
"""

from __future__ import annotations

from typing import Literal, Self

from mailcast.blocks.oauth2 import GoogleOAuth2, MicrosoftOAuth2
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from mailcast.transport.smtp import SmtpConfig


class SmtpServer(Block):
    """How to reach an SMTP server (a mail provider's submission server, or a local relay)."""

    _block_type_name = "mailcast SMTP server"
    _block_type_slug = "mailcast-smtp-server"
    _description = (
        "SMTP server settings for mailcast: host, port, TLS mode and login. "
        "The password is stored encrypted."
    )

    host: str = Field(
        default=...,
        description="Host name or IP address of the SMTP server, e.g. smtp.example.org.",
    )
    port: int = Field(
        default=587,
        ge=1,
        le=65535,
        description="TCP port: 587 for submission with STARTTLS, 465 for implicit TLS, "
        "25 for a relay.",
    )
    security: Literal["none", "starttls", "ssl"] = Field(
        default="starttls",
        description="starttls: upgrade with STARTTLS (port 587); ssl: TLS from the first byte "
        "(port 465); none: no encryption (local relays and test servers only).",
    )
    username: str | None = Field(
        default=None,
        description="Login name for SMTP AUTH (with OAuth2: the mailbox address); leave empty "
        "for a server that needs no login.",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Password for SMTP AUTH (stored encrypted, never shown).",
    )
    oauth2: MicrosoftOAuth2 | GoogleOAuth2 | None = Field(
        default=None,
        title="OAuth2 credentials",
        description="Log in with OAuth2 (XOAUTH2) instead of the password: a Microsoft 365 or "
        "Google OAuth2 block. Microsoft 365 needs it (Basic authentication ends in 2026).",
    )
    timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds to wait for the server on each step before giving up.",
    )
    verify_tls: bool = Field(
        default=True,
        description="Check the server's TLS certificate. Turn off only for test servers with "
        "self-signed certificates.",
    )

    @model_validator(mode="after")
    def _oauth2_needs_the_mailbox(self) -> Self:
        if self.oauth2 is not None and not self.username:
            raise ValueError("with oauth2, username must be the mailbox address to send as")
        return self

    def setup(self) -> SmtpConfig:
        """The transport registry's entry (``factory.KINDS``)."""
        return self.to_config()

    def to_config(self) -> SmtpConfig:
        """The settings as mailcast's transport configuration."""
        return SmtpConfig(
            host=self.host,
            port=self.port,
            security=self.security,
            username=self.username or None,
            password=self.password,
            timeout=self.timeout,
            verify_tls=self.verify_tls,
            oauth2=self.oauth2.token_provider() if self.oauth2 is not None else None,
        )
