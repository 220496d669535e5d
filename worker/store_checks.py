"""What the C-STORE receiver checks in a received dataset before it stores it (pure: no I/O).

Only what makes a C-STORE unusable as such is refused here, with a failure status the sender sees at once: bytes
that are not a readable DICOM dataset, a dataset cut short (inside an element, or an image ending before its
Pixel Data), one whose SOP Class / Instance UID is missing or is not
the one the request announced, and one without a Study or Series Instance UID (it cannot be filed). Everything
else (invalid VRs, UIDs HealthImaging refuses, length limits, conformance) is stored and left to the pipeline's
validation, which reports it per file at the ingest's validation level like any other source file.
"""

from __future__ import annotations

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from activities.dicom_header import parse_header
from contracts.receiver import RejectionCode, StoreStatus

DEFLATED = str(DeflatedExplicitVRLittleEndian)  # inflated whole by pydicom: the read position says nothing
# Finding codes of `parse_header` that mean "not a dataset we can read at all".
_UNREADABLE = {"not_dicom", "unparseable", "zero_byte", "compressed_archive"}
# Bytes after Pixel Data that are neither elements nor padding: a trailing element cut short, or noise.
_MALFORMED_TAIL = "trailing_garbage"


class Refusal(Exception):
    """A received dataset the receiver will not store: the status to answer with, a code and a reason (no value
    from the dataset)."""

    def __init__(self, status: int, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def check_received(body: bytes, sop_class_uid: str, sop_instance_uid: str) -> str:
    """Return the StudyInstanceUID of a received P10 ``body`` (file meta + dataset as received), or raise `Refusal`.

    ``sop_class_uid`` and ``sop_instance_uid`` are the C-STORE request's Affected SOP Class / Instance UIDs.
    Only the header is parsed; Pixel Data is checked for its extent (a dataset cut inside it is truncated), never
    decoded.
    """
    result = parse_header(body, len(body))
    codes = {f.code: f.reason for f in result.findings}
    if "truncated" in codes:
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, RejectionCode.TRUNCATED, codes["truncated"])
    if "missing_pixel_data" in codes:
        # An image whose dataset ends cleanly before its pixels: what a cut between two elements looks like.
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, RejectionCode.TRUNCATED, codes["missing_pixel_data"])
    if _MALFORMED_TAIL in codes:
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, RejectionCode.UNREADABLE, codes[_MALFORMED_TAIL])
    if result.readable and result.header_bytes >= len(body) and _image_class(sop_class_uid) \
            and result.values.get("transfer_syntax_uid") != DEFLATED:
        # Cut between two elements before Rows and Columns: nothing in the dataset says it is an image, but the
        # request's SOP class does (every "... Image Storage" IOD has the Image Pixel module).
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, RejectionCode.TRUNCATED,
                      f"a {UID(sop_class_uid).name} dataset must carry Pixel Data, but this one ends before it "
                      "(cut short)")
    if not result.readable:
        reason = next((codes[c] for c in codes if c in _UNREADABLE), "the dataset cannot be read as DICOM")
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, RejectionCode.UNREADABLE, reason)
    values = result.values
    if values.get("is_dicomdir"):
        raise Refusal(StoreStatus.DOES_NOT_MATCH, RejectionCode.SOP_MISMATCH,
                      "a DICOMDIR media index is not an instance to store")
    if not values.get("sop_instance_uid"):
        raise Refusal(StoreStatus.DOES_NOT_MATCH, RejectionCode.SOP_MISMATCH,
                      "required attribute SOPInstanceUID is missing or empty")
    if str(values["sop_instance_uid"]) != sop_instance_uid:
        raise Refusal(StoreStatus.DOES_NOT_MATCH, RejectionCode.SOP_MISMATCH,
                      "the dataset's SOPInstanceUID is not the request's Affected SOP Instance UID")
    if values.get("sop_class_uid") and str(values["sop_class_uid"]) != sop_class_uid:
        raise Refusal(StoreStatus.DOES_NOT_MATCH, RejectionCode.SOP_MISMATCH,
                      "the dataset's SOPClassUID is not the request's Affected SOP Class UID")
    for attr, label in (("study_instance_uid", "StudyInstanceUID"), ("series_instance_uid", "SeriesInstanceUID")):
        if not values.get(attr):
            raise Refusal(StoreStatus.MISSING_UID, RejectionCode.MISSING_UID,
                          f"required attribute {label} is missing or empty")
    return str(values["study_instance_uid"])


def _image_class(sop_class_uid: str) -> bool:
    return " Image Storage" in UID(sop_class_uid).name
