"""The ``mailcast Mailgun account`` Prefect block: a Mailgun sending domain and its API key,
saved once, the key encrypted.

Create one in the Prefect UI (after ``prefect block register -m mailcast.blocks``) or in
Python::

    MailgunAccount(api_key="...", domain="mg.example.com", region="eu").save("mailgun")

The key is a domain sending key for that domain (or the account's API key); the region is the
one the domain was created in.
"""

from __future__ import annotations

from typing import Literal

from mailcast.blocks.api_account import ApiAccount
from pydantic import Field, SecretStr

from mailcast.transport.mailgun import MailgunConfig


class MailgunAccount(ApiAccount):
    """How to send through Mailgun's messages.mime API."""

    _block_type_name = "mailcast Mailgun account"
    _block_type_slug = "mailcast-mailgun-account"
    _description = "A Mailgun sending domain and API key for mailcast, the key stored encrypted."

    api_key: SecretStr = Field(
        default=..., description="A domain sending key for the domain, or the account's API key."
    )
    domain: str = Field(default=..., description="The sending domain, e.g. mg.example.com.")
    region: Literal["us", "eu"] = Field(
        default="us", description="The region the domain was created in (us or eu)."
    )

    def setup(self) -> MailgunConfig:
        """The transport registry's entry (``factory.KINDS``)."""
        return self.to_config()

    def to_config(self) -> MailgunConfig:
        return MailgunConfig.create(
            self.api_key,
            self.domain,
            region=self.region,
            base_url=self.base_url or None,
            timeout=self.timeout,
        )
