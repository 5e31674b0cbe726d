"""A peer converter running in its own virtual environment, driven over a pipe: one
JSON request per line in, one JSON answer per line out (bench/peer_*.py are the other
end). Peers live in their own venvs because their pins clash with the gateway's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import IO, Any


class PeerWorker:
    def __init__(self, python: Path, script: Path, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=script.parent,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped (see its error output above)")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name} worker: {answer['error']}")
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def close(self) -> None:
        stdin, _ = self._pipes()
        stdin.close()
        self.proc.wait(timeout=30)
