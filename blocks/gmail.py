"""The ``mailcast Gmail API`` Prefect block: send through the Gmail API with a Google OAuth2
block's credentials (``mailcast send --transport-block NAME``)."""

from __future__ import annotations

from mailcast.blocks.oauth2 import GoogleOAuth2
from prefect.blocks.core import Block
from pydantic import Field

from mailcast.transport.api_config import ApiEndpoint
from mailcast.transport.gmail import GMAIL_API, GmailConfig


class GmailApi(Block):
    """A Gmail account to send from through the Gmail API (HTTPS, no SMTP)."""

    _block_type_name = "mailcast Gmail API"
    _block_type_slug = "mailcast-gmail-api"
    _description = (
        "Send through the Gmail API (users.messages.send) as the account of a Google OAuth2 "
        "block (scope gmail.send). For accounts or networks that cannot use SMTP."
    )

    credentials: GoogleOAuth2 = Field(
        default=...,
        title="Google OAuth2 credentials",
        description="A Google OAuth2 block whose refresh token has the gmail.send scope.",
    )
    user_id: str = Field(
        default="me",
        description="The sending account: me (the account of the refresh token) or its address.",
    )
    base_url: str = Field(default=GMAIL_API, description="The Gmail API's address.")
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for the API to answer one message."
    )

    def to_config(self) -> GmailConfig:
        return GmailConfig(
            oauth2=self.credentials.token_provider(),
            endpoint=ApiEndpoint("gmail", self.base_url, timeout=self.timeout),
            user_id=self.user_id,
        )

    def setup(self) -> GmailConfig:
        """The transport registry's entry (``factory.KINDS``)."""
        return self.to_config()
