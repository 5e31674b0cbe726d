"""The inbound stage's one error family (``inbound.*``, gateway/errors.yaml)."""

from __future__ import annotations

from ..errors import GatewayError

__all__ = ["InboundError"]


class InboundError(GatewayError):
    """A request the inbound endpoint refuses, or a referral action it cannot take.
    Codes are given whole (``inbound.unauthorized``) so the registry test finds them."""

    family = "inbound"
