"""What the MLLP listener refuses and how it says so: a message without MSH-10, a frame
holding several messages, and a store that cannot commit (AR in original mode, CE in
enhanced mode: HL7 v2.5 2.9.2 and 2.9.3). Nothing refused is ever stored as accepted."""

from __future__ import annotations

from pathlib import Path

from gateway.store import MessageFilter, Store

from .mllp_client import Client, Listener, example, segments, settings_for, with_control_id
from .test_mllp import BrokenStore


def test_an_empty_msh10_is_refused_naming_msh10(store: Store, tmp_path: Path) -> None:
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "")
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(data))
        after = segments(client.call(example("ref_i12_nsch_to_hkpmc.hl7")))
        client.close()
    assert seg["MSA"][1:3] == ["AR", ""]
    assert seg["ERR"][2] == "MSH^1^10"
    assert seg["ERR"][3].startswith("101^Required field missing^HL70357")
    assert "[intake.no-control-id]" in seg["ERR"][8]
    assert after["MSA"][1] == "AA"  # the connection goes on
    assert store.count("received") == 1  # the good one only
    rejected = store.find(MessageFilter(state="rejected")).items
    assert len(rejected) == 1
    kept = store.get(rejected[0].id)
    assert kept is not None and kept.raw == data
    assert kept.outcomes[0].issues[0]["code"] == "intake.no-control-id"


def test_an_empty_msh10_in_enhanced_mode_is_a_commit_reject(store: Store, tmp_path: Path) -> None:
    data = with_control_id(example("ref_i12_lax2_to_njmu2.hl7", original_mode=False), "")
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(data), "gb18030")
        client.close()
    assert seg["MSA"][1:3] == ["CR", ""]
    assert seg["ERR"][2] == "MSH^1^10"
    assert store.count("received") == 0


def test_several_messages_in_one_frame_are_refused_whole(store: Store, tmp_path: Path) -> None:
    """One block, one message (MLLP): a frame of two gets one AR naming the problem and
    the first message's id; neither message is accepted, the frame is kept as refused,
    and exactly one ACK was written (the next message's ACK is its own)."""
    base = example("ref_i12_nsch_to_hkpmc.hl7")
    two = with_control_id(base, "TWO1") + with_control_id(base, "TWO2")
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(two))
        after = segments(client.call(with_control_id(base, "ONE3")))
        client.close()
    assert seg["MSA"][1:3] == ["AR", "TWO1"]
    assert seg["ERR"][3].split("^")[0] == "100"
    assert "[intake.mllp-several-messages]" in seg["ERR"][8]
    assert "2 messages" in seg["ERR"][8]
    assert after["MSA"][1:3] == ["AA", "ONE3"]
    states = {m.control_id: m.state for m in store.find().items}
    assert states == {"TWO1": "rejected", "ONE3": "received"}
    refused = store.find(MessageFilter(state="rejected")).items[0]
    kept = store.get(refused.id)
    assert kept is not None and kept.raw == two  # nothing of the frame lost


def test_a_batch_of_several_messages_in_one_frame_is_refused(store: Store, tmp_path: Path) -> None:
    base = example("ref_i12_lax2_to_njmu2.hl7")
    batch = (
        b"FHS|^~\\&|HIS|LAX2\rBHS|^~\\&|HIS|LAX2\r"
        + with_control_id(base, "B1")
        + with_control_id(base, "B2")
        + b"BTS|2\rFTS|1\r"
    )
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(batch), "latin-1")
        client.close()
    assert seg["MSA"][1] == "AR"
    assert "[intake.mllp-several-messages]" in seg["ERR"][8]
    assert store.count("received") == 0 and store.count("rejected") == 1


def test_a_failed_commit_is_ce_in_enhanced_mode(store_url: str, tmp_path: Path) -> None:
    """Enhanced mode: the store being down is a commit error (CE), not the CR kept for a
    message type, version or processing id the receiver refuses."""
    store = BrokenStore.open(store_url)
    data = example("ref_i12_nsch_to_hkpmc.hl7", original_mode=False)  # AL/NE
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(data))
        client.close()
    assert seg["MSA"][1] == "CE"
    assert seg["ERR"][3].startswith("207^Application internal error^HL70357")
    assert "store.unavailable" in seg["ERR"][8]
    assert store.count() == 0
    store.close()


def test_a_stray_line_before_the_msh_is_refused_as_such(store: Store, tmp_path: Path) -> None:
    """A frame whose first line is not the MSH: refused (AR) for that, not as "several
    messages" (the stray line is no message); kept whole as refused."""
    data = b"\xe9\x99\xb3\xe5\xa4\xa7\xe6\x96\x87 note\r" + example("ref_i12_nsch_to_hkpmc.hl7")
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(data))
        client.close()
    assert seg["MSA"][1] == "AR"
    assert "[intake.no-msh]" in seg["ERR"][8]
    assert "several" not in seg["ERR"][8]
    assert store.count("received") == 0 and store.count("rejected") == 1


def test_a_raw_nul_in_msh10_is_refused_and_kept_as_evidence(store: Store, tmp_path: Path) -> None:
    """A control byte refuses the message (AR naming MSH-10); the refused message is
    kept, as every refusal is. On PostgreSQL, whose text holds no NUL, keeping it failed
    (its MSH-10, read from the bytes, went to a text column): no evidence of it."""
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "NUL\x001")
    with Listener(settings_for(tmp_path), store) as listener:
        client = Client(listener.port)
        seg = segments(client.call(data))
        client.close()
    assert seg["MSA"][1] == "AR" and seg["ERR"][2] == "MSH^1^10"
    rejected = store.find(MessageFilter(state="rejected")).items
    assert len(rejected) == 1 and rejected[0].control_id == "NUL\ufffd1"
    kept = store.get(rejected[0].id)
    assert kept is not None and kept.raw == data
    assert kept.outcomes[0].issues[0]["code"] == "intake.binary"
