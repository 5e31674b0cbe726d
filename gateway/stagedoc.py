"""``python -m gateway.stagedoc [docs/architecture.md]``: write the stage list of
``gateway.pipeline.STAGES`` into the architecture page, between its markers."""

from __future__ import annotations

import sys
from pathlib import Path

from .pipeline import write_stage_doc

__all__ = ["main"]


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path("docs/architecture.md")
    print(f"{target}: {'updated' if write_stage_doc(target) else 'up to date'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
