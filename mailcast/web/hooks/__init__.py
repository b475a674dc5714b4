"""Provider event webhooks on ``mailcast serve``, under ``/hooks/``: ``/hooks/ses`` (SES through
SNS), ``/hooks/sendgrid``, ``/hooks/mailgun``, ``/hooks/mailjet``. Each provider's events become
events on their deliveries and feed the suppression list like DSNs do
(:mod:`mailcast.engagement.provider_events`); posts that are not genuine are refused and
recorded nowhere (:mod:`mailcast.web.hooks.common`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from mailcast.web.hooks.common import HookConfig, Hooks
from mailcast.web.hooks.mailgun import Mailgun
from mailcast.web.hooks.mailjet import Mailjet
from mailcast.web.hooks.sendgrid import SendGrid
from mailcast.web.hooks.ses import Ses

__all__ = ["HookConfig", "Hooks", "routes"]


def routes(engine: Any, config: HookConfig | None = None) -> list[BaseRoute]:
    """The ``/hooks`` routes; ``config`` defaults to the settings' (MAILCAST_*_WEBHOOK_*,
    MAILCAST_SES_TOPIC_ARNS, MAILCAST_WEBHOOK_SECRETS_BLOCK). A bad key raises TrackingError."""
    from mailcast.settings import get_settings

    hooks = Hooks(engine, config or HookConfig.from_settings(get_settings()))
    endpoints: dict[str, Callable[[Request], Awaitable[Response]]] = {
        "ses": Ses(hooks).handle,
        "sendgrid": SendGrid(hooks).handle,
        "mailgun": Mailgun(hooks).handle,
        "mailjet": Mailjet(hooks).handle,
    }
    return [
        Mount(
            "/hooks",
            routes=[
                Route(f"/{name}", endpoint, methods=["POST"])
                for name, endpoint in endpoints.items()
            ],
        )
    ]
