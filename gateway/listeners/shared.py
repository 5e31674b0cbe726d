"""What every listener shares: one writer thread that commits what arrives in groups
(one transaction and one fsync for all that came in meanwhile: SQLite has one writer,
and an ACK must wait for the commit), one worker that converts stored messages
after they were acknowledged (an ACK means "stored", not "converted"), and the TLS
side of the listeners that authenticate their clients by certificate (MLLP, DICOM)."""

from __future__ import annotations

import asyncio
import logging
import queue
import ssl
import sys
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..config import SECRET_FILES, Settings, exposed
from ..errors import ConfigError
from ..network import Institution, Network, certificate_institution
from ..pipeline import Converter
from ..processing import AuditHook, process_message
from ..store import Incoming, Receipt, Store

__all__ = [
    "ClientCertificate",
    "Processor",
    "StoreWriter",
    "client_certificate",
    "server_tls_context",
]

log = logging.getLogger("gateway.listeners")
_STOP = object()


class StoreWriter:
    """Commits received messages from one thread, in groups of up to ``batch``.

    ``receive`` (async) returns the Receipt once the message's row is committed, or
    raises what the store raised: the caller then answers with an error, never an ACK.
    """

    def __init__(self, store: Store, batch: int = 256) -> None:
        self.store = store
        self.batch = batch
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, item: Incoming) -> Future[Receipt]:
        future: Future[Receipt] = Future()
        self._queue.put((item, future))
        return future

    async def receive(self, item: Incoming) -> Receipt:
        return await asyncio.wrap_future(self.submit(item))

    def close(self) -> None:
        """Commit what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            group = [first]
            while len(group) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._queue.put(_STOP)  # commit this group first, then stop
                    break
                group.append(more)
            self._commit(group)  # type: ignore[arg-type]

    def _commit(self, group: list[tuple[Incoming, Future[Receipt]]]) -> None:
        try:
            receipts = self.store.receive_many([item for item, _ in group])
        except Exception:
            if len(group) > 1:  # one bad message must not fail the others: one at a time
                for one in group:
                    self._commit([one])
                return
            log.exception("a received message could not be stored")
            _settle(group[0][1], error=sys.exc_info()[1] or RuntimeError("store failed"))
            return
        for (_, future), receipt in zip(group, receipts, strict=True):
            _settle(future, receipt)


def _settle(
    future: Future[Receipt], receipt: Receipt | None = None, error: BaseException | None = None
) -> None:
    """Give the waiting connection its answer. A connection cancelled meanwhile (the
    listener stopping) cancelled its future: nobody waits, the commit stands (the sender
    had no ACK and resends, which the store recognises), and the writer goes on."""
    try:
        if error is not None:
            future.set_exception(error)
        elif receipt is not None:
            future.set_result(receipt)
    except InvalidStateError:
        pass


class Processor:
    """Converts stored messages on a worker thread, in the order they were submitted.
    ``start`` first queues the messages still ``received`` (a listener restarted after
    a crash converts what it had acknowledged)."""

    def __init__(self, store: Store, converter: Converter, audit: AuditHook | None = None) -> None:
        self.store = store
        self.converter = converter
        self.audit = audit  # gateway.audit.store_hook: the audit trail's events
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="processor", daemon=True)
        self.done = 0

    def start(self, recover: bool = True) -> None:
        if recover:
            for message_id in self.store.pending(limit=1_000_000):
                self._queue.put(message_id)
        self._thread.start()

    def submit(self, message_id: int) -> None:
        self._queue.put(message_id)

    def close(self) -> None:
        """Stop after the message being converted (the rest stays ``received`` and is
        picked up at the next start)."""
        with self._queue.mutex:
            self._queue.queue.clear()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        while True:
            message_id = self._queue.get()
            try:
                if message_id is None:
                    return
                # queued twice (recovered at start and submitted): converted once
                if self.store.state_of(message_id) == "received":
                    process_message(self.store, self.converter, message_id, audit=self.audit)
                self.done += 1
            except Exception:  # the message stays "received": retried at the next start
                log.exception("stored message %s could not be processed", message_id)
            finally:
                self._queue.task_done()


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A connection's verified TLS client certificate: its common name (stored as
    ``auth_sender``) and the network institution it names (None: a person's certificate,
    or no institution of the network)."""

    name: str | None
    institution: Institution | None


def server_tls_context(settings: Settings, listener: str) -> ssl.SSLContext | None:
    """A listener's TLS context (``listener``: ``mllp`` or ``dicom``, the prefix of its
    ``*_tls_cert``, ``*_tls_key`` and ``*_tls_ca`` settings) when a certificate and key
    are configured; with the CA set, clients must present certificates signed by it."""
    cert: Path | None = getattr(settings, f"{listener}_tls_cert")
    key: Path | None = getattr(settings, f"{listener}_tls_key")
    ca: Path | None = getattr(settings, f"{listener}_tls_ca")
    if cert is None or key is None:
        return None
    # The listener's private key, as every secret file (config.not_private): whoever
    # reads it can pose as the gateway to the senders. Refused, not used.
    # (not there, or not readable: load_cert_chain says so)
    problem = exposed(key, SECRET_FILES[f"{listener}_tls_key"])
    if problem is not None:
        raise ConfigError("bad-setting", f"{listener}_tls_key: {problem}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(ca)
    return context


def client_certificate(der: bytes | None, network: Network) -> ClientCertificate:
    """A verified client certificate (DER, as the TLS handshake gave it) as the
    listeners judge it: its common name, and the institution it names by the rule the
    inbound endpoint applies to partners' certificates (``certificate_institution``).
    None (no certificate, or one cryptography cannot read) names no institution."""
    try:
        cert = x509.load_der_x509_certificate(der) if der else None
    except ValueError:
        cert = None
    if cert is None:
        return ClientCertificate(None, None)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else None
    return ClientCertificate(name, certificate_institution(cert, network))
