"""DICOMweb connector: QIDO-RS enumerates studies (limit/offset pages) and each study's instances, WADO-RS
pulls a study as one ``multipart/related`` stream that is written part by part to the landing prefix.

Every instance QIDO enumerated but WADO-RS did not deliver becomes a failed report line, so a PACS-side
problem can never make an instance vanish. Credentials come from worker settings, never from workflow input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote, urlsplit

import pydicom
import requests
from pydicom.errors import InvalidDicomError

from activities.sources.common import (
    Landing,
    SourceMisconfigured,
    SourceUnavailable,
    UnitOutcome,
    instance_key,
    study_key,
)
from activities.sources.multipart import MultipartError, boundary_of, iter_parts
from contracts.sources import DicomwebSource

MAX_QIDO_PAGES = 100_000  # bounds every paging loop (100k pages x 1000 rows is far beyond any PACS we meet)
INSTANCE_PAGE = 1000
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class DicomwebAuth:
    """HTTP credentials for the PACS (from worker settings): basic auth or a bearer token."""

    username: str | None = None
    password: str | None = None
    token: str | None = None


def _first(row: Any, tag: str) -> str | None:
    try:
        value = row[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) else None


class DicomwebConnector:
    def __init__(self, config: DicomwebSource, auth: DicomwebAuth | None = None, timeout: float = 60.0) -> None:
        self._config = config
        self._base = config.url
        self._timeout = (min(10.0, timeout), timeout)
        self._session = requests.Session()
        if auth and auth.token:
            self._session.headers["Authorization"] = f"Bearer {auth.token}"
        elif auth and auth.username:
            self._session.auth = (auth.username, auth.password or "")

    def describe(self) -> str:
        parts = urlsplit(self._base)
        return f"DICOMweb source {parts.scheme}://{parts.netloc}"

    def _get(self, path: str, params: dict[str, Any] | None, accept: str, what: str,
             stream: bool = False) -> requests.Response:
        try:
            resp = self._session.get(self._base + path, params=params, headers={"Accept": accept},
                                     timeout=self._timeout, stream=stream)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise SourceUnavailable(f"{what}: the PACS did not answer ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise SourceUnavailable(f"{what}: request failed ({type(err).__name__})") from None
        if resp.status_code in (401, 403):
            resp.close()
            raise SourceMisconfigured(f"{what}: HTTP {resp.status_code} (check HIMIG_DICOMWEB_USERNAME/PASSWORD "
                                      "or HIMIG_DICOMWEB_TOKEN on the worker)")
        if resp.status_code == 429 or resp.status_code >= 500:
            resp.close()
            raise SourceUnavailable(f"{what}: HTTP {resp.status_code} from the PACS")
        return resp

    def _qido(self, path: str, params: dict[str, Any], what: str) -> list[Any] | None:
        """One QIDO-RS page; None when the resource does not exist (404)."""
        resp = self._get(path, params, "application/dicom+json", what)
        if resp.status_code == 404:
            return None
        if resp.status_code == 204 or not resp.content:
            return []
        if resp.status_code != 200:
            raise SourceUnavailable(f"{what}: unexpected HTTP {resp.status_code}")
        try:
            rows = resp.json()
        except ValueError:
            raise SourceUnavailable(f"{what}: the answer is not DICOM JSON") from None
        if not isinstance(rows, list):
            raise SourceUnavailable(f"{what}: the answer is not a JSON array")
        return rows

    def units(self) -> Iterator[str]:
        if self._config.study_uids:
            yield from self._config.study_uids
            return
        seen: set[str] = set()
        limit = self._config.page_size
        offset = 0
        for _ in range(MAX_QIDO_PAGES):
            rows = self._qido("/studies", {"limit": limit, "offset": offset, "includefield": STUDY_UID},
                              "searching studies (QIDO-RS)") or []
            if not rows:
                return  # an empty page ends the listing (a server may cap pages below our limit)
            for row in rows:
                uid = _first(row, STUDY_UID)
                if uid and uid not in seen:
                    seen.add(uid)
                    yield uid
            offset += len(rows)
        raise SourceUnavailable(f"searching studies (QIDO-RS): more than {MAX_QIDO_PAGES} pages")

    def _enumerate(self, study: str) -> dict[str, str | None] | None:
        """SOP Instance UID -> Series Instance UID of every instance of ``study``; None if the study is unknown."""
        found: dict[str, str | None] = {}
        offset = 0
        for _ in range(MAX_QIDO_PAGES):
            rows = self._qido(f"/studies/{quote(study, safe='')}/instances",
                              {"limit": INSTANCE_PAGE, "offset": offset, "includefield": [SERIES_UID, SOP_UID]},
                              "searching a study's instances (QIDO-RS)")
            if rows is None:
                return None if offset == 0 else found
            if not rows:
                return found
            for row in rows:
                sop = _first(row, SOP_UID)
                if sop:
                    found[sop] = _first(row, SERIES_UID)
            offset += len(rows)
        raise SourceUnavailable("searching a study's instances (QIDO-RS): too many pages")

    def pull(self, unit: str, landing: Landing) -> UnitOutcome:
        out = UnitOutcome()
        expected = self._enumerate(unit)
        if not expected:
            out.fail(study_key(landing.prefix, unit), "StudyNotFound",
                     "QIDO-RS found no instances for this study (unknown StudyInstanceUID or an empty study)")
            return out
        delivered: dict[str, str] = {}
        study_path = f"/studies/{quote(unit, safe='')}"
        statuses = {self._retrieve(study_path, unit, landing, delivered, out)}
        if 404 in statuses:
            # Orthanc keeps one StudyInstanceUID under two PatientIDs as two studies, and then WADO-RS finds
            # neither: fall back to series, then to instances, so every instance QIDO listed is still tried.
            by_series: dict[str | None, list[str]] = {}
            for sop, series in expected.items():
                by_series.setdefault(series, []).append(sop)
            for series, sops in sorted(by_series.items(), key=lambda kv: kv[0] or ""):
                status = 404 if series is None else self._retrieve(
                    f"{study_path}/series/{quote(series, safe='')}", unit, landing, delivered, out)
                statuses.add(status)
                if status == 404 and series is not None:
                    for sop in sorted(sops):
                        if sop not in delivered:
                            statuses.add(self._retrieve(
                                f"{study_path}/series/{quote(series, safe='')}/instances/{quote(sop, safe='')}",
                                unit, landing, delivered, out))
        answers = ", ".join(f"HTTP {s}" for s in sorted(statuses))
        for sop, series in sorted(expected.items()):
            if sop not in delivered:
                out.fail(instance_key(landing.prefix, unit, series, sop), "NotDelivered",
                         f"QIDO-RS listed this instance but WADO-RS did not return it ({answers})")
        return out

    def _retrieve(self, path: str, study: str, landing: Landing, delivered: dict[str, str], out: UnitOutcome) -> int:
        """WADO-RS ``path`` as one multipart stream, landing every part; returns the HTTP status."""
        what = "retrieving (WADO-RS)"
        resp = self._get(path, None, ACCEPT_DICOM, what, stream=True)
        try:
            if resp.status_code != 200:
                return int(resp.status_code)
            try:
                boundary = boundary_of(resp.headers.get("Content-Type", ""))
                for _headers, body, size in iter_parts(resp.iter_content(chunk_size=1 << 20), boundary):
                    self._land(study, body, size, landing, delivered)
                    out.pulled += 1
            except MultipartError as err:
                # Parts already landed are kept (same keys on retry); the retry re-pulls the whole unit.
                raise SourceUnavailable(f"{what}: {err}") from None
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
                raise SourceUnavailable(f"{what}: the stream broke ({type(err).__name__})") from None
            return 200
        finally:
            resp.close()

    def _land(self, study: str, body: IO[bytes], size: int, landing: Landing, delivered: dict[str, str]) -> None:
        try:
            ds = pydicom.dcmread(body, stop_before_pixels=True, force=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
            sop = str(ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", "")) or None
            series = str(ds.get("SeriesInstanceUID", "")) or None
        except (InvalidDicomError, ValueError, AttributeError, EOFError, OSError):
            sop = series = None
        body.seek(0)
        key = instance_key(landing.prefix, study, series, sop)
        if sop is None or sop in delivered:
            # Unidentifiable, or a second object with the same SOP UID (e.g. one StudyUID under two patients):
            # name it by content so nothing is overwritten; the pipeline's duplicate check decides its fate.
            digest = hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
            body.seek(0)
            key = key[: -len(".dcm")] + f".{digest.hexdigest()[:16]}.dcm"
        landing.put(key, body, size)
        if sop is not None:
            delivered.setdefault(sop, key)
