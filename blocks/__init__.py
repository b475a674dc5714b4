"""Prefect blocks for mailcast (`prefect block register -m blocks` registers them)."""

from mailcast.blocks.mailgun import MailgunAccount
from mailcast.blocks.mailjet import MailjetAccount
from mailcast.blocks.sendgrid import SendGridAccount
from mailcast.blocks.smtp import SmtpServer

__all__ = ["MailgunAccount", "MailjetAccount", "SendGridAccount", "SmtpServer"]
