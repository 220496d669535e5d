"""What the C-STORE receiver refuses before storing (`worker.store_checks.check_received`), over cases built here:
every place a dataset can be cut, datasets that are not what their request announces, and complete datasets
that must pass (an image, a non-image object without Pixel Data, a deflated one)."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from contracts.receiver import RejectionCode, StoreStatus
from tests.support.dicom import make_instance, uid
from worker.store_checks import Refusal, check_received

CT = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _meta_end(body: bytes) -> int:
    return 132 + 12 + int.from_bytes(body[140:144], "little")


def _pixel_end(body: bytes) -> int:
    """Where Pixel Data's value ends (CT_small: an uncompressed OW value with a 4-byte explicit length)."""
    tag = body.index(b"\xe0\x7f\x10\x00OW")
    return tag + 12 + int.from_bytes(body[tag + 8:tag + 12], "little")


def _refused(body: bytes, sop_class: str, sop: str) -> Refusal | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            check_received(body, sop_class, sop)
        except Refusal as refusal:
            return refusal
    return None


class TestEveryCut:
    def test_an_image_cut_anywhere_is_refused_except_where_it_is_complete(self) -> None:
        sop, study = uid(), uid()
        body = make_instance(study, uid(), sop)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert check_received(body, CT, sop) == study
        start, pixels = _meta_end(body), _pixel_end(body)
        # Every 3rd byte of the header (all offsets inside tags, VRs, lengths and values occur), a sample of cuts
        # inside Pixel Data, every byte of the trailing element.
        header_end = body.index(b"\xe0\x7f\x10\x00") + 12
        cuts = [*range(start + 1, header_end, 3), *range(header_end + 500, pixels, 4999), *range(pixels, len(body))]
        refusals = {cut: _refused(body[:cut], CT, sop) for cut in cuts}
        # Only a cut right after Pixel Data passes: it drops the optional trailing padding element whole.
        assert [cut for cut, refusal in refusals.items() if refusal is None] == [pixels]
        codes = {refusal.code for refusal in refusals.values() if refusal is not None}
        assert codes <= {RejectionCode.TRUNCATED, RejectionCode.UNREADABLE}

    def test_every_cut_is_refused_with_a_failure_status_and_no_patient_value(self) -> None:
        sop = uid()
        body = make_instance(uid(), uid(), sop, patient_id="SYNTH-CUT-77", patient_name="SYNTH^CUT")
        for cut in range(_meta_end(body) + 1, body.index(b"\xe0\x7f\x10\x00") + 12, 13):
            refusal = _refused(body[:cut], CT, sop)
            assert refusal is not None, cut
            assert refusal.status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DOES_NOT_MATCH,
                                      StoreStatus.MISSING_UID)
            assert "SYNTH" not in refusal.reason and sop not in refusal.reason


class TestNotWhatTheRequestSays:
    @pytest.mark.parametrize("what", ["sop_instance", "sop_class"])
    def test_a_dataset_of_another_instance_or_class_is_refused(self, what: str) -> None:
        sop = uid()
        body = make_instance(uid(), uid(), sop)
        request_sop, request_class = (uid(), CT) if what == "sop_instance" else (sop, BASIC_TEXT_SR)
        refusal = _refused(body, request_class, request_sop)
        assert refusal is not None and refusal.code == RejectionCode.SOP_MISMATCH
        assert refusal.status == StoreStatus.DOES_NOT_MATCH

    @pytest.mark.parametrize("drop,label", [("StudyInstanceUID", "StudyInstanceUID"),
                                            ("SeriesInstanceUID", "SeriesInstanceUID")])
    def test_a_dataset_without_its_study_or_series_is_refused(self, drop: str, label: str) -> None:
        sop = uid()
        refusal = _refused(make_instance(uid(), uid(), sop, drop=(drop,)), CT, sop)
        assert refusal is not None and refusal.code == RejectionCode.MISSING_UID
        assert refusal.status == StoreStatus.MISSING_UID and label in refusal.reason

    def test_a_dataset_without_a_sop_instance_uid_is_refused(self) -> None:
        sop = uid()
        refusal = _refused(make_instance(uid(), uid(), sop, drop=("SOPInstanceUID",)), CT, sop)
        assert refusal is not None and refusal.code == RejectionCode.SOP_MISMATCH


def _p10(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class TestCompleteDatasetsPass:
    def test_a_non_image_object_without_pixel_data_passes(self) -> None:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(), uid()
        ds.Modality, ds.PatientID = "SR", "SYNTH-SR-1"
        assert check_received(_p10(ds, ExplicitVRLittleEndian), BASIC_TEXT_SR, ds.SOPInstanceUID) \
            == ds.StudyInstanceUID

    def test_the_same_object_announced_as_an_image_class_is_truncated(self) -> None:
        # A CT whose dataset ends before Rows and Columns looks like this: only the request's class tells.
        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        for name in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                     "SamplesPerPixel", "PhotometricInterpretation", "DataSetTrailingPadding"):
            if name in ds:
                delattr(ds, name)
        refusal = _refused(_p10(ds, ExplicitVRLittleEndian), CT, ds.SOPInstanceUID)
        assert refusal is not None and refusal.code == RejectionCode.TRUNCATED
        assert "CT Image Storage" in refusal.reason

    def test_a_deflated_image_passes(self) -> None:
        pytest.importorskip("zlib")
        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        body = _p10(ds, DeflatedExplicitVRLittleEndian)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert check_received(body, CT, ds.SOPInstanceUID) == ds.StudyInstanceUID
