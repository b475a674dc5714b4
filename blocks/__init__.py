"""Prefect blocks for mailcast (`prefect block register -m blocks` registers them)."""

from mailcast.blocks.gmail import GmailApi
from mailcast.blocks.mailgun import MailgunAccount
from mailcast.blocks.mailjet import MailjetAccount
from mailcast.blocks.oauth2 import GoogleOAuth2, MicrosoftOAuth2
from mailcast.blocks.sendgrid import SendGridAccount
from mailcast.blocks.ses import AmazonSes
from mailcast.blocks.smtp import SmtpServer

__all__ = [
    "AmazonSes",
    "GmailApi",
    "GoogleOAuth2",
    "MailgunAccount",
    "MailjetAccount",
    "MicrosoftOAuth2",
    "SendGridAccount",
    "SmtpServer",
]
