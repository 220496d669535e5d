"""WADO-RS: GetDICOMInstance, GetDICOMInstanceMetadata, GetDICOMSeriesMetadata, GetDICOMInstanceFrames.

Instances are served as the stored P10 bytes (the emulator keeps pixel data as received, see README), so the
only transfer syntax on offer is the stored one: ``transfer-syntax=*`` or the stored UID is served, any other
requested syntax is 406. Metadata is built from the stored metadata documents (no blob read), frames are cut
from the stored file.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pydicom
from pydicom.encaps import generate_frames

from emulator.dicomweb.catalog import Catalog, InstanceRecord
from emulator.dicomweb.dicomjson import JsonObject, to_dicom_json
from emulator.dicomweb.multipart import MediaType, encode_multipart, new_boundary, split_accept
from emulator.errors import AwsError, BadRequestException, NotAcceptableException, ResourceNotFoundException
from emulator.medicalimaging.dicom import PIXEL_DATA_TAG
from emulator.protocol import HttpResponse

NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                             "1.2.840.10008.1.2.1.99"})
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
# Single-frame media types of common encapsulated syntaxes (PS3.18 Table 8.7.3-2), for frame parts.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
FRAME_LIST_RE = re.compile(r"[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*")


class UnsupportedMediaTypeException(AwsError):
    code = "UnsupportedMediaTypeException"
    status = 415


def _accepts(accept: str | None, wanted: tuple[str, ...], part_types: tuple[str, ...], stored_ts: str,
             ts_equivalent: frozenset[str] = frozenset()) -> MediaType | None:
    """The first acceptable media range for a resource offered as ``wanted`` (outer types) whose parts are
    ``part_types``, in the stored transfer syntax; None if nothing in ``accept`` can be satisfied."""
    ranges = split_accept(accept) if accept and accept.strip() else [MediaType("*/*", {})]
    for rng in ranges:
        mime = rng.mime
        if mime in ("*/*", "multipart/*"):
            return rng
        if mime not in wanted:
            continue
        if mime == "multipart/related":
            part = rng.params.get("type", part_types[0]).lower()
            if part not in part_types and part not in ("*/*", "application/*", "image/*"):
                continue
        ts = rng.params.get("transfer-syntax")
        if ts is None or ts == "*" or ts == stored_ts or ts in ts_equivalent:
            return rng
    return None


class Wado:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # ---- instances

    def instance(self, ds: str, study: str, series: str, sop: str, image_set_id: str | None,
                 accept: str | None) -> HttpResponse:
        inst = self.catalog.one_instance(ds, study, series, sop, image_set_id)
        ts = inst.transfer_syntax
        chosen = _accepts(accept, ("multipart/related", "application/dicom"), ("application/dicom",), ts)
        if chosen is None:
            raise NotAcceptableException(
                "The requested media type or transfer syntax is not available for this instance; the emulator "
                f"serves the stored transfer syntax {ts} (or transfer-syntax=*)")
        data = self._blob(inst)
        part_type = f"application/dicom; transfer-syntax={ts}"
        # A bare application/dicom (AWS's documented form) or no preference: the file itself, not multipart.
        if chosen.mime in ("application/dicom", "*/*"):
            return HttpResponse(200, {"Content-Type": part_type}, data)
        boundary = new_boundary()
        body = encode_multipart([(part_type, data)], boundary)
        return HttpResponse(200, {"Content-Type": _multipart_type("application/dicom", boundary)}, body)

    def _blob(self, inst: InstanceRecord) -> bytes:
        path = self.catalog.backend.store.blob_path(inst.blob_sha256)
        try:
            return path.read_bytes()
        except OSError:
            # Imported with --store-instances false (or blobs wiped): metadata exists, the file does not.
            raise ResourceNotFoundException(
                f"The stored file of instance {inst.sop_uid} is not available in this emulator") from None

    # ---- metadata

    def instance_metadata(self, ds: str, study: str, series: str, sop: str,
                          image_set_id: str | None) -> list[JsonObject]:
        inst = self.catalog.one_instance(ds, study, series, sop, image_set_id)
        return [metadata_json(inst)]

    def series_metadata(self, ds: str, study: str, series: str, image_set_id: str | None) -> list[JsonObject]:
        record = self.catalog.one_series(ds, study, series, image_set_id)
        instances = self.catalog.instances(record)
        if not instances:
            raise ResourceNotFoundException(f"Series {series} of study {study} has no instances")
        instances.sort(key=lambda i: (_instance_number(i) is None, _instance_number(i) or 0, i.sop_uid))
        return [metadata_json(i) for i in instances]

    # ---- frames

    def frames(self, ds: str, study: str, series: str, sop: str, frame_list: str, image_set_id: str | None,
               accept: str | None) -> HttpResponse:
        if not FRAME_LIST_RE.fullmatch(frame_list):
            raise BadRequestException("The frame list must be comma-separated positive frame numbers (1-based)")
        numbers = [int(n) for n in frame_list.split(",")]
        inst = self.catalog.one_instance(ds, study, series, sop, image_set_id)
        ts = inst.transfer_syntax
        native = ts in NATIVE_SYNTAXES
        part_mime = "application/octet-stream" if native else FRAME_MEDIA_TYPES.get(ts, "application/octet-stream")
        # Native little-endian frames are the same bytes whichever little-endian syntax is asked for.
        equivalent = frozenset({EXPLICIT_VR_LE, "1.2.840.10008.1.2"}) if native else frozenset()
        chosen = _accepts(accept, ("multipart/related",), (part_mime, "application/octet-stream"), ts, equivalent)
        if chosen is None:
            raise NotAcceptableException(
                f"The requested media type or transfer syntax is not available for these frames; the emulator "
                f"serves frames in the stored transfer syntax {ts}")
        count = len(inst.doc.get("ImageFrames") or [])
        bad = [n for n in numbers if n > count]
        if bad:
            raise BadRequestException(f"Frame number {bad[0]} is out of range: the instance has {count} frame(s)")
        frames = self._cut_frames(inst, count)
        part_type = part_mime if native else f"{part_mime}; transfer-syntax={ts}"
        boundary = new_boundary()
        body = encode_multipart([(part_type, frames[n - 1]) for n in numbers], boundary)
        return HttpResponse(200, {"Content-Type": _multipart_type(part_mime, boundary)}, body)

    def _cut_frames(self, inst: InstanceRecord, count: int) -> list[bytes]:
        data = self._blob(inst)
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=[PIXEL_DATA_TAG])
        pixel_data = ds.get(PIXEL_DATA_TAG)
        if pixel_data is None or pixel_data.value is None:
            raise ResourceNotFoundException(f"Instance {inst.sop_uid} has no pixel data")
        value: bytes = pixel_data.value
        if inst.transfer_syntax not in NATIVE_SYNTAXES:
            return list(generate_frames(value, number_of_frames=count))
        sizes = [int(f.get("FrameSizeInBytes") or 0) for f in inst.doc.get("ImageFrames") or []]
        out, pos = [], 0
        for size in sizes:
            out.append(value[pos:pos + size])
            pos += size
        return out


def _multipart_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def _instance_number(inst: InstanceRecord) -> int | None:
    try:
        return int(str((inst.doc.get("DICOM") or {}).get("InstanceNumber")).strip())
    except (TypeError, ValueError):
        return None


def metadata_json(inst: InstanceRecord) -> JsonObject:
    """The full DICOM JSON of one instance (all levels), without file meta and without bulk data."""
    s = inst.series
    attrs: dict[str, Any] = {**s.patient, **s.study, **s.series, **(inst.doc.get("DICOM") or {})}
    attrs["StudyInstanceUID"] = s.study_uid
    attrs["SeriesInstanceUID"] = s.series_uid
    attrs["SOPInstanceUID"] = inst.sop_uid
    return to_dicom_json(attrs, inst.vrs, skip_groups=frozenset({0x0002}), omit_binary=True)
