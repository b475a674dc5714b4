"""Prefect blocks for mailcast (`prefect block register -m blocks` registers them)."""

from mailcast.blocks.smtp import SmtpServer

__all__ = ["SmtpServer"]
