"""The cross-border transfer policy: every transfer decided by explicit rules (data in
``mappings/policy/`` and ``seeds/agreements.yaml``), explained in zh-Hans, zh-Hant and
en, minimised, labelled with its legal basis, and held — not lost — while consent is
missing. See docs/policy.md."""

from ._cli import add_cli, render_decision
from ._consent import (
    PURPOSE_SYSTEM,
    V3_ACT_REASON,
    ConsentRecord,
    MemoryConsents,
    PolicyError,
    parse_consent,
)
from ._data import Agreement, PolicyData, Profile
from ._engine import (
    LEGAL_BASIS_SYSTEM,
    OUTCOMES,
    Decision,
    MemoryCounters,
    Policy,
    RuleResult,
)
from ._key import policy_key
from ._minimise import PSEUDONYM_SYSTEM, Change, minimise, pseudonym
from ._records import (
    AUDIT_UNAVAILABLE,
    KEPT_IN_OUTBOX,
    STATE_OF,
    PolicyRecords,
    Released,
    UnsentRows,
    register_unsent_rows,
)

__all__ = [
    "AUDIT_UNAVAILABLE",
    "KEPT_IN_OUTBOX",
    "LEGAL_BASIS_SYSTEM",
    "OUTCOMES",
    "PSEUDONYM_SYSTEM",
    "PURPOSE_SYSTEM",
    "STATE_OF",
    "V3_ACT_REASON",
    "Agreement",
    "Change",
    "ConsentRecord",
    "Decision",
    "MemoryConsents",
    "MemoryCounters",
    "Policy",
    "PolicyData",
    "PolicyError",
    "PolicyRecords",
    "Profile",
    "Released",
    "RuleResult",
    "UnsentRows",
    "add_cli",
    "minimise",
    "parse_consent",
    "policy_key",
    "pseudonym",
    "register_unsent_rows",
    "render_decision",
]
