"""The DICOMweb connector (QIDO-RS + WADO-RS) against a real Orthanc with its DICOMweb plugin."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from activities.sources.common import SourceUnavailable
from activities.sources.dicomweb import DicomwebAuth, origin_refusal, page_uids
from activities.sources.registry import SourceSettings
from contracts.sources import DicomwebSource, parse_origins
from tests.activities.sources.pacs import seed_two_studies
from tests.activities.sources.support import (
    RequestCounter,
    buckets,
    failures,
    inventory,
    landed,
    receive_input,
    run_receive,
)
from tests.support.dicom import make_instance, uid
from tests.support.orthanc import Orthanc
from tests.support.servers import free_port
from worker.settings import Settings


def _source(orthanc: Orthanc, **kw: Any) -> DicomwebSource:
    return DicomwebSource(kind="dicomweb", url=orthanc.dicomweb, **kw)


def test_every_study_lands_byte_for_byte_under_uid_keys(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    land, work = buckets(s3)
    counter = RequestCounter(s3)
    # One study per QIDO page exercises the limit/offset paging.
    inp = receive_input(land, work, _source(orthanc, page_size=1), page_size=3)
    result, beats = run_receive(s3, inp)
    assert result is not None
    got = landed(s3, land)
    assert set(got) == seeded.landing_keys()
    for (study, series, sop), body in seeded.instances.items():
        assert got[f"landed/{study}/{series}/{sop}.dcm"] == body  # WADO-RS returns the stored file unchanged
    assert result.files == len(seeded.instances) == 7 and result.pages == 3 and result.source_failures == 0
    assert sorted(r["key"] for r in inventory(s3, inp)) == sorted(got)
    pulled_puts = counter.calls["PutObject"] - result.pages - 1  # minus inventory pages and the unit list
    assert pulled_puts == len(seeded.instances)  # exactly one PUT per instance
    print(f"\nS3 writes per pulled instance (DICOMweb): {pulled_puts / len(seeded.instances):.2f}")
    assert beats[-1]["pull"]["units_total"] == 2


def test_unknown_study_in_the_filter_is_a_failure_row(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    missing = uid()
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc, study_uids=[seeded.studies[0], missing]))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 1
    assert set(landed(s3, land)) == {k for k in seeded.landing_keys() if k.startswith(f"landed/{seeded.studies[0]}/")}
    [row] = failures(s3, inp)
    assert (row["key"], row["state"], row["code"]) == (f"landed/{missing}/", "failed", "StudyNotFound")


def test_unreachable_pacs_is_a_retryable_error_naming_the_connector(s3: Any) -> None:
    land, work = buckets(s3)
    port = free_port()
    inp = receive_input(land, work, DicomwebSource(kind="dicomweb", url=f"http://127.0.0.1:{port}/dicom-web"))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp)
    assert info.value.type == "SourceUnavailable" and not info.value.non_retryable
    assert f"DICOMweb source http://127.0.0.1:{port}: searching studies (QIDO-RS): the PACS did not answer" in str(info.value)


def test_interrupted_pull_resumes_without_duplicate_pages(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc), page_size=2)
    _, beats = run_receive(s3, inp, stop_after_heartbeats=2)  # unit list + first study recorded, then "crash"
    cursor = beats[-1]
    assert cursor["pull"]["next_unit"] == 1
    first_study_count = cursor["pull"]["pulled"]
    counter = RequestCounter(s3)
    result, _ = run_receive(s3, inp, details=cursor)
    assert result is not None and result.files == 7 and result.pages == 4
    assert counter.calls["PutObject"] == (7 - first_study_count) + 4  # only the second study, then the pages
    keys = [r["key"] for r in inventory(s3, inp)]
    assert len(keys) == len(set(keys)) and set(keys) == seeded.landing_keys()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_pacs_content_cannot_overwrite_or_escape(s3: Any, orthanc: Orthanc) -> None:
    """One StudyInstanceUID under two PatientIDs (two Orthanc studies) and non-conformant UIDs."""
    orthanc.clear()
    study, series = uid(), uid()
    same_sop = uid()
    first = make_instance(study, series, sop=same_sop, patient_id="SYNTH-A")
    second = make_instance(study, series, sop=uid(), patient_id="SYNTH-B")
    odd = make_instance("1.02.3", "../../etc", sop="1.2.abc")
    for body in (first, second, odd):
        assert orthanc.upload(body)["Status"] == "Success"
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 0
    got = landed(s3, land)
    keys = set(got)
    assert len(keys) == 3
    # WADO-RS answers 404 for the ambiguous study and series; the instance-level fallback still pulls both.
    assert got[f"landed/{study}/{series}/{same_sop}.dcm"] == first
    odd_keys = [k for k in keys if not k.startswith(f"landed/{study}/")]
    [odd_key] = odd_keys
    # Invalid UIDs become hash segments: no '..', no extra path levels.
    assert ".." not in odd_key and odd_key.count("/") == 3 and odd_key.split("/")[1].startswith("x")


def test_an_instance_the_pacs_lists_but_cannot_serve_is_a_failure_row(s3: Any, orthanc: Orthanc) -> None:
    """Orthanc keeps the same SOP Instance UID under two PatientIDs, lists it, and WADO-RS serves neither copy."""
    orthanc.clear()
    study, series, sop = uid(), uid(), uid()
    for patient in ("SYNTH-A", "SYNTH-B"):
        assert orthanc.upload(make_instance(study, series, sop=sop, patient_id=patient))["Status"] == "Success"
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.files == 0 and result.source_failures == 1
    [row] = failures(s3, inp)
    assert (row["key"], row["state"], row["code"]) == (f"landed/{study}/{series}/{sop}.dcm", "failed", "NotDelivered")
    assert "HTTP 404" in row["reason"]


@pytest.mark.parametrize("study_uids", [None, ["1.2.3"]])
def test_refused_credentials_fail_without_retry_and_never_echo_the_secret(
        s3: Any, emulator_url: str, study_uids: list[str] | None) -> None:
    """The HealthImaging emulator's DICOMweb answers 401 to a bad bearer token, as an authenticating PACS would.
    With a study filter the first call is the study's own search: the probe then shows the whole source refuses."""
    land, work = buckets(s3)
    secret = "not-a-valid-token-" + uid()
    inp = receive_input(land, work, DicomwebSource(kind="dicomweb", url=f"{emulator_url}/datastore/{'a' * 32}",
                                                   study_uids=study_uids))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, settings=SourceSettings(dicomweb_auth=DicomwebAuth(token=secret),
                                                     dicomweb_allowed_origins=parse_origins(emulator_url)))
    assert info.value.type == "InvalidSourceConnector" and info.value.non_retryable
    assert "HTTP 401" in str(info.value) and "HIMIG_DICOMWEB_TOKEN" in str(info.value)
    assert secret not in str(info.value)


