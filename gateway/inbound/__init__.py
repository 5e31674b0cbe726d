"""The inbound stage (issue #13 items 5 and 6; docs/inbound.md): partner
authentication (static bearer tokens, SMART Backend Services, mTLS at a proxy),
``POST /fhir`` of transaction Bundles from partners — checked to be in the partner's
own name, signatures verified, the inbound policy run, stored idempotently — the
stored resources read and searched by local systems, and referral status: a Task per
referral received, accepted, rejected or completed here and sent back to the sender;
a partner's batch of GETs on ``POST /fhir`` answered as those GETs (``_readbatch.py``)."""

from ._apply import Applied, apply_bundle
from ._auth import (
    ASSERTION_TYPE,
    SIGNING_ALGS,
    Authenticator,
    PartnerAuth,
    TokenError,
    certificate_institution,
    load_partner_tokens,
)
from ._cli import add_cli
from ._errors import InboundError
from ._readbatch import (
    MAX_READ_BYTES,
    MAX_READ_ENTRIES,
    MAX_READ_RESOURCES,
    Read,
    parse_read,
    read_requests,
)
from ._receive import Answer, Inbound
from ._referrals import ACTIONS, REFERRAL_CATEGORY, Referral, Referrals, is_referral
from ._resources import (
    ID_PATTERN,
    TYPE_PATTERN,
    Resources,
    Search,
    Stored,
    parameter_name,
    parse_last_updated,
    patient_of,
)
from ._schema import bundles, identifiers, jtis, resources, tokens
from ._trust import TrustCache

__all__ = [
    "ACTIONS",
    "ASSERTION_TYPE",
    "ID_PATTERN",
    "MAX_READ_BYTES",
    "MAX_READ_ENTRIES",
    "MAX_READ_RESOURCES",
    "REFERRAL_CATEGORY",
    "SIGNING_ALGS",
    "TYPE_PATTERN",
    "Answer",
    "Applied",
    "Authenticator",
    "Inbound",
    "InboundError",
    "PartnerAuth",
    "Read",
    "Referral",
    "Referrals",
    "Resources",
    "Search",
    "Stored",
    "TokenError",
    "TrustCache",
    "add_cli",
    "apply_bundle",
    "bundles",
    "certificate_institution",
    "identifiers",
    "is_referral",
    "jtis",
    "load_partner_tokens",
    "parameter_name",
    "parse_last_updated",
    "parse_read",
    "patient_of",
    "read_requests",
    "resources",
    "tokens",
]
