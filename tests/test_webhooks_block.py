"""Webhook secrets from a Prefect Secret block (MAILCAST_WEBHOOK_SECRETS_BLOCK): a JSON object
with the providers' keys, read once when ``mailcast serve`` builds its app; a missing block is
one line."""

from __future__ import annotations

import pytest

from mailcast.errors import TrackingError
from mailcast.settings import get_settings
from mailcast.web.hooks.common import HookConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOPIC = "arn:aws:sns:eu-west-1:123456789012:from-block"


def test_webhook_secrets_from_a_secret_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    Secret(
        value={
            "mailgun_webhook_key": "mg-key-from-block",
            "mailjet_webhook_auth": "mj:pw",
            "ses_topic_arns": [TOPIC],
        }
    ).save("webhook-test-secrets", overwrite=True)
    monkeypatch.setenv("MAILCAST_WEBHOOK_SECRETS_BLOCK", "webhook-test-secrets")
    monkeypatch.setenv("MAILCAST_MAILJET_WEBHOOK_AUTH", "env:wins")  # the environment first
    config = HookConfig.from_settings(get_settings())
    assert config.mailgun_key == "mg-key-from-block"
    assert config.mailjet_auth == "env:wins"
    assert config.ses_topics == {TOPIC}
    assert config.sendgrid_key is None
    assert "mg-key-from-block" not in repr(config)

    monkeypatch.setenv("MAILCAST_WEBHOOK_SECRETS_BLOCK", "no-such-block")
    with pytest.raises(TrackingError) as missing:
        HookConfig.from_settings(get_settings())
    assert missing.value.where == "secret block 'no-such-block'"
    assert "\n" not in str(missing.value)
