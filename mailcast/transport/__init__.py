"""Transports carry finished messages: SMTP for real sends, an outbox folder for dry runs."""

from mailcast.transport.base import Reply, Transport

__all__ = ["Reply", "Transport"]
