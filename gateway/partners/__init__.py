"""Partner FHIR servers (docs/partners.md): their configuration (the network's
``seeds/partners.yaml`` under ``$GATEWAY_HOME/partners.yaml``), the pooled httpx client
that authenticates to each (none, bearer, SMART Backend Services, mutual TLS), fitting
a Bundle to what each accepts, the partners of a running gateway read again when their
files change (:class:`PartnersWatch`), and ``gateway partners list|set|check``.

    partners = configured_partners(settings)
    with partner_client(partners["hkpmc"], settings) as client:   # auth attached
        for part in partners["hkpmc"].split(bundle):
            client.post("", json=part)
"""

from ._auth import (
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    BearerAuth,
    PartnerAuthError,
    SmartAuth,
    Throttle,
    Timeouts,
    client_assertion,
    credential_files,
    exposed_credentials,
    gateway_signer,
    jwt_algorithm,
    missing_credentials,
    partner_auth,
    partner_client,
    tls_context,
)
from ._check import Check, PartnerReport, check_partner, sent_types
from ._cli import add_cli
from ._config import (
    AUTH_TYPES,
    DEFAULT_SCOPE,
    Auth,
    Partner,
    configured_partners,
    load_partners,
    override_file,
    partner_key,
    seeds_file,
    set_partner,
)
from ._naming import names_institution
from ._split import WRITE_KINDS, split_bundle
from ._watch import PartnersWatch, partner_files

__all__ = [
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "AUTH_TYPES",
    "DEFAULT_SCOPE",
    "WRITE_KINDS",
    "Auth",
    "BearerAuth",
    "Check",
    "Partner",
    "PartnerAuthError",
    "PartnerReport",
    "PartnersWatch",
    "SmartAuth",
    "Throttle",
    "Timeouts",
    "add_cli",
    "check_partner",
    "client_assertion",
    "configured_partners",
    "credential_files",
    "exposed_credentials",
    "gateway_signer",
    "jwt_algorithm",
    "load_partners",
    "missing_credentials",
    "names_institution",
    "override_file",
    "partner_auth",
    "partner_client",
    "partner_files",
    "partner_key",
    "seeds_file",
    "sent_types",
    "set_partner",
    "split_bundle",
    "tls_context",
]
