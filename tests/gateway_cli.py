"""Run the ``gateway`` command as a user does: a subprocess, real exit codes and streams."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, home: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )
