"""Prefect blocks for mailcast (`prefect block register -m blocks` registers them)."""

from blocks.smtp import SmtpServer

__all__ = ["SmtpServer"]
