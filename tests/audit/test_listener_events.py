"""Messages the MLLP listener stores are audited as they convert after the ACK:
received (by the ``mllp`` channel) and converted, in the outcome's transaction."""

from __future__ import annotations

import time
from pathlib import Path

from gateway import Converter
from gateway.audit import AuditLog
from gateway.audit._events import keys_of
from gateway.store import Incoming, Store
from tests.listeners.mllp_client import Client, Listener, example, settings_for


def test_mllp_messages_are_audited_as_they_convert(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    settings = settings_for(tmp_path)
    pending = store.receive(Incoming(example("ref_i12_nsgp_to_nsch.hl7"), "mllp"))  # left over
    with Listener(settings, store, converter) as listener:
        client = Client(listener.port)
        client.call(example("ref_i12_lax2_to_njmu2.hl7"))
        client.close()
        deadline = time.monotonic() + 60
        while store.count("converted") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert store.count("converted") == 2 and store.state_of(pending.id) == "converted"
    found = [e.resource() for e in AuditLog(store).rows()]
    assert [keys_of(e)[0] for e in found] == ["received", "converted"] * 2
    channels = [
        a["who"]["identifier"]["value"]
        for e in found[::2]
        for a in e["agent"]
        if a["who"]["identifier"]["value"].startswith("listener:")
    ]
    assert channels == ["listener:mllp"] * 2
    assert {keys_of(e)[3] for e in found[::2]} == {"NSGP", "LAX2"}