def test_a_study_the_pacs_cannot_serve_becomes_a_row_and_the_rest_migrates(s3: Any, orthanc: Orthanc) -> None:
    """A damaged file in the PACS makes every WADO-RS retrieval of one study fail; the study is retried a few
    times, then recorded as one failed row (the PACS still answers a probe), and the other study lands."""
    seeded = seed_two_studies(orthanc)
    broken_study = seeded.studies[0]
    broken_sop = next(sop for st, _, sop in seeded.instances if st == broken_study)
    orthanc.break_storage(broken_sop)
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc))
    result, beats = run_receive(s3, inp, settings=SourceSettings(unit_attempts=2, unit_backoff_seconds=0.0))
    assert result is not None and result.source_failures == 1
    other = {k for k in seeded.landing_keys() if not k.startswith(f"landed/{broken_study}/")}
    assert other <= set(landed(s3, land))
    [row] = failures(s3, inp)
    assert (row["key"], row["state"], row["code"]) == (f"landed/{broken_study}/", "failed", "SourceUnavailable")
    assert "tried 2 times" in row["reason"] and "SYNTH" not in row["reason"]
    # The heartbeat cursor carries indexes and counts only: no key, path or UID.
    assert not any(broken_study in json.dumps(b) or "landed/" in json.dumps(b) for b in beats)


