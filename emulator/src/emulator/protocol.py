"""The AWS protocols, driven generically by a botocore service model: the emulator's one model-driven router.

Nothing here knows about HealthImaging: routes, request parsing, validation and response serialization all come
from the operation and shape definitions in botocore's ``service-2.json`` (the same model the client uses), in the
spirit of moto's ``moto/core/serialize.py``. A service plugs in by giving a handler object with one method per
operation, named in snake_case (``start_dicom_import_job``) and taking/returning plain dicts keyed by member
name (:func:`operation_method`).

:class:`RestJsonService` serves a whole ``rest-json`` model (HealthImaging): an operation is found from the HTTP
method and path through the model's URI templates. HealthLake's ``json`` protocol names the operation in
``X-Amz-Target`` instead (``healthlake/routes.py``) and uses the same model helpers: :func:`from_json`,
:func:`validate_input`, :func:`operation_method`, :func:`to_json`.

Conventions implemented (botocore's own serializer/parser is the reference):

* URI labels ``{name}`` match one path segment, greedy labels ``{name+}`` match the rest; both are percent-decoded
  after matching, so an encoded ``..%2F..`` stays inside one label and then fails the member's pattern.
* ``querystring`` / ``header`` / ``headers`` members come from the query and headers, with type conversion.
* The JSON body holds the other members, unless the input declares a ``payload`` member, in which case the body is
  that member (a structure as JSON, a blob/string as raw bytes).
* Output: timestamps as epoch seconds, blobs base64 inside JSON; a streaming ``payload`` blob is the raw body and
  header-bound members become headers.
* Errors: HTTP status from the error shape, ``x-amzn-ErrorType`` header and ``{"message": ...}`` body.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import json
import math
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import botocore.session
from botocore import xform_name
from botocore.model import OperationModel, ServiceModel, Shape, StructureShape

from emulator.errors import (
    AwsError,
    NotImplementedException,
    SerializationException,
    ValidationException,
)

JSON_CONTENT_TYPE = "application/json"


@dataclass
class HttpRequest:
    """A parsed HTTP request as the server hands it to a protocol."""

    method: str
    raw_path: str  # still percent-encoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    raw_query: str = ""  # as sent, still percent-encoded (SigV4 verification recomputes the canonical query)
    # Notes a family leaves for itself between before_body and its handler (DICOMweb: already authenticated).
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def json_response(status: int, payload: Any, request_id: str | None = None) -> HttpResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": JSON_CONTENT_TYPE}
    if request_id:
        headers["x-amzn-RequestId"] = request_id
    return HttpResponse(status, headers, body)


def error_response(err: AwsError, request_id: str | None = None) -> HttpResponse:
    """Serialize an error the rest-json way: status, ``x-amzn-ErrorType`` header, ``{"message"}`` body."""
    resp = json_response(err.status, {"message": err.message}, request_id)
    resp.headers["x-amzn-ErrorType"] = err.code
    return resp


Handler = Callable[[HttpRequest], HttpResponse]


class Dispatcher:
    """Anything that can claim a request: a protocol family (rest-json API, json-1.1, DICOMweb, admin...)."""

    def match(self, request: HttpRequest) -> Handler | None:  # pragma: no cover - interface
        raise NotImplementedError

    def body_limit(self, method: str, raw_path: str) -> int | None:
        """A request-body limit replacing ``--max-body-bytes`` for requests this family serves, or None.

        A family that returns a limit also accepts ``Transfer-Encoding: chunked`` bodies up to it (DICOMweb
        STOW-RS: up to 1 GB, and dicomweb-client sends bodies over 1 MB chunked).
        """
        return None

    def before_body(self, request: HttpRequest) -> None:
        """Vet a request from its head alone, before the server reads the body (``request.body`` is still empty).

        Raise an :class:`AwsError` to refuse it: the server answers without reading the body and closes the
        connection. DICOMweb authenticates here, so an unauthenticated STOW-RS cannot make it read up to 1 GB.
        """
        return None


@cache
def load_service_model(service_name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service_name)


# --------------------------------------------------------------------------------------------------------------
# Validation


# Unicode separators (\p{Z}: Zs, Zl, Zp), spelled out because Python's ``re`` has no property classes.
_UNICODE_Z = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _java_to_python_regex(pattern: str) -> str:
    # Smithy/Coral patterns are Java regexes; only a few constructs differ from Python's.
    pattern = pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]")
    # Java's \d is ASCII digits only (without UNICODE_CHARACTER_CLASS); Python's would take "١٢٣" as digits too.
    pattern = pattern.replace(r"\d", "[0-9]")
    # The json-protocol models (HealthLake) use Unicode properties, always inside a character class that also
    # lists "_" and digits: there \p{L} / \p{N} are Python's \w (letters, numbers, "_"); [\P{M}\p{M}] is anything.
    return (pattern.replace(r"\P{M}\p{M}", r"\s\S").replace(r"\p{L}", r"\w").replace(r"\p{N}", r"\w")
            .replace(r"\p{Z}", _UNICODE_Z))


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(_java_to_python_regex(pattern))


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return "java.nio.HeapByteBuffer"
    return str(value)


def validate_shape(shape: Shape, value: Any, path: str, errors: list[str], sensitive: bool = False) -> None:
    """Append AWS-worded constraint violations of ``value`` against ``shape`` to ``errors``.

    Sensitive shapes (patient data in this model) are reported without their value, as AWS does, which also
    keeps PHI out of error messages and logs.
    """
    sensitive = sensitive or bool(shape.metadata.get("sensitive"))
    shown = "Value" if sensitive else f"Value '{_fmt_value(value)}'"
    meta = shape.metadata
    type_name = shape.type_name

    def fail(constraint: str) -> None:
        errors.append(f"{shown} at '{path}' failed to satisfy constraint: {constraint}")

    if type_name == "structure":
        assert isinstance(shape, StructureShape)
        members = shape.members
        for name in shape.required_members:
            if value.get(name) is None:
                errors.append(f"Value null at '{_join(path, name)}' failed to satisfy constraint: "
                              "Member must not be null")
        set_members = [n for n in members if value.get(n) is not None]
        if shape.metadata.get("union") and len(set_members) != 1:
            errors.append(f"Value at '{path or shape.name}' failed to satisfy constraint: "
                          "Union must have exactly one member set")
        for name in set_members:
            validate_shape(members[name], value[name], _join(path, name), errors, sensitive)
        return
    if type_name == "list":
        _check_len(len(value), meta, fail)
        for i, item in enumerate(value, start=1):
            validate_shape(shape.member, item, f"{path}.{i}.member", errors, sensitive)  # type: ignore[attr-defined]
        return
    if type_name == "map":
        _check_len(len(value), meta, fail)
        for k, v in value.items():
            validate_shape(shape.key, k, f"{path}.key", errors, sensitive)  # type: ignore[attr-defined]
            validate_shape(shape.value, v, f"{path}.{k}.member", errors, sensitive)  # type: ignore[attr-defined]
        return
    if type_name == "string":
        _check_len(len(value), meta, fail)
        enum = shape.enum  # type: ignore[attr-defined]
        if enum and value not in enum:
            fail(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        pattern = meta.get("pattern")
        if pattern and not _compiled(pattern).fullmatch(value):
            fail(f"Member must satisfy regular expression pattern: {pattern}")
        return
    if type_name == "blob":
        _check_len(len(value), meta, fail)
        return
    if type_name in ("integer", "long", "float", "double"):
        if "min" in meta and value < meta["min"]:
            fail(f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            fail(f"Member must have value less than or equal to {meta['max']}")


def _check_len(length: int, meta: dict[str, Any], fail: Callable[[str], None]) -> None:
    if "min" in meta and length < meta["min"]:
        fail(f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and length > meta["max"]:
        fail(f"Member must have length less than or equal to {meta['max']}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def validation_error(errors: list[str]) -> ValidationException:
    n = len(errors)
    return ValidationException(f"{n} validation error{'s' if n != 1 else ''} detected: " + "; ".join(errors))


def validate_input(op: OperationModel, params: dict[str, Any],
                   reword: Callable[[str], str] | None = None) -> None:
    """Raise one ``ValidationException`` listing every constraint ``params`` break in the operation's input.

    ``reword`` adjusts each message (the json protocol spells member paths lower-camel).
    """
    if op.input_shape is None:
        return
    errors: list[str] = []
    validate_shape(op.input_shape, params, "", errors)
    if errors:
        raise validation_error([reword(e) for e in errors] if reword else errors)


def operation_method(handlers: object, op: OperationModel) -> Callable[..., dict[str, Any] | None]:
    """The handler object's snake_case method for ``op``; ``NotImplementedException`` (501) when it has none."""
    method: Callable[..., dict[str, Any] | None] | None = getattr(handlers, xform_name(op.name), None)
    if method is None:
        raise NotImplementedException(f"{op.name} is not implemented by this emulator yet")
    return method


# --------------------------------------------------------------------------------------------------------------
# Request parsing


def _parse_timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("boolean is not a timestamp")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(text)  # raises on garbage
        return parsed.timestamp()


def _from_text(shape: Shape, text: str, where: str) -> Any:
    """Convert a URI label / query / header string to the member's Python type."""
    t = shape.type_name
    try:
        if t in ("integer", "long"):
            return int(text)
        if t in ("float", "double"):
            return float(text)
        if t == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if t == "timestamp":
            return _parse_timestamp(text)
        if t == "blob":
            return base64.b64decode(text, validate=True)
    except (ValueError, TypeError, binascii.Error):
        raise ValidationException(
            f"1 validation error detected: Value '{text}' at '{where}' failed to satisfy constraint: "
            f"Member must be a valid {t}"
        ) from None
    return text


def from_json(shape: Shape, value: Any, where: str) -> Any:
    """Convert a JSON body value to the member's Python type, checking JSON types on the way."""
    if value is None:
        return None
    t = shape.type_name

    def bad() -> SerializationException:
        return SerializationException(f"Unexpected value type for '{where}': expected {t}")

    if t == "structure":
        if not isinstance(value, dict):
            raise bad()
        out: dict[str, Any] = {}
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            key = member.serialization.get("name", name)
            if key in value:
                out[name] = from_json(member, value[key], _join(where, name))
        return out
    if t == "list":
        if not isinstance(value, list):
            raise bad()
        return [from_json(shape.member, v, f"{where}.member") for v in value]  # type: ignore[attr-defined]
    if t == "map":
        if not isinstance(value, dict):
            raise bad()
        return {
            from_json(shape.key, k, f"{where}.key"): from_json(shape.value, v, f"{where}.value")  # type: ignore[attr-defined]
            for k, v in value.items()
        }
    if t == "string":
        if not isinstance(value, str):
            raise bad()
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise bad()
        return value
    if t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if t in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if t == "timestamp":
        try:
            return _parse_timestamp(value)
        except (ValueError, TypeError):
            raise bad() from None
    if t == "blob":
        if not isinstance(value, str):
            raise bad()
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationException(f"Value for '{where}' is not valid base64") from None
    return value


def load_json_body(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SerializationException("Request body is not valid JSON") from None


def parse_request(op: OperationModel, labels: dict[str, str], request: HttpRequest) -> dict[str, Any]:
    """Build the operation's input dict (member name → value) from labels, query, headers and body."""
    shape = op.input_shape
    params: dict[str, Any] = {}
    if shape is None:
        return params
    payload_name = shape.serialization.get("payload")
    body_members: dict[str, Shape] = {}
    for name, member in shape.members.items():
        loc = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if loc == "uri":
            if wire in labels:
                params[name] = _from_text(member, labels[wire], name)
        elif loc == "querystring":
            if member.type_name == "map":
                params[name] = {k: v[-1] for k, v in request.query.items()}
            elif wire in request.query:
                values = request.query[wire]
                if member.type_name == "list":
                    params[name] = [_from_text(member.member, v, name) for v in values]  # type: ignore[attr-defined]
                else:
                    params[name] = _from_text(member, values[-1], name)
        elif loc == "header":
            if wire.lower() in request.headers:
                params[name] = _from_text(member, request.headers[wire.lower()], name)
        elif loc == "headers":
            prefix = wire.lower()
            params[name] = {k[len(prefix):]: v for k, v in request.headers.items() if k.startswith(prefix)}
        elif name != payload_name:
            body_members[name] = member
    if payload_name:
        member = shape.members[payload_name]
        if member.type_name in ("blob", "string"):
            params[payload_name] = request.body if member.type_name == "blob" else request.body.decode()
        elif request.body.strip():
            params[payload_name] = from_json(member, load_json_body(request.body), payload_name)
    elif body_members:
        doc = load_json_body(request.body)
        if not isinstance(doc, dict):
            raise SerializationException("Request body must be a JSON object")
        for name, member in body_members.items():
            wire = member.serialization.get("name", name)
            if wire in doc and doc[wire] is not None:
                params[name] = from_json(member, doc[wire], name)
    return params


# --------------------------------------------------------------------------------------------------------------
# Response serialization


def to_json(shape: Shape, value: Any) -> Any:
    t = shape.type_name
    if t == "structure":
        out = {}
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            if member.serialization.get("location"):
                continue
            v = value.get(name)
            if v is not None:
                out[member.serialization.get("name", name)] = to_json(member, v)
        return out
    if t == "list":
        return [to_json(shape.member, v) for v in value]  # type: ignore[attr-defined]
    if t == "map":
        return {k: to_json(shape.value, v) for k, v in value.items()}  # type: ignore[attr-defined]
    if t == "timestamp":
        ts = value.timestamp() if isinstance(value, dt.datetime) else float(value)
        # Whole seconds serialize as integers, like AWS; botocore accepts both.
        return int(ts) if math.isfinite(ts) and ts == int(ts) else round(ts, 3)
    if t == "blob":
        data = value if isinstance(value, bytes) else str(value).encode()
        return base64.b64encode(data).decode()
    return value


def _header_text(shape: Shape, value: Any) -> str:
    if shape.type_name == "timestamp":
        return email.utils.formatdate(float(value), usegmt=True)
    if shape.type_name == "boolean":
        return "true" if value else "false"
    return str(value)


def serialize_response(op: OperationModel, output: dict[str, Any], request_id: str) -> HttpResponse:
    shape = op.output_shape
    status = int(op.http.get("responseCode", 200))
    headers: dict[str, str] = {"x-amzn-RequestId": request_id}
    if shape is None:
        headers["Content-Type"] = JSON_CONTENT_TYPE
        return HttpResponse(status, headers, b"{}")
    for name, member in shape.members.items():
        loc = member.serialization.get("location")
        v = output.get(name)
        if v is None:
            continue
        if loc == "header":
            headers[member.serialization.get("name", name)] = _header_text(member, v)
        elif loc == "headers":
            for k, hv in v.items():
                headers[member.serialization.get("name", "") + k] = str(hv)
        elif loc == "statusCode":
            status = int(v)
    payload_name = shape.serialization.get("payload")
    if payload_name:
        member = shape.members[payload_name]
        v = output.get(payload_name)
        if member.type_name in ("blob", "string"):
            body = b"" if v is None else (v if isinstance(v, bytes) else str(v).encode())
            headers.setdefault("Content-Type", "application/octet-stream")
            return HttpResponse(status, headers, body)
        body = json.dumps(to_json(member, v) if v is not None else {}, separators=(",", ":")).encode()
    else:
        body = json.dumps(to_json(shape, output), separators=(",", ":")).encode()
    headers["Content-Type"] = JSON_CONTENT_TYPE
    return HttpResponse(status, headers, body)


# --------------------------------------------------------------------------------------------------------------
# Routing


@dataclass
class Route:
    method: str
    regex: re.Pattern[str]
    static_query: dict[str, str]
    operation: OperationModel
    specificity: tuple[int, int]


def compile_request_uri(request_uri: str) -> tuple[re.Pattern[str], dict[str, str], tuple[int, int]]:
    """Turn ``/datastore/{datastoreId}/job/{jobId}`` (optionally ``?x=y``) into a regex and static query."""
    path, _, query = request_uri.partition("?")
    static_query = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    parts: list[str] = []
    literal_chars = 0
    greedy = 0
    pos = 0
    for m in re.finditer(r"\{([^}]+)\}", path):
        literal = path[pos:m.start()]
        literal_chars += len(literal)
        parts.append(re.escape(literal))
        name = m.group(1)
        if name.endswith("+"):
            greedy += 1
            parts.append(f"(?P<{_group(name[:-1])}>.+)")
        else:
            parts.append(f"(?P<{_group(name)}>[^/]+)")
        pos = m.end()
    literal_chars += len(path[pos:])
    parts.append(re.escape(path[pos:]))
    regex = re.compile("^" + "".join(parts) + "/?$")
    return regex, static_query, (literal_chars, -greedy)


def _group(label: str) -> str:
    # Regex group names must be identifiers; AWS labels are, but be defensive.
    return re.sub(r"\W", "_", label)


class RestJsonService(Dispatcher):
    """Serve one botocore ``rest-json`` service model with a handler object.

    Args:
        service_name: botocore service name, e.g. ``"medical-imaging"``.
        handlers: object with one snake_case method per operation taking and returning a dict. A missing method
            answers ``NotImplementedException`` (501).
        on_request: optional hook called with the operation name before the handler (throttling, fault
            injection and metrics slot in here later).
        on_response: optional hook called with the operation name after the handler succeeded, before the
            response is serialized; raising an AwsError there answers an error although the operation took effect
            (fault injection of "ambiguous" failures).
    """

    def __init__(self, service_name: str, handlers: object,
                 on_request: Callable[[str, HttpRequest], None] | None = None,
                 on_response: Callable[[str, HttpRequest], None] | None = None) -> None:
        self.model = load_service_model(service_name)
        self.handlers = handlers
        self.on_request = on_request
        self.on_response = on_response
        routes = []
        for op_name in self.model.operation_names:
            op = self.model.operation_model(op_name)
            regex, static_query, spec = compile_request_uri(op.http["requestUri"])
            routes.append(Route(op.http["method"].upper(), regex, static_query, op, spec))
        # Most literal characters first, so `/datastore/{id}/searchImageSets` wins over looser patterns.
        self.routes = sorted(routes, key=lambda r: r.specificity, reverse=True)

    def match(self, request: HttpRequest) -> Handler | None:
        for route in self.routes:
            if route.method != request.method:
                continue
            m = route.regex.match(request.raw_path)
            if not m:
                continue
            if any(request.query.get(k, [None])[-1] != v for k, v in route.static_query.items()):
                continue
            labels = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
            op = route.operation
            return lambda req, op=op, labels=labels: self._invoke(op, labels, req)  # type: ignore[misc]
        return None

    def _invoke(self, op: OperationModel, labels: dict[str, str], request: HttpRequest) -> HttpResponse:
        params = parse_request(op, labels, request)
        validate_input(op, params)
        if self.on_request is not None:
            self.on_request(op.name, request)
        output = operation_method(self.handlers, op)(params)
        if self.on_response is not None:
            self.on_response(op.name, request)
        return serialize_response(op, output or {}, request.request_id)
