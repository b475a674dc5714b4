"""The ``mailcast Amazon SES`` Prefect block: SES v2 settings saved once, the secret key
encrypted.

Create one in the Prefect UI (after ``prefect block register -m mailcast.blocks``) or in Python::

    AmazonSes(region="eu-west-1", access_key_id="AKIA...", secret_access_key="...").save("news")

and use it with ``mailcast send --transport-block news`` (or ``ses/news``).
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from mailcast.transport.ses import SesSetup


class AmazonSes(Block):
    """How to send through Amazon SES (the v2 API, raw MIME messages)."""

    _block_type_name = "mailcast Amazon SES"
    _block_type_slug = "mailcast-amazon-ses"
    _description = (
        "Amazon SES settings for mailcast: region, access key (the secret stored encrypted), "
        "optional configuration set and endpoint."
    )

    region: str = Field(default=..., description="The SES region, e.g. eu-west-1.")
    access_key_id: str | None = Field(
        default=None,
        description="The IAM access key id (allowed ses:SendRawEmail / ses:SendEmail). Leave "
        "empty to use the worker's AWS credentials (instance role, AWS_* environment, profile).",
    )
    secret_access_key: SecretStr | None = Field(
        default=None, description="The IAM secret access key (stored encrypted, never shown)."
    )
    configuration_set: str | None = Field(
        default=None,
        description="An SES configuration set for the messages (event publishing to SNS for "
        "bounces and complaints, a dedicated IP pool …).",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Another endpoint than AWS's own (a VPC endpoint, a test server).",
    )
    timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for SES's answer to one message."
    )

    def setup(self) -> SesSetup:
        """The transport registry's entry (``factory.KINDS``)."""
        return SesSetup(
            region=self.region,
            access_key_id=self.access_key_id or None,
            secret_access_key=self.secret_access_key,
            configuration_set=self.configuration_set or None,
            endpoint_url=self.endpoint_url or None,
            timeout=self.timeout,
        )
