"""HTTP front end: one ``ThreadingHTTPServer`` hosting several route families on one port.

Each family is a :class:`~emulator.protocol.Dispatcher` (the ``/_emulator/`` admin APIs, HealthLake, DICOMweb and
the HealthImaging rest-json API, in that order; see ``app.build``). The first dispatcher that claims a request
handles it.
Whatever happens inside, the client gets an AWS-shaped JSON error, never a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulator.errors import (
    AwsError,
    InternalServerException,
    RequestEntityTooLargeException,
    SerializationException,
    UnknownOperationException,
)
from emulator.protocol import Dispatcher, HttpRequest, HttpResponse, error_response

log = logging.getLogger("emulator.http")


# Answered, without a thread, to a connection beyond the cap; botocore retries a 503 like AWS's own.
_BUSY_BODY = b'{"__type":"ServiceUnavailableException","message":"Too many open connections"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/x-amz-json-1.1\r\n"
         b"x-amzn-ErrorType: ServiceUnavailableException\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class EmulatorHTTPServer(ThreadingHTTPServer):
    """One thread per connection, bounded twice: a connection idle for ``idle_timeout`` seconds (no request, or
    a request whose headers or body stop arriving) is closed, and beyond ``max_connections`` open connections a
    new one gets a 503 and is closed at once, so stalled clients cannot pin an unbounded number of threads."""

    daemon_threads = True
    allow_reuse_address = True
    # A burst of parallel boto3 clients must not be refused by a short listen backlog.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dispatchers: Sequence[Dispatcher], max_body_bytes: int,
                 idle_timeout: float = 60.0, max_connections: int = 256) -> None:
        self.dispatchers = list(dispatchers)
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("refusing a connection from %s: too many open connections", client_address)
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connection resets and the like: log one line instead of the default traceback to stderr.
        log.debug("connection error from %s", client_address, exc_info=True)


class RequestHandler(BaseHTTPRequestHandler):
    server: EmulatorHTTPServer
    # Keep-alive: botocore reuses connections, and a fresh TCP connect per call would dominate polling costs.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's delayed ACK
    # (~40 ms per call on Linux). TCP_NODELAY makes a small call cost ~1 ms.
    disable_nagle_algorithm = True
    server_version = "himig-emulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # The socket timeout bounds every read: waiting for the next request on a kept-alive connection, for
        # a request's headers and for its body. On expiry the connection is closed and its thread ends.
        self.connection.settimeout(self.server.idle_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Called by BaseHTTPRequestHandler for malformed request lines/headers: answer in the AWS JSON shape.
        err = SerializationException(message or "Malformed request", status=code if code >= 400 else 400)
        self.close_connection = True
        if not self.request_version.startswith("HTTP/1."):
            # An unparsable request line leaves the HTTP/0.9 default, which would suppress the status line.
            self.request_version = "HTTP/1.1"
        with contextlib.suppress(OSError):
            self._write(error_response(err), head_only=False)

    def _dispatch(self) -> None:
        request_id = ""
        try:
            length_text = self.headers.get("Content-Length")
            # A route family may set its own body limit (DICOMweb STOW-RS) and then also takes chunked bodies.
            max_body, family_limit = self.server.max_body_bytes, None
            path_only = urllib.parse.urlsplit(self.path).path or "/"
            for dispatcher in self.server.dispatchers:
                family_limit = dispatcher.body_limit(self.command.upper(), path_only)
                if family_limit is not None:
                    max_body = family_limit
                    break
            chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
            if chunked:
                if family_limit is None:
                    self.close_connection = True  # the chunked body stays unread
                    raise SerializationException("Chunked request bodies are not supported; send Content-Length")
                length_text = None
            try:
                length = int(length_text) if length_text else 0
            except ValueError:
                raise SerializationException("Invalid Content-Length header") from None
            if length < 0:
                raise SerializationException("Invalid Content-Length header")
            split = urllib.parse.urlsplit(self.path)
            request = HttpRequest(
                method=self.command.upper(),
                raw_path=split.path or "/",
                query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=b"",
                raw_query=split.query,
            )
            request_id = request.request_id
            try:
                # Before the body: a refused request (DICOMweb without credentials) must not make us read it.
                for dispatcher in self.server.dispatchers:
                    dispatcher.before_body(request)
            except AwsError:
                if length or chunked:
                    self.close_connection = True  # the unread body would otherwise be parsed as the next request
                raise
            if length > max_body:
                # Do not read (or wait for) a body we will not accept; the connection is closed afterwards.
                self.close_connection = True
                raise RequestEntityTooLargeException(
                    f"Request body of {length} bytes exceeds the limit of {max_body} bytes")
            try:
                if chunked:  # only reached with a family limit (refused above otherwise)
                    body = self._read_chunked(max_body)
                    length = len(body)
                else:
                    body = self.rfile.read(length) if length else b""
            except TimeoutError:
                self.close_connection = True  # the body stalled: nobody is waiting for an answer
                raise SerializationException("Request body not received in time", status=408) from None
            if len(body) < length:
                self.close_connection = True
                raise SerializationException("Request body shorter than Content-Length")
            request.body = body
            handler = None
            for dispatcher in self.server.dispatchers:
                handler = dispatcher.match(request)
                if handler is not None:
                    break
            if handler is None:
                raise UnknownOperationException(f"No operation matches {request.method} {request.raw_path}")
            response = handler(request)
        except AwsError as err:
            if err.status >= 500:
                log.warning("request failed with %s: %s", err.code, err.message)
            response = error_response(err, request_id or None)
            response.headers.update(getattr(err, "headers", {}))  # e.g. WWW-Authenticate of a 401
        except Exception:
            # Log the traceback for us; the client only learns that something went wrong inside.
            log.exception("unhandled error serving %s %s", self.command, self.path.split("?")[0])
            response = error_response(InternalServerException("Internal server error"), request_id or None)
        try:
            self._write(response, head_only=self.command == "HEAD")
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_chunked(self, limit: int) -> bytes:
        """Read a ``Transfer-Encoding: chunked`` body (RFC 9112 §7.1), refusing more than ``limit`` bytes."""
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise SerializationException("Malformed chunked request body") from None
            if size < 0:
                self.close_connection = True
                raise SerializationException("Malformed chunked request body")
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailer fields, up to the empty line
                    pass
                return b"".join(chunks)
            total += size
            if total > limit:
                self.close_connection = True
                raise RequestEntityTooLargeException(f"Request body exceeds the limit of {limit} bytes")
            data = self.rfile.read(size)
            if len(data) < size or self.rfile.readline(3).strip():
                self.close_connection = True
                raise SerializationException("Malformed chunked request body")
            chunks.append(data)

    def _write(self, response: HttpResponse, head_only: bool) -> None:
        self.send_response_only(response.status)
        for k, v in response.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only and response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch
