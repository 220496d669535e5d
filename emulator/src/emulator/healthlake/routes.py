"""The HealthLake route family: one :class:`~emulator.protocol.Dispatcher` for two kinds of requests.

* The control plane, AWS ``json`` protocol (1.0, as botocore's ``healthlake`` model says): ``POST /`` with
  ``X-Amz-Target: HealthLake.<Operation>``. Only such requests are claimed, so the HealthImaging rest-json API
  and DICOMweb on the same port are untouched. The body is parsed and validated against the model with
  ``emulator.protocol``'s helpers; errors are ``{"__type": "<namespace>#<Code>", "message": ...}``, which is what
  botocore's json parser reads (it ignores ``x-amzn-ErrorType`` for this protocol).
* The FHIR REST API under ``/datastore/{datastoreId}/r4/`` (every method): the ``r4`` segment is unique to
  HealthLake, so claiming that prefix cannot shadow HealthImaging's ``/datastore/{datastoreId}...`` routes.
  Errors are FHIR OperationOutcomes (``application/fhir+json``) with the AWS error code in ``x-amzn-ErrorType``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from typing import Any

from botocore.model import OperationModel

from emulator.errors import (
    AwsError,
    InternalServerException,
    SerializationException,
    UnknownOperationException,
)
from emulator.healthlake.fhir import Issue
from emulator.healthlake.handlers import FhirError, FhirRest, HealthLakeHandlers, outcome_body
from emulator.protocol import (
    Dispatcher,
    Handler,
    HttpRequest,
    HttpResponse,
    from_json,
    load_json_body,
    load_service_model,
    operation_method,
    to_json,
    validate_input,
)

log = logging.getLogger("emulator.healthlake")

JSON_10 = "application/x-amz-json-1.0"
FHIR_JSON = "application/fhir+json"
FHIR_PATH_RE = re.compile(r"^/datastore/(?P<ds>[^/]+)/r4(?:/(?P<rest>.*))?$")
# Protocol-level failures come from the front end, not the service, and carry its namespace.
_CORAL = {"SerializationException", "UnknownOperationException"}


def _coral_path(message: str) -> str:
    """Member paths in AWS json-protocol messages start each member lower-case ('jobOutputDataConfig...')."""
    head, sep, tail = message.rpartition("' failed to satisfy constraint: ")
    if not sep:
        return message
    before, at, path = head.rpartition(" at '")
    if not at:
        return message
    path = ".".join(p[:1].lower() + p[1:] for p in path.split("."))
    return f"{before}{at}{path}{sep}{tail}"


class HealthLakeService(Dispatcher):
    """Claims ``POST /`` + ``X-Amz-Target: HealthLake.*`` and ``/datastore/{id}/r4/...``."""

    def __init__(self, handlers: HealthLakeHandlers, fhir: FhirRest) -> None:
        self.model = load_service_model("healthlake")
        self.prefix = str(self.model.metadata.get("targetPrefix", "HealthLake")) + "."
        self.namespace = "com.amazonaws.healthlake"
        self.handlers = handlers
        self.fhir = fhir

    def match(self, request: HttpRequest) -> Handler | None:
        if request.method == "POST" and request.raw_path == "/" \
                and request.headers.get("x-amz-target", "").startswith(self.prefix):
            return self._json
        m = FHIR_PATH_RE.match(request.raw_path)
        if m:
            return lambda req, m=m: self._fhir(req, m.group("ds"), m.group("rest"))  # type: ignore[misc]
        return None

    # ---- json protocol

    def _json(self, request: HttpRequest) -> HttpResponse:
        try:
            return self._invoke(request)
        except AwsError as err:
            if err.status >= 500:
                log.warning("HealthLake request failed with %s: %s", err.code, err.message)
            return self._error(err, request.request_id)
        except Exception:
            log.exception("unhandled error in a HealthLake operation")
            return self._error(InternalServerException("Internal server error"), request.request_id)

    def _invoke(self, request: HttpRequest) -> HttpResponse:
        op_name = request.headers["x-amz-target"][len(self.prefix):]
        if op_name not in self.model.operation_names:
            shown = op_name if re.fullmatch(r"[A-Za-z0-9]{1,64}", op_name) else "<invalid>"
            raise UnknownOperationException(f"Unknown operation {self.prefix}{shown}", status=400)
        op: OperationModel = self.model.operation_model(op_name)
        doc = load_json_body(request.body)
        if not isinstance(doc, dict):
            raise SerializationException("Request body must be a JSON object")
        params: dict[str, Any] = {}
        if op.input_shape is not None:
            params = from_json(op.input_shape, doc, "")
            validate_input(op, params, _coral_path)
        output = operation_method(self.handlers, op)(params, request) or {}
        body = to_json(op.output_shape, output) if op.output_shape is not None else {}
        return HttpResponse(200, {"Content-Type": JSON_10, "x-amzn-RequestId": request.request_id},
                            json.dumps(body, separators=(",", ":")).encode())

    def _error(self, err: AwsError, request_id: str) -> HttpResponse:
        namespace = "com.amazon.coral.service" if err.code in _CORAL else self.namespace
        # The model's error shapes carry "Message"; botocore reads "message" or "Message".
        body = {"__type": f"{namespace}#{err.code}", "Message": err.message}
        # awsJson1_0 without httpError traits: every client error is 400 (404/409 are rest-json statuses).
        status = 400 if 400 <= err.status < 500 else err.status
        return HttpResponse(status, {"Content-Type": JSON_10, "x-amzn-RequestId": request_id,
                                         "x-amzn-ErrorType": err.code},
                            json.dumps(body, separators=(",", ":")).encode())

    # ---- FHIR REST

    def _fhir(self, request: HttpRequest, datastore_id: str, rest: str | None) -> HttpResponse:
        headers = {"Content-Type": FHIR_JSON, "x-amzn-RequestId": request.request_id}
        try:
            # Each segment is decoded on its own: an encoded "/" or ".." stays inside one segment and is refused.
            segments = [urllib.parse.unquote(s) for s in rest.split("/")] if rest else []
            if segments and segments[-1] == "" and len(segments) > 1:
                segments = segments[:-1]  # tolerate one trailing slash
            status, payload = self.fhir.handle(request, urllib.parse.unquote(datastore_id), segments)
            return HttpResponse(status, headers, json.dumps(payload, separators=(",", ":")).encode())
        except FhirError as err:
            headers["x-amzn-ErrorType"] = err.aws_code
            return HttpResponse(err.status, headers, outcome_body(err.issue))
        except AwsError as err:
            headers["x-amzn-ErrorType"] = err.code
            code = "not-found" if err.status == 404 else "invalid" if err.status < 500 else "exception"
            return HttpResponse(err.status, headers, outcome_body(Issue("error", code, err.message)))
        except Exception:
            log.exception("unhandled error in a HealthLake FHIR request")
            headers["x-amzn-ErrorType"] = "InternalServerException"
            return HttpResponse(500, headers, outcome_body(Issue("error", "exception", "Internal server error")))
