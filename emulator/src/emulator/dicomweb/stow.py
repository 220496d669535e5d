"""STOW-RS: StoreDICOM (``POST /studies``) and StoreDICOMStudy (``POST /studies/{study}``).

Each ``application/dicom`` part is checked exactly like a file of an import job (``parse_instance``), and all
accepted parts of one request are applied in one transaction through the import's primary/non-primary plan
(``MedicalImagingBackend.apply_instances``): an instance whose Patient/Study/Series attributes conflict with the
primary image set lands in a non-primary set (DG ``dicomweb-import.html``). The answer is 200 when every part was
stored, else 409 with ``FailedSOPSequence`` items carrying a ``FailureReason`` (PS3.18 §10.5.3, AWS's partial
failure status), and always a DICOM JSON body.
"""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass

import pydicom

from emulator.dicomweb.dicomjson import JsonObject, attr
from emulator.dicomweb.multipart import MultipartError, parse_media_type, parse_multipart
from emulator.dicomweb.wado import UnsupportedMediaTypeException
from emulator.errors import BadRequestException
from emulator.medicalimaging.dicom import UID_RE, InstanceRejected, parse_instance
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.medicalimaging.records import FileOutcome

log = logging.getLogger("emulator.dicomweb")

# PS3.18 Table 10.5.3-2 / PS3.4 Annex B Failure Reason values.
PROCESSING_FAILURE = 0x0110
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

TAG_RETRIEVE_URL = 0x00081190
TAG_FAILED_SOP_SEQUENCE = 0x00081198
TAG_REFERENCED_SOP_SEQUENCE = 0x00081199
TAG_REFERENCED_SOP_CLASS_UID = 0x00081150
TAG_REFERENCED_SOP_INSTANCE_UID = 0x00081155
TAG_FAILURE_REASON = 0x00081197


@dataclass
class StowResult:
    status: int
    body: JsonObject
    stored: int
    failed: int


def _failure_code(message: str) -> int:
    # Unreadable bytes: "cannot understand"; readable but missing/invalid attributes: "does not match SOP class".
    if message.startswith("Input file") or "could not be parsed" in message:
        return CANNOT_UNDERSTAND
    return DATA_SET_DOES_NOT_MATCH


def _best_effort_uids(data: bytes) -> tuple[str | None, str | None]:
    """SOP Class / Instance UIDs of a rejected part, if they can be read at all (for its FailedSOPSequence item)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
        cls = str(ds.get("SOPClassUID", "") or "").strip()
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
    except Exception:
        return None, None
    # Only echo values that are well-formed UIDs: never arbitrary bytes from a hostile part.
    return (cls if UID_RE.fullmatch(cls) else None), (sop if UID_RE.fullmatch(sop) else None)


class Stow:
    def __init__(self, backend: MedicalImagingBackend) -> None:
        self.backend = backend

    def store(self, datastore_id: str, study_uid: str | None, content_type: str | None, body: bytes,
              base_url: str) -> StowResult:
        media = parse_media_type(content_type or "")
        if media.mime != "multipart/related":
            raise UnsupportedMediaTypeException(
                'STOW-RS requests must have Content-Type multipart/related; type="application/dicom"')
        part_type = media.params.get("type", "application/dicom").strip().lower()
        if part_type != "application/dicom":
            raise UnsupportedMediaTypeException(
                "Only multipart/related bodies of type application/dicom are supported")
        if "boundary" not in media.params:
            raise BadRequestException("The multipart/related Content-Type has no boundary parameter")
        try:
            parts = parse_multipart(body, media.params["boundary"])
        except MultipartError as exc:
            raise BadRequestException(f"Malformed multipart body: {exc}") from None

        failed: list[JsonObject] = []
        accepted: list[FileOutcome] = []
        for index, part in enumerate(parts):
            key = f"stow/{index:06d}"
            ptype = part.content_type
            if ptype is not None and ptype.mime != "application/dicom":
                failed.append(_failed_item(None, None, CANNOT_UNDERSTAND))
                continue
            try:
                parsed = parse_instance(part.content)
            except InstanceRejected as exc:
                cls, sop = _best_effort_uids(part.content)
                failed.append(_failed_item(cls, sop, _failure_code(str(exc))))
                continue
            if study_uid is not None and parsed.study_instance_uid != study_uid:
                failed.append(_failed_item(parsed.sop_class_uid, parsed.sop_instance_uid, DATA_SET_DOES_NOT_MATCH))
                continue
            if self.backend.settings.store_instances:
                self.backend.store.put_blob(part.content, parsed.sha256)
            accepted.append(FileOutcome(key=key, size=len(part.content), parsed=parsed))

        referenced: list[JsonObject] = []
        if accepted:
            self.backend.apply_instances(datastore_id, accepted, f"stow-{uuid.uuid4().hex}")
            for o in accepted:
                p = o.parsed
                assert p is not None
                url = (f"{base_url}/studies/{p.study_instance_uid}/series/{p.series_instance_uid}"
                       f"/instances/{p.sop_instance_uid}")
                referenced.append(dict([
                    attr(TAG_REFERENCED_SOP_CLASS_UID, "UI", p.sop_class_uid),
                    attr(TAG_REFERENCED_SOP_INSTANCE_UID, "UI", p.sop_instance_uid),
                    attr(TAG_RETRIEVE_URL, "UR", url),
                ]))
        out: JsonObject = {}
        studies = {o.parsed.study_instance_uid for o in accepted if o.parsed is not None}
        study_for_url = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
        if study_for_url:
            out.update([attr(TAG_RETRIEVE_URL, "UR", f"{base_url}/studies/{study_for_url}")])
        if failed:
            out[f"{TAG_FAILED_SOP_SEQUENCE:08X}"] = {"vr": "SQ", "Value": failed}
        out[f"{TAG_REFERENCED_SOP_SEQUENCE:08X}"] = {"vr": "SQ", "Value": referenced} if referenced else {"vr": "SQ"}
        log.info("STOW-RS into %s: %d part(s), %d stored, %d failed", datastore_id, len(parts), len(accepted),
                 len(failed))
        return StowResult(200 if not failed else 409, out, len(accepted), len(failed))


def _failed_item(sop_class: str | None, sop: str | None, reason: int) -> JsonObject:
    return dict([
        attr(TAG_REFERENCED_SOP_CLASS_UID, "UI", sop_class),
        attr(TAG_REFERENCED_SOP_INSTANCE_UID, "UI", sop),
        attr(TAG_FAILURE_REASON, "US", reason),
    ])
