"""The signing stage's error: codes ``signing.*`` (gateway/errors.yaml)."""

from __future__ import annotations

from ..errors import GatewayError

__all__ = ["SigningError"]


class SigningError(GatewayError):
    """A key, certificate, signature or signed document the gateway cannot use or trust.
    Messages name the signature (index, signer) and the check; never key material."""

    family = "signing"