def test_credentials_go_only_to_allowed_origins(s3: Any, orthanc: Orthanc) -> None:
    seed_two_studies(orthanc)
    land, work = buckets(s3)
    secret = DicomwebAuth(username="migrator", password="pw-" + uid())
    inp = receive_input(land, work, _source(orthanc))
    # Credentials configured, no allow-list: refused before any request, naming the field and the setting.
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, settings=SourceSettings(dicomweb_auth=secret))
    assert info.value.non_retryable and info.value.type == "InvalidSourceConnector"
    assert "source_connector.url" in str(info.value) and "HIMIG_DICOMWEB_ALLOWED_ORIGINS" in str(info.value)
    # An allow-list that does not hold the URL's origin: refused too, with or without credentials.
    elsewhere = parse_origins("http://pacs.example:8042")
    for auth in (secret, None):
        with pytest.raises(ApplicationError) as info:
            run_receive(s3, inp, settings=SourceSettings(dicomweb_auth=auth, dicomweb_allowed_origins=elsewhere))
        assert info.value.non_retryable and "is not one of the origins this worker may contact" in str(info.value)
    assert landed(s3, land) == {}
    # Listed (the default port spelled either way): the pull runs (Orthanc ignores the unneeded basic auth).
    allowed = parse_origins(orthanc.url + "/")
    result, _ = run_receive(s3, receive_input(land, work, _source(orthanc)),
                            settings=SourceSettings(dicomweb_auth=secret, dicomweb_allowed_origins=allowed))
    assert result is not None and result.files == 7


@pytest.mark.parametrize(("value", "needle"), [
    ("ftp://pacs", "is not an http(s)://host[:port] origin"),
    ("http://pacs/dicom-web", "must be only scheme://host[:port]"),
    ("http://u:p@pacs", "must be only scheme://host[:port]"),
    ("http://pacs:99999", "is not an http(s)://host[:port] origin"),
    ("pacs:8042", "is not an http(s)://host[:port] origin"),
])
def test_allowed_origins_setting_refuses_what_is_not_an_origin(value: str, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(dicomweb_allowed_origins=value)
    assert "dicomweb_allowed_origins" in str(info.value) and needle in str(info.value)


def test_origins_are_normalised() -> None:
    assert parse_origins("HTTP://PACS, https://pacs:443 http://[::1]:8042/") == (
        "http://pacs:80", "https://pacs:443", "http://[::1]:8042")
    assert origin_refusal("http://pacs:80/dicom-web", DicomwebAuth(token="t"), parse_origins("http://pacs")) is None
    assert origin_refusal("https://pacs/dicom-web", DicomwebAuth(token="t"), parse_origins("http://pacs")) is not None
    assert origin_refusal("http://pacs/dw", None, ()) is None  # no credentials, no list: any origin (as before)


def _pages(rows_by_offset: Callable[[int], list[Any] | None]) -> tuple[list[str | None], list[int]]:
    asked: list[int] = []

    def fetch(offset: int) -> list[Any] | None:
        asked.append(offset)
        return rows_by_offset(offset)

    got = [u for u, _ in page_uids(fetch, "0020000D", 50, "searching")]
    return got, asked


def _row(value: str | None) -> dict[str, Any]:
    return {} if value is None else {"0020000D": {"vr": "UI", "Value": [value]}}


def test_paging_stops_on_a_server_that_ignores_offset() -> None:
    got, asked = _pages(lambda _offset: [_row("1.1"), _row("1.2")])  # the same first page, forever
    assert got == ["1.1", "1.2"] and asked == [0, 2]


def test_paging_follows_short_pages_until_an_empty_one_and_reports_unusable_rows() -> None:
    data = [_row("1.1"), _row(None), _row("1.2"), {"0020000D": {"vr": "UI", "Value": [7]}}, _row("1.3"), _row("")]
    got, asked = _pages(lambda offset: data[offset : offset + 2])  # a server capping pages at 2 rows
    assert got == ["1.1", None, "1.2", None, "1.3", None] and asked == [0, 2, 4, 6]


def test_paging_is_bounded() -> None:
    with pytest.raises(SourceUnavailable, match="more than 50 pages"):
        _pages(lambda offset: [_row(f"1.{offset + 1}")])  # a new UID on every page, never an end
    assert _pages(lambda offset: None) == ([], [0])  # 404: nothing
