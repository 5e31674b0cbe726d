"""A DICOM study is converted whole or not at all (docs/listeners-dicom.md, *Late
instances*). The listeners commit a study as one message of every instance the store
holds of it, and its conversion replaces the partner's ImagingStudy (a conditional
update). Retention drops a converted message's instances with its content, so a later
commit (or a reprocess of an older message) may hold only part of the study: converted,
it would replace the partner's whole study with that part. :func:`check_study` finds
such a message; the SOP Instance UIDs the listeners took of each study are kept for it
(``dicom_known_studies``), through pruning.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from ..errors import IntakeError
from ._store import KnownStudy, MessageFilter, MessageSummary, Store

__all__ = ["LISTENER_CHANNELS", "StudyCheck", "check_study", "listener_message"]

# The channels of the messages a DICOM listener's commit makes.
LISTENER_CHANNELS = ("dicom", "stow")


@dataclass(frozen=True, slots=True)
class StudyCheck:
    """A study message about to be converted: its instances, and why it must not be
    (None: it holds every instance taken of its study before)."""

    study_uid: str
    message_id: int
    sop_uids: frozenset[str]
    refusal: IntakeError | None

    def remember(self, store: Store, conn: Connection) -> None:
        """Add its instances to those known of the study, in the outcome's transaction
        (a process stopped before it checks the message again, as it was)."""
        store.remember_study(self.study_uid, self.sop_uids, self.message_id, conn)


def check_study(store: Store, message_id: int) -> StudyCheck | None:
    """The check of a message a DICOM listener's commit made; None for any other
    message (``gateway convert``, ``POST /convert``: their input is whole as given)."""
    message = store.get(message_id)
    if message is None or message.raw is None:
        return None
    summary = message.summary
    study = summary.control_id
    if summary.format != "dicom" or summary.channel not in LISTENER_CHANNELS or not study:
        return None
    uids = _sop_uids(message.raw)
    if uids is None:  # not a commit's zip: the conversion says what it is
        return None
    refusal = _refusal(store, study, message_id, uids, store.known_study(study))
    return StudyCheck(study, message_id, uids, refusal)


def listener_message(
    store: Store, study_uid: str, before: int | None = None
) -> MessageSummary | None:
    """The newest message the listeners made of a study (older than message ``before``,
    when given). Other messages with the Study UID as control id (``POST /convert`` of
    the same files, a study refused for its sender) are not its commits."""
    after: str | None = None
    while True:
        page = store.find(MessageFilter(control_id=study_uid), limit=20, after=after)
        for message in page.items:
            older = before is None or message.id < before
            # a study refused for its sender (kept "rejected") was never a commit of it
            listened = message.format == "dicom" and message.channel in LISTENER_CHANNELS
            if older and listened and message.state != "rejected":
                return message
        if page.next is None:
            return None
        after = page.next


def _refusal(
    store: Store, study: str, message_id: int, uids: frozenset[str], known: KnownStudy | None
) -> IntakeError | None:
    # The message the study's instances were last taken into: pruned, they are gone.
    earlier = listener_message(store, study, before=message_id)
    pruned = earlier is not None and earlier.pruned_at is not None
    if known is None:
        if earlier is None or not pruned:  # first commit, or every instance still held
            return None
        what = (
            f"its message {earlier.id} was pruned (retention_days) before the gateway kept "
            "the instances of each study, so which instances it held cannot be known"
        )
    else:
        missing = known.sop_uids - uids
        if not missing:
            return None
        # Pruned: gone from the store. Otherwise a later message of the study holds
        # them (this one is an older revision, reprocessed).
        gone = " (pruned by retention_days)" if pruned else ""
        what = (
            f"{len(missing)} of the {_count(len(known.sop_uids))} received for it before "
            f"are not in it{gone}"
        )
    return IntakeError(
        "dicom-partial-study",
        f"study {study}: message {message_id} holds {_count(len(uids))} but {what}; "
        "converted, it would replace the partner's ImagingStudy with a partial one, so it is "
        "not converted. Send the whole study again (every series), then commit it",
        location="(0020,000D) StudyInstanceUID",
    )


def _count(n: int) -> str:
    return f"{n} instance" if n == 1 else f"{n} instances"


def _sop_uids(raw: bytes) -> frozenset[str] | None:
    """The SOP Instance UIDs of a commit's zip (members ``series/sop.dcm``,
    ``Store.commit_study``); None when it is not such a zip."""
    try:
        names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    except zipfile.BadZipFile:
        return None
    return frozenset(n.rpartition("/")[2].removesuffix(".dcm") for n in names)
