"""``gateway partners list|set|check``: the partner FHIR servers this gateway delivers
to, changing one (in ``$GATEWAY_HOME/partners.yaml``), and checking them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from ..config import Settings, not_private
from ..errors import ConfigError
from ..network import Network
from ._auth import missing_credentials
from ._check import check_partner, sent_types
from ._config import AUTH_TYPES, Partner, configured_partners, partner_key, set_partner
from ._split import WRITE_KINDS

__all__ = ["add_cli"]

# option → (key in the partner entry or its auth, in auth?)
_OPTIONS = {
    "url": ("base", False),
    "fhir_version": ("fhir_version", False),
    "max_entries": ("max_entries", False),
    "write": ("write", False),
    "concurrency": ("concurrency", False),
    "rate_limit": ("rate_limit", False),
    "ca_file": ("ca_file", False),
    "token_file": ("token_file", True),
    "token_env": ("token_env", True),
    "token_url": ("token_url", True),
    "client_id": ("client_id", True),
    "scope": ("scope", True),
    "key": ("key", True),
    "cert_file": ("cert_file", True),
    "key_file": ("key_file", True),
    "key_password_env": ("key_password_env", True),
}
_FILES = {"ca_file", "token_file", "cert_file", "key_file"}
# Secret files among them: refused when group or others may read them (config.not_private)
_SECRETS = {"token_file": "partner token file", "key_file": "mTLS client key file"}


def add_cli(sub: Any) -> None:
    """Add ``partners`` to the gateway command's subparsers."""
    partners = sub.add_parser("partners", help="partner FHIR servers: list, set, check")
    verbs = partners.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser("list", help="id, name, jurisdiction, endpoint and auth")
    listing.add_argument("--json", action="store_true", help="everything, as JSON")
    listing.set_defaults(func=cmd_list)

    setting = verbs.add_parser(
        "set",
        help="change a partner in $GATEWAY_HOME/partners.yaml (checked first)",
        description="Change or add a partner (an institution of the network) in "
        "$GATEWAY_HOME/partners.yaml, over the network's seeds/partners.yaml. --auth "
        "replaces the partner's auth; auth options without --auth change its current auth. "
        "Secrets are never given here: a token comes from --token-file or --token-env.",
    )
    setting.add_argument("id", help="institution key of the network (e.g. hkpmc)")
    setting.add_argument("--url", help="the partner's FHIR R4 base URL")
    setting.add_argument("--fhir-version", help="R4 (the only one accepted)")
    setting.add_argument("--auth", choices=AUTH_TYPES)
    setting.add_argument("--token-file", help="bearer: file whose first line is the token")
    setting.add_argument("--token-env", help="bearer: environment variable holding the token")
    setting.add_argument("--token-url", help="smart: token endpoint (default: discovered)")
    setting.add_argument("--client-id", help="smart: default the institution setting")
    setting.add_argument("--scope", help="smart: default 'system/*.read system/*.write'")
    setting.add_argument("--key", help="smart/mtls: key folder of signing_keys, or env:NAME")
    setting.add_argument("--cert-file", help="mtls: client certificate chain (PEM)")
    setting.add_argument("--key-file", help="mtls: its private key (PEM)")
    setting.add_argument("--key-password-env", help="mtls: variable with the key's password")
    setting.add_argument("--ca-file", help="CA certificates for the partner's TLS server")
    setting.add_argument("--max-entries", type=int, help="most entries per request, 0 = no limit")
    setting.add_argument("--write", choices=WRITE_KINDS)
    setting.add_argument("--concurrency", type=int, help="connections at most (default 4)")
    setting.add_argument("--rate-limit", type=float, help="requests per second, 0 = no limit")
    setting.set_defaults(func=cmd_set)

    check = verbs.add_parser(
        "check",
        help="reachability, auth, CapabilityStatement (exit 1 when one fails)",
    )
    check.add_argument("id", nargs="?", help="one partner (default: all)")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)


def _json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def describe(partner: Partner) -> dict[str, Any]:
    """A partner as ``partners list --json`` shows it."""
    return {
        "id": partner.key,
        "name": partner.name,
        "jurisdiction": partner.jurisdiction,
        "endpoint": partner.base,
        "fhir_version": partner.fhir_version,
        "auth": partner.auth.summary(),
        "write": partner.write,
        "max_entries": partner.max_entries,
        "report_variant": partner.report_variant,
        "concurrency": partner.concurrency,
        "rate_limit": partner.rate_limit,
        "ca_file": str(partner.ca_file) if partner.ca_file else None,
    }


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    partners = configured_partners(settings)
    if args.json:
        _json([{**describe(p), "missing": missing_credentials(p)} for p in partners.values()])
        return 0
    for p in partners.values():
        print(f"{p.key:<8} {p.jurisdiction or '-':<6} {p.auth.type:<6} {p.base}  {p.name or ''}")
        for what in missing_credentials(p):  # a hand edit naming a file that is not there
            print(f"         MISSING {what}")
    return 0


def cmd_set(args: argparse.Namespace, settings: Settings) -> int:
    changes: dict[str, Any] = {}
    auth: dict[str, Any] = {"type": args.auth} if args.auth else {}
    for option, (name, in_auth) in _OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if option in _FILES:
            value = str(Path(value).expanduser().resolve())
            if not Path(value).is_file():
                raise ConfigError("partner-auth", f"--{option.replace('_', '-')}: no file {value}")
            mode = Path(value).stat().st_mode
            if option in _SECRETS and (problem := not_private(Path(value), mode, _SECRETS[option])):
                raise ConfigError("partner-auth", f"--{option.replace('_', '-')}: {problem}")
        (auth if in_auth else changes)[name] = value
    if auth:
        changes["auth"] = auth
    if not changes:
        raise ConfigError("partners", "partners set: nothing to change (give --url, --auth, ...)")
    # the institution's key: `set HKPMC` must change hkpmc, not add a second entry
    inst = Network.load(settings.network).find(args.id)
    partner = set_partner(settings, inst.key if inst else args.id, changes)
    where = settings.home / "partners.yaml"
    print(f"{partner.key}: {partner.base} (auth {partner.auth.type}) written to {where}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    partners = configured_partners(settings)
    if args.id is not None:  # its key or facility code, any case (HKPMC)
        key = partner_key(args.id, partners, Network.load(settings.network), "partners check")
        partners = {key: partners[key]}
    types = sent_types(settings)
    reports = [check_partner(p, settings, types) for p in partners.values()]
    if args.json:
        _json([r.to_json() for r in reports])
    else:
        for report in reports:
            print(report.line())
    return 0 if all(r.ok for r in reports) else 1
