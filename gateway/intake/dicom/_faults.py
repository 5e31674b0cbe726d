"""What the libraries the DICOM reader calls raise on damaged input, as the reader
translates them: each becomes an intake error naming the file, member or tag; nothing
else is caught, so a fault of the gateway itself is never mistaken for bad input
(tests/intake/test_library_errors.py checks that every exception these libraries
export is covered)."""

from __future__ import annotations

import lzma
import struct
import zipfile
import zlib

from pydicom.errors import BytesLengthException, InvalidDicomError

__all__ = ["ARCHIVE_FAULTS", "PYDICOM_FAULTS"]

# pydicom's own exceptions, and the builtins it lets through on damaged data: a length
# past the end (EOFError, struct.error, BytesLengthException), a value its VR cannot
# hold (ValueError, TypeError, OverflowError), an unknown VR (NotImplementedError),
# a sequence that does not nest (KeyError, IndexError, AttributeError), bytes that do
# not decode (UnicodeError, LookupError for an unknown codec).
PYDICOM_FAULTS: tuple[type[Exception], ...] = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    struct.error,
    OSError,
    ValueError,
    TypeError,
    OverflowError,
    NotImplementedError,
    KeyError,
    IndexError,
    AttributeError,
    LookupError,
)

# zipfile and its decompressors on a damaged archive or member (ValueError: a negative
# seek to a local header; NotImplementedError: an unknown compression method or a zip
# version beyond 6.3; IndexError: a member without a name).
ARCHIVE_FAULTS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    IndexError,
    zlib.error,
    lzma.LZMAError,
)
