"""OAuth2 credentials as Prefect blocks, for XOAUTH2 over SMTP (picked in the SMTP server
block's ``oauth2`` field) and for the Gmail API block. Secrets are stored encrypted and never
shown; the access tokens they yield live only in the worker's memory.

    MicrosoftOAuth2(tenant_id="contoso.onmicrosoft.com", client_id="…",
                    client_secret="…").save("m365")
    GoogleOAuth2(client_id="…", client_secret="…", refresh_token="…").save("gmail")
"""

from __future__ import annotations

from typing import Self

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from mailcast.transport.oauth2 import (
    GOOGLE_TOKEN_URI,
    MICROSOFT_AUTHORITY,
    GoogleToken,
    MicrosoftToken,
    TokenProvider,
    shared,
)


class MicrosoftOAuth2(Block):
    """Microsoft 365 (Entra ID) credentials: an app's client secret (client credentials), or
    a user's refresh token."""

    _block_type_name = "mailcast Microsoft 365 OAuth2"
    _block_type_slug = "mailcast-microsoft-365-oauth2"
    _description = (
        "OAuth2 for Microsoft 365 SMTP (XOAUTH2): an Entra app with SMTP.SendAsApp and its "
        "client secret, or a user's refresh token. Secrets are stored encrypted."
    )

    tenant_id: str = Field(
        default=...,
        description="Directory (tenant) ID of the Entra app: a GUID or contoso.onmicrosoft.com.",
    )
    client_id: str = Field(default=..., description="Application (client) ID of the Entra app.")
    client_secret: SecretStr | None = Field(
        default=None,
        description="Client secret of the app (client credentials: the app sends as the "
        "mailbox, permission SMTP.SendAsApp). Stored encrypted.",
    )
    refresh_token: SecretStr | None = Field(
        default=None,
        description="Instead of the app's own token: a refresh token of the mailbox's user "
        "(delegated permission SMTP.Send). Stored encrypted.",
    )
    authority_host: str = Field(
        default=MICROSOFT_AUTHORITY,
        description="Entra sign-in host; change it only for a national cloud.",
    )
    scope: str | None = Field(
        default=None,
        description="Leave empty: https://outlook.office365.com/.default for client "
        "credentials, https://outlook.office.com/SMTP.Send for a refresh token.",
    )

    @model_validator(mode="after")
    def _needs_a_secret(self) -> Self:
        if self.client_secret is None and self.refresh_token is None:
            raise ValueError("give the app's client_secret or a user's refresh_token")
        return self

    def token_provider(self) -> TokenProvider:
        """The worker process's provider for these credentials (one token cache, shared)."""
        return shared(
            MicrosoftToken(
                tenant_id=self.tenant_id,
                client_id=self.client_id,
                client_secret=self.client_secret,
                refresh_token=self.refresh_token,
                authority_host=self.authority_host,
                scope=self.scope or None,
            )
        )


class GoogleOAuth2(Block):
    """Google credentials: an OAuth client and a refresh token of the sending account."""

    _block_type_name = "mailcast Google OAuth2"
    _block_type_slug = "mailcast-google-oauth2"
    _description = (
        "OAuth2 for Gmail: an OAuth client and a refresh token (scope https://mail.google.com/ "
        "for SMTP, gmail.send for the Gmail API). Secrets are stored encrypted."
    )

    client_id: str = Field(default=..., description="OAuth client ID (Google Cloud console).")
    client_secret: SecretStr = Field(
        default=..., description="OAuth client secret. Stored encrypted."
    )
    refresh_token: SecretStr = Field(
        default=...,
        description="Refresh token of the sending account, granted with the "
        "https://mail.google.com/ scope (SMTP) or gmail.send (Gmail API). Stored encrypted.",
    )
    token_uri: str = Field(default=GOOGLE_TOKEN_URI, description="Google's token endpoint.")

    def token_provider(self) -> TokenProvider:
        """The worker process's provider for these credentials (one token cache, shared)."""
        return shared(
            GoogleToken(
                client_id=self.client_id,
                client_secret=self.client_secret,
                refresh_token=self.refresh_token,
                token_uri=self.token_uri,
            )
        )
