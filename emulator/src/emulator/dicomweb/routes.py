"""The DICOMweb route family: ``/datastore/{datastoreId}/studies...`` and ``/datastore/{datastoreId}/series``.

Claims every GET/HEAD/POST under those two prefixes (so the rest-json API never sees them), authenticates
(``auth.py``) from the request head before the server reads any body, takes a token from the throttler's bucket
for the four WADO-RS operations AWS publishes rates for (STOW-RS and QIDO-RS have none, so they are not
throttled), then routes to STOW-RS / QIDO-RS / WADO-RS. Path segments are percent-decoded one by one after
splitting, so ``..%2F`` stays inside one segment and then fails the UID check (400); UIDs never reach the file
system anyway (blobs are addressed by SHA-256).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from emulator.config import Settings
from emulator.dicomweb.auth import DicomwebAuth
from emulator.dicomweb.catalog import IMAGE_SET_ID_RE, Catalog
from emulator.dicomweb.multipart import split_accept
from emulator.dicomweb.qido import Searcher, parse_query
from emulator.dicomweb.stow import Stow
from emulator.dicomweb.wado import Wado
from emulator.errors import (
    AwsError,
    NotAcceptableException,
    UnknownOperationException,
    ValidationException,
)
from emulator.medicalimaging.dicom import UID_RE
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.protocol import Dispatcher, Handler, HttpRequest, HttpResponse, error_response

PREFIX_RE = re.compile(r"^/datastore/[^/]+/(studies|series)(/.*)?$")
DATASTORE_ID_RE = re.compile(r"[0-9a-z]{32}")
HOST_RE = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
DICOM_JSON = "application/dicom+json"
_AUTHENTICATED = "dicomweb.authenticated"


class DicomWebApi(Dispatcher):
    def __init__(self, backend: MedicalImagingBackend, settings: Settings,
                 throttle: Callable[[str], None] | None = None) -> None:
        self.backend = backend
        self.settings = settings
        # Throttler.check of the rest-json API (one account, so the same buckets); None = never throttled.
        self.throttle = throttle
        self.auth = DicomwebAuth(settings)
        self.catalog = Catalog(backend)
        self.search = Searcher(self.catalog)
        self.wado = Wado(self.catalog)
        self.stow = Stow(backend)

    # ---- Dispatcher

    def match(self, request: HttpRequest) -> Handler | None:
        if request.method not in ("GET", "HEAD", "POST") or not PREFIX_RE.match(request.raw_path):
            return None
        return self._handle

    def body_limit(self, method: str, raw_path: str) -> int | None:
        """STOW-RS bodies may be up to ``--dicomweb-max-body-bytes`` (AWS: 1 GB), not the API's limit."""
        if method == "POST" and PREFIX_RE.match(raw_path):
            return self.settings.dicomweb_max_body_bytes
        return None

    def before_body(self, request: HttpRequest) -> None:
        """Authenticate from the head: an unauthenticated STOW-RS is refused before its (up to 1 GB) body is read.

        The server answers the raised 401/403 itself and closes the connection.
        """
        if self.match(request) is None:
            return
        self.auth.check(request)
        request.context[_AUTHENTICATED] = True

    def _handle(self, request: HttpRequest) -> HttpResponse:
        try:
            if not request.context.get(_AUTHENTICATED):  # requests not passed through before_body (direct calls)
                self.auth.check(request)
            self.auth.check_body(request)
            response = self._route(request)
        except AwsError as err:
            response = error_response(err, request.request_id)
            response.headers.update(getattr(err, "headers", {}))
        response.headers.setdefault("x-amzn-RequestId", request.request_id)
        return response

    # ---- routing

    def _route(self, request: HttpRequest) -> HttpResponse:
        raw = request.raw_path.rstrip("/")
        segments = [urllib.parse.unquote(s) for s in raw.split("/")[1:]]
        # segments: ["datastore", ds, "studies"|"series", ...]
        ds = segments[1]
        if not DATASTORE_ID_RE.fullmatch(ds):
            raise ValidationException("1 validation error detected: Value at 'datastoreId' failed to satisfy "
                                      "constraint: Member must satisfy regular expression pattern: [0-9a-z]{32}")
        rest = segments[2:]
        post = request.method == "POST"
        operation = None if post else _wado_operation(rest)
        if operation is not None and self.throttle is not None:
            # After authentication (AWS throttles per account), before any lookup: a throttled call does nothing.
            self.throttle(operation)
        image_set_id = self._image_set_id(request)
        base_url = self._base_url(request, ds)
        self.catalog.check_datastore(ds)

        if rest == ["studies"] and post:
            return self._stow(request, ds, None, base_url)
        if len(rest) == 2 and rest[0] == "studies" and post:
            return self._stow(request, ds, _uid(rest[1], "StudyInstanceUID"), base_url)
        if post:
            raise UnknownOperationException(f"No operation matches {request.method} on this DICOMweb path")

        if rest == ["studies"]:
            return self._json(request, lambda: self.search.studies(ds, parse_query(request.query), image_set_id,
                                                                   base_url))
        if rest == ["series"]:
            return self._json(request, lambda: self.search.series(ds, parse_query(request.query), image_set_id,
                                                                  base_url, None))
        if len(rest) >= 3 and rest[0] == "studies" and rest[2] == "series":
            study = _uid(rest[1], "StudyInstanceUID")
            tail = rest[3:]
            if not tail:
                return self._json(request, lambda: self.search.series(
                    ds, parse_query(request.query), image_set_id, base_url, study))
            series = _uid(tail[0], "SeriesInstanceUID")
            tail = tail[1:]
            if tail == ["instances"]:
                return self._json(request, lambda: self.search.instances(
                    ds, parse_query(request.query), image_set_id, base_url, study, series))
            if tail == ["metadata"]:
                return self._json(request, lambda: self.wado.series_metadata(ds, study, series, image_set_id))
            if len(tail) >= 2 and tail[0] == "instances":
                sop = _uid(tail[1], "SOPInstanceUID")
                accept = request.headers.get("accept")
                if len(tail) == 2:
                    resp = self.wado.instance(ds, study, series, sop, image_set_id, accept)
                    resp.headers["x-amzn-RequestId"] = request.request_id
                    return resp
                if tail[2:] == ["metadata"]:
                    return self._json(request, lambda: self.wado.instance_metadata(ds, study, series, sop,
                                                                                   image_set_id))
                if len(tail) == 4 and tail[2] == "frames":
                    resp = self.wado.frames(ds, study, series, sop, tail[3], image_set_id, accept)
                    resp.headers["x-amzn-RequestId"] = request.request_id
                    return resp
        raise UnknownOperationException(f"No DICOMweb operation matches {request.method} on this path")

    # ---- helpers

    def _stow(self, request: HttpRequest, ds: str, study: str | None, base_url: str) -> HttpResponse:
        result = self.stow.store(ds, study, request.headers.get("content-type"), request.body, base_url)
        return HttpResponse(result.status, {"Content-Type": DICOM_JSON, "x-amzn-RequestId": request.request_id},
                            json.dumps(result.body, separators=(",", ":")).encode())

    def _json(self, request: HttpRequest, produce: Callable[[], Any]) -> HttpResponse:
        accept = request.headers.get("accept", "")
        if accept.strip() and not any(
                r.mime in (DICOM_JSON, "application/json", "*/*", "application/*") for r in split_accept(accept)):
            raise NotAcceptableException("This resource is available as application/dicom+json only")
        payload = produce()
        return HttpResponse(200, {"Content-Type": DICOM_JSON, "x-amzn-RequestId": request.request_id},
                            json.dumps(payload, separators=(",", ":")).encode())

    def _image_set_id(self, request: HttpRequest) -> str | None:
        values = request.query.get("imageSetId")
        if not values:
            return None
        value = values[-1]
        if not IMAGE_SET_ID_RE.fullmatch(value):
            raise ValidationException("1 validation error detected: Value at 'imageSetId' failed to satisfy "
                                      "constraint: Member must satisfy regular expression pattern: [0-9a-z]{32}")
        return value

    def _base_url(self, request: HttpRequest, ds: str) -> str:
        # dicomweb-client sends Host without the port; then the configured address is the better guess.
        host = request.headers.get("host", "")
        if not HOST_RE.fullmatch(host) or not re.search(r":[0-9]+$", host):
            host = f"{self.settings.host}:{self.settings.port}"
        return f"http://{host}/datastore/{ds}"


def _wado_operation(rest: list[str]) -> str | None:
    """The AWS action name of a WADO-RS path (``rest`` = segments after the data store id), else None."""
    if len(rest) < 5 or rest[0] != "studies" or rest[2] != "series":
        return None
    tail = rest[4:]
    if tail == ["metadata"]:
        return "GetDICOMSeriesMetadata"
    if len(tail) >= 2 and tail[0] == "instances":
        if len(tail) == 2:
            return "GetDICOMInstance"
        if tail[2:] == ["metadata"]:
            return "GetDICOMInstanceMetadata"
        if len(tail) == 4 and tail[2] == "frames":
            return "GetDICOMInstanceFrames"
    return None


def _uid(segment: str, name: str) -> str:
    if not UID_RE.fullmatch(segment):
        # The value itself is not echoed: it may be anything a client put in the path.
        raise ValidationException(f"1 validation error detected: Value at '{name}' failed to satisfy constraint: "
                                  "Member must be a DICOM UID (digits and dots, at most 64 characters)")
    return segment
