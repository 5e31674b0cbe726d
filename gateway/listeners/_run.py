"""Running the listeners: ``gateway listen`` (MLLP alone, no API) and the listeners
``gateway serve`` starts beside the API, with the scheduled retention run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import Any

from ..config import Settings
from ..pipeline import Converter
from ..store import Store, open_store, retention
from .mllp import mllp_running

__all__ = ["DEFAULT_MLLP_PORT", "add_cli", "serve_gateway"]

log = logging.getLogger("gateway.listeners")
DEFAULT_MLLP_PORT = 2575  # the port IANA registered for MLLP
PRUNE_EVERY = 3600.0  # seconds between retention runs in `gateway serve`


def cmd_listen(args: argparse.Namespace, settings: Settings) -> int:
    port = args.port if args.port is not None else settings.mllp_port or DEFAULT_MLLP_PORT
    host = args.host or settings.mllp_host
    return asyncio.run(_listen(settings, host, port, not args.no_process))


async def _listen(settings: Settings, host: str, port: int, process: bool) -> int:
    store = open_store(settings)  # migrations first
    converter = Converter(settings) if process else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with mllp_running(settings, store, converter, host, port) as server:
            print(f"MLLP listener on {host}:{server.port}", file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        store.close()
    return 0


async def serve_gateway(config: Any, settings: Settings, server: Any = None) -> None:
    """The API (uvicorn, as ``config``, a ``uvicorn.Config`` that the caller made of the
    app; or ``server``, an object with ``serve()`` and ``should_exit`` such as the API
    worker processes' ``gateway.api.Supervisor``) and, when ``mllp_port`` is set, the MLLP
    listener, in one event loop; the store is migrated first and pruned every hour; the
    delivery worker and the outbound path run on threads beside them unless
    ``delivery_worker`` is false."""
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn re-raises SIGINT/SIGTERM once it has stopped, which would cut the
        # listeners' shutdown short (the writer commits what it holds): we take them.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    store = open_store(settings)
    server = server if server is not None else Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)
    pruning = asyncio.create_task(_prune_every(store, settings))
    delivery = None
    if settings.delivery_worker:  # converted messages → outbox → partners (gateway/delivery)
        from ..delivery import DeliveryService

        delivery = DeliveryService(settings, store).start()
        from ..console import watch_delivery  # its breakers on the console's dashboard

        watch_delivery(delivery.deliverer)
    try:
        if settings.mllp_port:
            async with mllp_running(settings, store, Converter(settings)) as mllp:
                print(
                    f"MLLP listener on {settings.mllp_host}:{mllp.port}",
                    file=sys.stderr,
                    flush=True,
                )
                await _serve_watched(server, store, settings)
        else:
            await _serve_watched(server, store, settings)
    finally:
        if delivery is not None:  # the worker finishes its record: no lease left behind
            await loop.run_in_executor(None, delivery.stop)
        pruning.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruning
        store.close()


async def _serve_watched(server: Any, store: Store, settings: Settings) -> None:
    """Serve with the alert watch (gateway/alerts) beside it, started once the listeners
    are up so a port still opening is not reported as a listener down."""
    from ..alerts import start_alert_watch

    stop_alerts = start_alert_watch(store, settings)
    try:
        await server.serve()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, stop_alerts)


async def _prune_every(store: Store, settings: Settings) -> None:
    periods = retention(settings)
    loop = asyncio.get_running_loop()
    while True:
        try:
            count = await loop.run_in_executor(None, store.prune, periods)
            if count:
                log.info("retention: pruned %d messages", count)
        except Exception:
            log.exception("retention run failed")
        await asyncio.sleep(PRUNE_EVERY)


def add_cli(sub: Any) -> None:
    """Add ``listen`` to the gateway command's subparsers."""
    listen = sub.add_parser("listen", help="receive HL7 v2 over MLLP into the store (no API)")
    listen.add_argument("--host", default=None, help="address (default: mllp_host)")
    listen.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port (default: mllp_port, else {DEFAULT_MLLP_PORT}; 0: any free port)",
    )
    listen.add_argument(
        "--no-process", action="store_true", help="store and acknowledge only; convert later"
    )
    listen.set_defaults(func=cmd_listen)
