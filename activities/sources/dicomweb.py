"""DICOMweb connector: QIDO-RS enumerates studies (limit/offset pages) and each study's instances, WADO-RS
pulls a study as one ``multipart/related`` stream that is written part by part to the landing prefix.

Every instance QIDO enumerated but WADO-RS did not deliver becomes a failed report line, and listing rows
without a usable UID are counted in an ``UnusableListing`` row. Credentials come from worker settings, never
from workflow input, and are only ever sent to an origin the worker allows (``HIMIG_DICOMWEB_ALLOWED_ORIGINS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote, urlsplit

import requests

from activities.client_credentials import TokenError, TokenRefused, TokenSource
from activities.sources.common import (
    Landing,
    SourceForbidden,
    SourceMisconfigured,
    SourceUnavailable,
    StudyConnector,
    UnitOutcome,
    header_uids,
    instance_key,
    landing_key,
)
from activities.sources.multipart import MultipartError, boundary_of, iter_parts
from activities.sources.study_search import Answer, search_studies, window
from contracts.sources import DicomwebSource, origin_of

MAX_QIDO_PAGES = 100_000  # bounds every paging loop (100k pages x 1000 rows is far beyond any PACS we meet)
INSTANCE_PAGE = 1000
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class DicomwebAuth:
    """HTTP credentials for the PACS (from worker settings): bearer tokens from an OAuth2 client (``tokens``,
    refreshed as they expire), one fixed bearer token, or basic auth; the first configured wins."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tokens: TokenSource | None = None

    def __bool__(self) -> bool:
        return bool(self.tokens or self.token or self.username or self.password)


def origin_refusal(url: str, auth: DicomwebAuth | None, allowed: tuple[str, ...]) -> str | None:
    """Why the worker must not talk to ``url`` (None when it may).

    Workflow input names the URL, so without this anyone who can start a migration could have the worker send its
    PACS credentials to a server of their choosing, or fetch URLs from inside the worker's network.
    """
    origin = origin_of(url)
    if allowed and origin not in allowed:
        return f"source_connector.url: {origin} is not one of the origins this worker may contact " \
               "(HIMIG_DICOMWEB_ALLOWED_ORIGINS)"
    if auth and not allowed:
        return ("source_connector.url: the worker has DICOMweb credentials but HIMIG_DICOMWEB_ALLOWED_ORIGINS is "
                "empty; credentials are only sent to listed origins")
    return None


def page_uids(fetch: Callable[[int], list[Any] | None], tag: str, max_pages: int, what: str) -> Iterator[tuple[str | None, Any]]:
    """Page a QIDO-RS search by ``offset``: ``(uid, row)`` for every row, ``(None, row)`` when it has no usable
    ``tag`` value. ``fetch(offset)`` returns a page (None: the resource does not exist, treated as empty).

    Ends at an empty page, a page equal to the first or the previous one, or a page that adds no new UID (a
    server that ignores ``offset`` would otherwise return its first page forever); a short page does not end it, since a server may cap pages below ``limit``.
    More than ``max_pages`` pages is an error rather than an endless loop.
    """
    seen: set[str] = set()
    earlier: list[list[Any]] = []  # the first and the previous page, to recognise a repeated page
    offset = 0
    for _ in range(max_pages):
        rows = fetch(offset) or []
        if not rows or rows in earlier:
            return  # the end, or a server repeating a page (its UID-less rows were counted the first time)
        new = 0
        for row in rows:
            uid = _first(row, tag)
            if not uid:
                yield None, row
            elif uid not in seen:
                seen.add(uid)
                new += 1
                yield uid, row
        if new == 0:
            return
        earlier = [earlier[0] if earlier else rows, rows]
        offset += len(rows)
    raise SourceUnavailable(f"{what}: more than {max_pages} pages")


def _first(row: Any, tag: str) -> str | None:
    try:
        value = row[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) else None


