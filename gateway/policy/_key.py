"""The pseudonym key: a secret from ``GATEWAY_POLICY_KEY`` (hex, at least 32 bytes), else
the file ``policy_key_file``, else ``$GATEWAY_HOME/secrets/policy-key`` — made (random,
mode 0600) on first use. Never in the repository, never printed by ``gateway config``.
Whoever holds it can re-identify a pseudonym (``gateway policy pseudonym``): keep it
with the sender, and the same across its gateways."""

from __future__ import annotations

import os
import secrets

from ..config import Settings, not_private, private_folder
from ..errors import ConfigError

__all__ = ["KEY_ENV", "policy_key"]

KEY_ENV = "GATEWAY_POLICY_KEY"
MIN_BYTES = 32


def policy_key(settings: Settings, env: dict[str, str] | None = None) -> bytes:
    env = dict(os.environ if env is None else env)
    if env.get(KEY_ENV):
        return _decode(env[KEY_ENV].strip(), KEY_ENV)
    path = settings.policy_key_file or settings.secrets_dir / "policy-key"
    if not path.exists() and settings.policy_key_file is None:
        private_folder(path.parent)  # $GATEWAY_HOME/secrets: 0700
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(MIN_BYTES) + "\n")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "policy-key", f"{path}: the pseudonym key cannot be read ({type(exc).__name__})"
        ) from None
    problem = not_private(path, mode, "pseudonym key file")
    if problem is not None:
        raise ConfigError("policy-key", problem)
    return _decode(text, str(path))


def _decode(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError("policy-key", f"{where}: the pseudonym key must be hex") from None
    if len(key) < MIN_BYTES:
        raise ConfigError(
            "policy-key", f"{where}: the pseudonym key must have at least {MIN_BYTES} bytes"
        )
    return key
