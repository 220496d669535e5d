"""What the C-STORE receiver checks in a received dataset before it stores it (pure: no I/O).

Only what makes a C-STORE unusable as such is refused here, with a failure status the sender sees at once: bytes
that are not a readable DICOM dataset, a dataset cut short, one whose SOP Class / Instance UID is missing or is not
the one the request announced, and one without a Study Instance UID (it cannot be filed under a study). Everything
else (invalid VRs, UIDs HealthImaging refuses, length limits, conformance) is stored and left to the pipeline's
validation, which reports it per file at the ingest's validation level like any other source file.
"""

from __future__ import annotations

from activities.dicom_header import parse_header
from contracts.receiver import RejectionCode, StoreStatus

# Finding codes of `parse_header` that mean "not a dataset we can read at all".
_UNREADABLE = {"not_dicom", "unparseable", "zero_byte", "compressed_archive"}


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
    study = values.get("study_instance_uid")
    if not study:
        raise Refusal(StoreStatus.NO_STUDY, RejectionCode.NO_STUDY,
                      "required attribute StudyInstanceUID is missing or empty")
    return str(study)
