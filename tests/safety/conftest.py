"""Adversarial patient-safety tests: attacks on every place where data of two sources
(or two records) meet. Fixtures shared by them."""

from __future__ import annotations

import pytest

from gateway import Settings
from gateway.reports import ReportVariants

# The inbound endpoint's fixtures (a Hong Kong gateway receiving NSCH's referrals).
from tests.inbound.conftest import client, hk_settings, pki, referral  # noqa: F401


@pytest.fixture(scope="session")
def variants(settings: Settings) -> ReportVariants:
    return ReportVariants(settings)