class DicomwebConnector(StudyConnector):
    SEARCH = "QIDO-RS"
    ROWS = "entries"

    def __init__(self, config: DicomwebSource, auth: DicomwebAuth | None = None, timeout: float = 60.0,
                 allowed_origins: tuple[str, ...] = ()) -> None:
        self._config = config
        self._base = config.url
        self._timeout = (min(10.0, timeout), timeout)
        self._session = requests.Session()
        # Checked before every request; while it is set, no credentials are even attached to the session.
        self._refusal = origin_refusal(config.url, auth, allowed_origins)
        # Asked for a token per request (cached in the source), so a pull outlives any one token.
        self._tokens = auth.tokens if self._refusal is None and auth else None
        if self._tokens is None and self._refusal is None and auth and auth.token:
            self._session.headers["Authorization"] = f"Bearer {auth.token}"
        elif self._tokens is None and self._refusal is None and auth and auth.username:
            self._session.auth = (auth.username, auth.password or "")

    def describe(self) -> str:
        parts = urlsplit(self._base)
        return f"DICOMweb source {parts.scheme}://{parts.netloc}"

    def _get(self, path: str, params: dict[str, Any] | None, accept: str, what: str,
             stream: bool = False) -> requests.Response:
        if self._refusal:
            raise SourceMisconfigured(self._refusal)
        resp, bearer = self._send(path, params, accept, what, stream)
        if resp.status_code == 401 and self._tokens is not None and bearer is not None:
            # The token expired (or was revoked) before our schedule said: one fresh token, one more try.
            resp.close()
            self._tokens.rejected(bearer)
            resp, bearer = self._send(path, params, accept, what, stream)
        if resp.status_code in (401, 403):
            resp.close()
            hint = ("HIMIG_DICOMWEB_OIDC_* (the token's audience and scope)" if self._tokens is not None
                    else "HIMIG_DICOMWEB_USERNAME/PASSWORD or HIMIG_DICOMWEB_TOKEN")
            raise SourceForbidden(f"{what}: HTTP {resp.status_code} (check {hint} on the worker)")
        if 300 <= resp.status_code < 400:
            resp.close()
            raise SourceMisconfigured(f"{what}: HTTP {resp.status_code} redirect (not followed; set "
                                      "source_connector.url to the PACS's final DICOMweb root)")
        if resp.status_code == 429 or resp.status_code >= 500:
            resp.close()
            raise SourceUnavailable(f"{what}: HTTP {resp.status_code} from the PACS")
        return resp

    def _send(self, path: str, params: dict[str, Any] | None, accept: str, what: str,
              stream: bool) -> tuple[requests.Response, str | None]:
        headers = {"Accept": accept}
        bearer = None
        if self._tokens is not None:
            try:
                bearer = self._tokens.token()
            except TokenRefused as err:
                raise SourceForbidden(f"{what}: {err}") from None
            except TokenError as err:
                raise SourceUnavailable(f"{what}: no bearer token: {err}") from None
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            # No redirects: a redirect could lead the request (and its credentials) to an origin not allowed.
            resp = self._session.get(self._base + path, params=params, headers=headers,
                                     timeout=self._timeout, stream=stream, allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise SourceUnavailable(f"{what}: the PACS did not answer ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise SourceUnavailable(f"{what}: request failed ({type(err).__name__})") from None
        return resp, bearer

    def _qido(self, path: str, params: dict[str, Any], what: str) -> list[Any] | None:
        """One QIDO-RS page; None when the resource does not exist (404)."""
        return self._qido_page(path, params, what)[0]

    def _qido_page(self, path: str, params: dict[str, Any], what: str) -> tuple[list[Any] | None, bool]:
        """One QIDO-RS page, and whether the PACS says it cut the answer off (``Warning: 299 ...``, PS3.18
        8.3.4.5: "The number of results exceeded the maximum supported by the server")."""
        resp = self._get(path, params, "application/dicom+json", what)
        warned = any(w.strip().startswith("299") for w in resp.headers.get("Warning", "").split(","))
        return self._rows(resp, what), warned

    def _rows(self, resp: requests.Response, what: str) -> list[Any] | None:
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

    def probe(self) -> None:
        """One tiny QIDO-RS search: raises when the PACS as a whole is unreachable or refuses us."""
        self._qido("/studies", {"limit": 1, "includefield": STUDY_UID}, "probing the PACS (QIDO-RS)")

    def units(self) -> Iterator[str]:
        return self._study_units(self._config.study_uids, self._list_studies)

    def _list_studies(self) -> Iterator[str | None]:
        """Every study QIDO-RS lists (once each), split by date while answers are cut off (`study_search`)."""
        c = self._config
        what = "searching studies (QIDO-RS)"

        def search(dates: str | None, modality: str | None) -> Answer:
            keys: dict[str, Any] = {"includefield": STUDY_UID}
            if dates:
                keys["StudyDate"] = dates
            if modality:
                keys["ModalitiesInStudy"] = modality
            warned = False

            def fetch(offset: int) -> list[Any] | None:
                nonlocal warned
                rows, cut = self._qido_page("/studies", {"limit": c.page_size, "offset": offset, **keys}, what)
                warned = warned or cut
                return rows

            return Answer([uid for uid, _row in page_uids(fetch, STUDY_UID, MAX_QIDO_PAGES, what)], warned)

        yield from search_studies(search, window(c.study_date_from, c.study_date_to), c.modalities, c.result_cap)

    def _enumerate(self, study: str) -> tuple[dict[str, str | None] | None, int]:
        """(SOP Instance UID -> Series Instance UID of every instance of ``study``, or None if the study is
        unknown; the number of listed rows without a SOP Instance UID)."""
        found: dict[str, str | None] = {}
        unusable = 0
        what = "searching a study's instances (QIDO-RS)"
        missing = False

        def fetch(offset: int) -> list[Any] | None:
            nonlocal missing
            rows = self._qido(f"/studies/{quote(study, safe='')}/instances",
                              {"limit": INSTANCE_PAGE, "offset": offset, "includefield": [SERIES_UID, SOP_UID]}, what)
            missing = missing or (rows is None and offset == 0)
            return rows

        for sop, row in page_uids(fetch, SOP_UID, MAX_QIDO_PAGES, what):
            if sop is None:
                unusable += 1
            else:
                found[sop] = _first(row, SERIES_UID)
        if missing:
            # The study-level instance search is optional in practice: HealthImaging's DICOMweb (an OIDC- or
            # SigV4-protected source) offers only the per-series one. Unknown studies end up None either way.
            return self._enumerate_by_series(study)
        return found, unusable

    def _instances(self, study: str) -> tuple[dict[str, str | None], int, dict[str, int]]:
        # Paging stops at a short answer, and some PACS cut an instance search off silently below our page size
        # (Orthanc's LimitFindInstances answers the cap plus one, unflagged). The study's own count of instances
        # (NumberOfStudyRelatedInstances, where the PACS gives it) shows such a cut: one more search per study.
        found, unusable = self._enumerate(study)
        if not found:
            return {}, unusable, {}
        rows = self._qido("/studies", {"StudyInstanceUID": study, "includefield": STUDY_INSTANCES},
                          "counting a study's instances (QIDO-RS)")
        try:
            total = int((rows or [{}])[0][STUDY_INSTANCES]["Value"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            total = 0  # not given: nothing to compare with
        return found, unusable, ({"": len(found) + unusable} if total > len(found) + unusable else {})

    def _enumerate_by_series(self, study: str) -> tuple[dict[str, str | None] | None, int]:
        found: dict[str, str | None] = {}
        unusable = 0
        study_path = f"/studies/{quote(study, safe='')}/series"
        what = "searching a study's series (QIDO-RS)"
        first_page: list[Any] | None = []

        def fetch_series(offset: int) -> list[Any] | None:
            nonlocal first_page
            rows = self._qido(study_path, {"limit": INSTANCE_PAGE, "offset": offset, "includefield": SERIES_UID}, what)
            if offset == 0:
                first_page = rows
            return rows

        series_uids = []
        for series, _row in page_uids(fetch_series, SERIES_UID, MAX_QIDO_PAGES, what):
            if series is None:
                unusable += 1
            else:
                series_uids.append(series)
        if first_page is None:
            return None, 0
        for series in series_uids:
            path = f"{study_path}/{quote(series, safe='')}/instances"

            def fetch(offset: int, path: str = path) -> list[Any] | None:
                return self._qido(path, {"limit": INSTANCE_PAGE, "offset": offset, "includefield": SOP_UID},
                                  "searching a series' instances (QIDO-RS)")

            for sop, _row in page_uids(fetch, SOP_UID, MAX_QIDO_PAGES, "searching a series' instances (QIDO-RS)"):
                if sop is None:
                    unusable += 1
                else:
                    found[sop] = series
        return found, unusable

    def pull(self, unit: str, landing: Landing) -> UnitOutcome:
        if (marked := self._marker_outcome(unit, landing)) is not None:
            return marked
        out = UnitOutcome()
        expected, unusable = self._enumerate(unit)
        if not self._check_listing(unit, landing, out, bool(expected), unusable) or expected is None:
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
        series, sop = header_uids(body)
        landing.put(landing_key(landing.prefix, study, series, sop, body, delivered), body, size)
