"""What the HTTP API provider blocks share: another base URL and the answer timeout."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field


class ApiAccount(Block):
    """Base of the SendGrid, Mailgun and Mailjet blocks (not a block type of its own)."""

    base_url: str | None = Field(
        default=None, description="Another API base URL (a proxy, a test server)."
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for an answer.")
