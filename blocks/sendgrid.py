"""The ``mailcast SendGrid account`` Prefect block: a SendGrid API key, saved once, encrypted.

Create one in the Prefect UI (after ``prefect block register -m mailcast.blocks``) or in
Python::

    SendGridAccount(api_key="SG....").save("sendgrid")

The key needs the "Mail Send" permission; the campaign's From address must be a verified sender
or on an authenticated domain.
"""

from __future__ import annotations

from typing import Literal

from mailcast.blocks.api_account import ApiAccount
from pydantic import Field, SecretStr

from mailcast.transport.sendgrid import SendGridConfig


class SendGridAccount(ApiAccount):
    """How to send through SendGrid's v3 Mail Send API."""

    _block_type_name = "mailcast SendGrid account"
    _block_type_slug = "mailcast-sendgrid-account"
    _description = "A SendGrid API key (Mail Send permission) for mailcast, stored encrypted."

    api_key: SecretStr = Field(
        default=..., description="The API key (SG....), with the Mail Send permission."
    )
    region: Literal["global", "eu"] = Field(
        default="global",
        description="global: api.sendgrid.com; eu: api.eu.sendgrid.com (EU regional subusers).",
    )

    def setup(self) -> SendGridConfig:
        """The transport registry's entry (``factory.KINDS``)."""
        return self.to_config()

    def to_config(self) -> SendGridConfig:
        return SendGridConfig.create(
            self.api_key, region=self.region, base_url=self.base_url or None, timeout=self.timeout
        )
