"""``gateway work [--workers N]``: delivery worker processes, without the API.

A supervisor starts N child processes (``gateway work --child K``, the same program),
each running what ``gateway serve`` runs beside its API: the outbound path and the
delivery worker (:class:`DeliveryService`). They share the store: on PostgreSQL each
claims its own batch of rows (``FOR UPDATE SKIP LOCKED``), on SQLite by the lease's
compare-and-set; a patient's records still go in order.

- A child that dies (killed, crashed) is started again, after a pause that doubles
  while it keeps dying young. Its rows are taken up by the others when their leases run
  out; a row it left ``sending`` is asked about, never sent blindly again.
- SIGTERM or SIGINT to the supervisor: passed to every child, which finishes the record
  it is sending (or, past ``delivery_lease_seconds``, is killed: its row is asked about
  later), lets go of the rows it claimed but did not begin, closes its connections and
  exits; then the supervisor exits 0. A child also stops when its supervisor is gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..store import open_store
from ._service import DeliveryService

__all__ = ["Supervisor", "add_cli", "run_worker"]

log = logging.getLogger("gateway.delivery")
RESTART_DELAY = 1.0  # seconds before a dead child starts again ...
RESTART_DELAY_CAP = 30.0  # ... doubling up to this while it keeps dying young
YOUNG = 5.0  # a child that dies sooner than this after its start died young (a crash loop)
CHECK_EVERY = 0.2  # seconds between the supervisor's looks at its children


def add_cli(sub: Any) -> None:
    work = sub.add_parser(
        "work",
        help="run delivery worker processes (no API)",
        description="Deliver the outbox to partners in N worker processes, each with the "
        "outbound path (routes, policy, signing) as `gateway serve` runs it; a dead worker "
        "is restarted; SIGTERM/SIGINT stop them gracefully. See docs/delivery.md.",
    )
    work.add_argument("--workers", type=_count, default=1, help="worker processes (default 1)")
    work.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    work.set_defaults(func=cmd_work)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def cmd_work(args: argparse.Namespace, settings: Settings) -> int:
    if args.child is not None:
        return run_worker(settings, args.child)
    return Supervisor(settings, args.workers).run()


# -- one worker process ----------------------------------------------------------------
def run_worker(settings: Settings, number: int) -> int:
    """A child: the delivery service until SIGTERM/SIGINT or its supervisor is gone."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = os.getppid()
    store = open_store(settings)
    service = DeliveryService(settings, store).start()
    log.info("delivery worker %d started (pid %d)", number, os.getpid())
    try:
        while not stop.wait(1.0):
            if os.getppid() != supervisor:  # orphaned: nobody would restart or stop us
                log.warning("delivery worker %d: its supervisor is gone; stopping", number)
                break
    finally:
        # The worker thread finishes the record it holds, then lets go of its claims.
        service.stop(timeout=settings.delivery_lease_seconds)
        store.close()
    log.info("delivery worker %d stopped", number)
    return 0


# -- the supervisor -----------------------------------------------------------------
@dataclass
class _Child:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY
    restart_at: float | None = None  # monotonic time of the next start, when dead


class Supervisor:
    """Starts ``workers`` children and keeps them running until told to stop."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.children = [_Child(n) for n in range(1, workers + 1)]
        self.stop = threading.Event()

    def command(self, number: int) -> list[str]:
        home = str(self.settings.home)
        return [sys.executable, "-m", "gateway", "--home", home, "work", "--child", str(number)]

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        for child in self.children:
            self._start(child)
        pids = ", ".join(str(c.process.pid) for c in self.children if c.process)
        print(
            f"gateway work: {len(self.children)} delivery worker(s), pids {pids} "
            f"(GATEWAY_HOME={self.settings.home})",
            file=sys.stderr,
            flush=True,
        )
        while not self.stop.wait(CHECK_EVERY):
            self._watch()
        self._shutdown(self.settings.delivery_lease_seconds)
        return 0

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen(self.command(child.number))
        child.started, child.restart_at = time.monotonic(), None

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                lived = now - child.started
                child.delay = (
                    min(child.delay * 2, RESTART_DELAY_CAP) if lived < YOUNG else RESTART_DELAY
                )
                log.warning(
                    "delivery worker %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                    child.number,
                    child.process.pid,
                    child.process.returncode,
                    lived,
                    child.delay,
                )
                child.process, child.restart_at = None, now + child.delay
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._start(child)

    def _shutdown(self, timeout: float) -> None:
        """SIGTERM to every child; those still running after ``timeout`` are killed
        (a row one leaves sending is asked about when its lease runs out)."""
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("delivery worker pid %d did not stop in time: killed", process.pid)
                process.kill()
                process.wait()
