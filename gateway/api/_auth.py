"""Bearer tokens for the API: read from a file (one per line), never from the repo.

With no ``api_token_file`` configured, the gateway keeps its tokens in
``$GATEWAY_HOME/secrets/api-tokens`` and creates that file with one random token
(mode 0600) the first time the API starts, so a fresh installation is usable and
never open.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError

__all__ = ["TokenSet", "load_tokens"]


class TokenSet:
    def __init__(self, tokens: list[str], source: Path | None = None) -> None:
        if not tokens:
            raise ConfigError("no-tokens", f"no API tokens in {source or 'configuration'}")
        self._tokens = [t.encode() for t in tokens]
        self.source = source

    def check(self, presented: str) -> bool:
        given = presented.encode()
        # compare_digest on every token: timing does not reveal which one matched
        return any([hmac.compare_digest(given, t) for t in self._tokens])


def load_tokens(settings: Settings) -> TokenSet:
    path = settings.effective_token_file
    if not path.exists():
        if settings.api_token_file is not None:
            raise ConfigError("no-tokens", f"api_token_file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("no-tokens", f"cannot read {path}: {exc.strerror}") from None
    tokens = [ln.strip() for ln in lines]
    return TokenSet([t for t in tokens if t and not t.startswith("#")], path)
