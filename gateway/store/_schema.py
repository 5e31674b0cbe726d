"""The store's tables (SQLAlchemy Core). The migrations in ``migrations/versions``
create exactly these; tests/store/test_schema.py checks that they agree.

Times are naive UTC datetimes (SQLite has no zone type; PostgreSQL stores them as
``timestamp``). Indexes follow the look-ups of the message browser: every list is a
keyset page ordered by id, newest first, so each filter has an (x, id) index.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "MAX_ID",
    "dicom_instances",
    "dicom_known_studies",
    "is_row_id",
    "message_patients",
    "messages",
    "metadata",
    "outbox",
    "outbox_events",
    "outbox_links",
    "outcomes",
    "partner_pauses",
]

# SQLite only auto-numbers an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
ID = BigInteger().with_variant(Integer(), "sqlite")
# The largest id a row can have: a number above it (from a URL, a cursor) names no row,
# and handed to the database it would overflow its integer (a 500, not "not found").
MAX_ID = 2**63 - 1


def is_row_id(text: str) -> bool:
    """Whether ``text`` (a URL's path segment) can name a row: ASCII digits only
    (``"²".isdigit()`` holds and ``int("²")`` fails; ``int("٢")`` is 2), 1 to MAX_ID."""
    return text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID


metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("received_at", DateTime(), nullable=False),
    Column("channel", String(16), nullable=False),  # mllp, api, cli, dicom, stow
    Column("peer", String(255)),  # remote address (host:port) or calling AE title
    Column("auth_sender", String(255)),  # who authenticated (TLS client, API token, AE)
    Column("sender", String(255)),  # the sending facility the record names (MSH-4, ...)
    Column("control_id", String(255)),  # MSH-10, Study Instance UID, document id
    Column("message_type", String(64)),  # ORU^R01, dicom-study, ...
    Column("format", String(16), nullable=False),  # hl7v2, dicom, cda
    Column("charset", String(32)),  # as declared (MSH-18) or as read
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger(), nullable=False),
    Column("raw", LargeBinary()),  # NULL once pruned
    Column("state", String(16), nullable=False),
    Column("revision", Integer(), nullable=False, default=1),
    # Same sender and control id as an earlier message, different bytes.
    Column("flagged", Boolean(), nullable=False, default=False),
    # sender|control id|sha256 hashed: the same message received twice is one row.
    Column("dedup_key", String(64), unique=True),
    Column("updated_at", DateTime(), nullable=False),
    Column("pruned_at", DateTime()),
)
Index("ix_messages_state_id", messages.c.state, messages.c.id)
Index("ix_messages_state_sender_id", messages.c.state, messages.c.sender, messages.c.id)
Index("ix_messages_sender_id", messages.c.sender, messages.c.id)
Index("ix_messages_type_id", messages.c.message_type, messages.c.id)
Index("ix_messages_control_id", messages.c.control_id)
Index("ix_messages_received_id", messages.c.received_at, messages.c.id)

message_patients = Table(
    "message_patients",
    metadata,
    Column(
        "message_id",
        ID,
        ForeignKey("messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("identifier", String(255), primary_key=True),  # "system|value"
    Column("value", String(255), nullable=False),  # the value alone, for look-ups without it
)
Index("ix_patients_identifier", message_patients.c.identifier, message_patients.c.message_id)
Index("ix_patients_value", message_patients.c.value, message_patients.c.message_id)

outcomes = Table(
    "outcomes",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("message_id", ID, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer(), nullable=False),  # 1 for the first processing, 2 on ...
    Column("stage", String(32), nullable=False),  # convert (later: policy, sign, deliver)
    Column("state", String(16), nullable=False),  # the message's state this outcome set
    Column("at", DateTime(), nullable=False),
    Column("duration_ms", Integer()),
    Column("output", LargeBinary()),  # the Bundle JSON; NULL when failed or pruned
    Column("issues", Text()),  # JSON list of issues (code, message, location, severity)
    Column("current", Boolean(), nullable=False, default=True),
)
Index("ix_outcomes_message", outcomes.c.message_id, outcomes.c.id)

dicom_instances = Table(
    "dicom_instances",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("received_at", DateTime(), nullable=False),
    Column("channel", String(16), nullable=False),  # dicom (C-STORE), stow
    Column("peer", String(255)),  # calling AE title and address
    Column("sender", String(255)),  # facility code, when configured for the peer
    Column("data", LargeBinary(), nullable=False),  # Part 10 bytes (pixel data dropped)
    Column("sha256", String(64), nullable=False),
    Column(
        "message_id", ID, ForeignKey("messages.id", ondelete="SET NULL")
    ),  # set when its study is committed into a message
)
Index("ix_dicom_study", dicom_instances.c.study_uid, dicom_instances.c.message_id)
Index("ix_dicom_pending", dicom_instances.c.message_id, dicom_instances.c.received_at)

# Every instance the listeners ever took of a study (migration v0010_dicom_known): kept
# when retention drops the instances themselves, so a commit of what arrived later is
# never converted into a partial ImagingStudy (gateway/listeners/dicom.py).
dicom_known_studies = Table(
    "dicom_known_studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("instance_count", Integer(), nullable=False),
    Column("sop_uids", LargeBinary(), nullable=False),  # zlib of the sorted SOP UIDs, \n-joined
    # The newest message that added to it.
    Column("message_id", ID, ForeignKey("messages.id", ondelete="SET NULL")),
    Column("updated_at", DateTime(), nullable=False),
)

# -- delivery (gateway/delivery, docs/delivery.md; migration v0003_outbox) ------------
# One row per (record, partner): the ordered parts Partner.split made of its Bundle, where
# delivery is (state, next part), when to try next, and the partner's last answer.
outbox = Table(
    "outbox",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("message_id", ID, ForeignKey("messages.id", ondelete="SET NULL")),
    Column("partner", String(64), nullable=False),  # institution key (seeds/partners.yaml)
    Column("label", String(255)),  # what the record is, for people (never patient data)
    # Records with the same (partner, order_key) are delivered in id order; NULL: no order.
    Column("order_key", String(255)),  # the patient identifier "system|value"
    # partner|sha256 of the Bundle: the same Bundle queued twice for a partner is one row.
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column("parts", LargeBinary(), nullable=False),  # JSON list of the requests, in order
    Column("part_count", Integer(), nullable=False),
    Column("part", Integer(), nullable=False, default=0),  # parts before it are delivered
    Column("state", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False, default=0),  # sends of the current part
    Column("next_at", DateTime(), nullable=False),  # due from then
    Column("lease_until", DateTime()),  # a worker holds the row until then
    Column("created_at", DateTime(), nullable=False),
    Column("updated_at", DateTime(), nullable=False),
    Column("last_status", Integer()),  # the partner's last HTTP status
    Column("last_error", String(64)),  # the last gateway error code (delivery.*)
    Column("last_response", Text()),  # the partner's last answer (OperationOutcome), truncated
    # Migration v0004_outbound: which record of the message (0-based) and for what purpose
    # (the policy decides again from them while held), the row it replays, and until when
    # it waits for the records it links to (outbox_links; NULL: it waits for none).
    Column("record", Integer()),
    Column("purpose", String(32)),
    Column("replay_of", ID),
    Column("links_until", DateTime()),
)
Index("ix_outbox_state_next", outbox.c.state, outbox.c.next_at)
Index("ix_outbox_order", outbox.c.partner, outbox.c.order_key, outbox.c.id)
Index("ix_outbox_message", outbox.c.message_id)

# Every transition of an outbox row, in order (from_state NULL: queued).
outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("outbox_id", ID, ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("part", Integer()),  # the part it concerns
    Column("status", Integer()),  # the partner's HTTP status, when it answered
    Column("reason", Text(), nullable=False),
    # The policy decision it was made on (queued, held, released, sent again on;
    # migration v0014_event_decisions): NULL for other moves, and for events older than
    # it, whose decision only their reason names.
    Column("decision_id", ID),
)
Index("ix_outbox_events_row", outbox_events.c.outbox_id, outbox_events.c.id)

# A partner's Retry-After, shared by every worker (migration v0018_partner_pauses): no
# request goes to ``partner`` before ``until`` from any worker process or machine on the
# store, not only from the one that was answered. One row a partner; a later pause
# extends it, an earlier one never shortens it.
partner_pauses = Table(
    "partner_pauses",
    metadata,
    Column("partner", String(64), primary_key=True),  # institution key
    # The base URL that asked: a partner moved to another endpoint is not paused by the
    # old one's Retry-After, and the new one's pause replaces it.
    Column("base", Text(), nullable=False),
    Column("until", DateTime(), nullable=False),
    Column("asked_at", DateTime(), nullable=False),  # when the partner asked
)

# What an outbox row's Bundle provides and needs at the partner (migration v0004_outbound):
# ``provides`` each identifier of its orders, studies and reports; ``needs`` each logical
# reference to one made by another conversion. ``ref`` is the SHA-256 of
# "type|system|value" (the value itself stays in the row's parts).
outbox_links = Table(
    "outbox_links",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("outbox_id", ID, ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(8), nullable=False),  # provides | needs
    Column("kind", String(64), nullable=False),  # the resource type
    Column("system", String(255), nullable=False),  # the identifier's system (for people)
    Column("ref", String(64), nullable=False),
    # The hashed identifiers ("Patient|system|value", space-separated) of the patient of
    # the resource carrying the link (migration v0011_link_patients): a link resolves
    # only between records of one patient. NULL: queued before that migration.
    Column("patients", Text),
)
Index("ix_outbox_links_ref", outbox_links.c.ref, outbox_links.c.role)
Index("ix_outbox_links_row", outbox_links.c.outbox_id, outbox_links.c.role)
