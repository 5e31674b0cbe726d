"""DICOM intake: Part 10 files, zip archives and DICOM JSON → one study per Unit, read
by the mappings in ``mappings/dicom/`` through :class:`DicomView` (docs/mapping-dicom.md)."""

from ._faults import ARCHIVE_FAULTS, PYDICOM_FAULTS
from ._paths import check_path, compile_path, tag_label
from ._peek import Studies, studies_in
from ._reader import check_instance, read_studies, sent_uid, uid_problem
from ._sender import sender_refusal
from ._view import DicomView, Node

__all__ = [
    "ARCHIVE_FAULTS",
    "PYDICOM_FAULTS",
    "DicomView",
    "Node",
    "Studies",
    "check_instance",
    "check_path",
    "compile_path",
    "read_studies",
    "sender_refusal",
    "sent_uid",
    "studies_in",
    "tag_label",
    "uid_problem",
]
