"""The ``mailcast Mailjet account`` Prefect block: a Mailjet API key and secret key, saved once,
encrypted.

Create one in the Prefect UI (after ``prefect block register -m mailcast.blocks``) or in
Python::

    MailjetAccount(api_key="...", secret_key="...").save("mailjet")

The campaign's From address must be a validated sender (or on a validated domain) of the
account. ``sandbox`` makes Mailjet check every message and deliver none.
"""

from __future__ import annotations

from mailcast.blocks.api_account import ApiAccount
from pydantic import Field, SecretStr

from mailcast.transport.mailjet import MailjetConfig


class MailjetAccount(ApiAccount):
    """How to send through Mailjet's Send API v3.1."""

    _block_type_name = "mailcast Mailjet account"
    _block_type_slug = "mailcast-mailjet-account"
    _description = "A Mailjet API key and secret key for mailcast, stored encrypted."

    api_key: SecretStr = Field(default=..., description="The API key (the public one).")
    secret_key: SecretStr = Field(default=..., description="The secret key (the private one).")
    sandbox: bool = Field(
        default=False, description="Sandbox mode: Mailjet checks each message, delivers none."
    )

    def setup(self) -> MailjetConfig:
        """The transport registry's entry (``factory.KINDS``)."""
        return self.to_config()

    def to_config(self) -> MailjetConfig:
        return MailjetConfig.create(
            self.api_key,
            self.secret_key,
            sandbox=self.sandbox,
            base_url=self.base_url or None,
            timeout=self.timeout,
        )
