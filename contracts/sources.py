"""Source connectors an operator can name in `MigrationInput.source_connector`.

A connector first pulls its source into the migration's landing prefix (`source_s3_uri`); the rest of the
pipeline then reads that prefix unchanged. Configs are strict: unknown keys, bad schemes, ports and AE titles
are rejected with the field name. Credentials never travel here: they are worker settings.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from contracts.common import Int

# DICOM PS3.5 §9.1: digits and dots, no leading zero in a component, at most 64 characters.
UID_PATTERN = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
# PS3.5 AE VR: up to 16 characters of the default repertoire, no backslash or control characters. We also refuse
# leading/trailing spaces (insignificant on the wire, so two spellings would name the same peer).
AE_TITLE_PATTERN = r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"
# One DNS label (RFC 1123): letters, digits, inner hyphens, at most 63 characters.
HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_STUDY_FILTER = 10_000


def is_uid(value: str) -> bool:
    return len(value) <= 64 and UID_PATTERN.match(value) is not None


def check_host(value: str) -> str:
    """A host name (RFC 1123 labels, at least one letter) or an IPv4/IPv6 literal (``[::1]`` or ``::1``).

    Anything else (``1.2.3.4.5``, ``999.1.1.1``, ``::::``, ``[1:2``, a path, user info, a port) is refused, so a
    garbage value fails here with the field name instead of as a confusing network error later.
    """
    bracketed = value.startswith("[") and value.endswith("]")
    literal = value[1:-1] if bracketed else value
    if bracketed or ":" in value or "[" in value or "]" in value:
        try:
            if ipaddress.ip_address(literal).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError("is not a valid IPv6 literal") from None
        return literal
    if all(c.isdigit() or c == "." for c in value):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("is not a valid IPv4 address (four numbers 0-255)") from None
        return value
    labels = value.rstrip(".").split(".")
    if not all(HOST_LABEL.match(label) for label in labels):
        raise ValueError("is not a valid host name (letters, digits and inner hyphens per dot-separated label)")
    if not any(c.isalpha() for c in value):
        raise ValueError("is not a valid host name (a host name needs at least one letter)")
    return value


def origin_of(url: str, strict: bool = False) -> str:
    """``scheme://host:port`` of ``url`` with the scheme's default port spelled out, lower-case (IPv6 in
    brackets). ``strict``: ``url`` must be just an origin (how ``HIMIG_DICOMWEB_ALLOWED_ORIGINS`` is written)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} is not an http(s)://host[:port] origin") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s)://host[:port] origin")
    if strict and (parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment):
        raise ValueError(f"{url!r} must be only scheme://host[:port]")
    port = port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host.lower()}:{port}"


def parse_origins(value: str) -> tuple[str, ...]:
    """The comma- or space-separated origins of ``HIMIG_DICOMWEB_ALLOWED_ORIGINS``, normalised."""
    return tuple(dict.fromkeys(origin_of(item, strict=True) for item in value.replace(",", " ").split()))


def _check_uids(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    if not values:
        raise ValueError("must list at least one StudyInstanceUID (leave it out to pull every study)")
    for i, uid in enumerate(values):
        if not is_uid(uid):
            raise ValueError(f"item {i} is not a DICOM UID (digits and dots, no leading zeros, at most 64 chars)")
    return list(dict.fromkeys(values))


# The optional study filter of a PACS source (checked by ``_check_uids``, duplicates dropped).
StudyUids = Annotated[list[str] | None, Field(max_length=MAX_STUDY_FILTER, description="pull only these studies"),
                      AfterValidator(_check_uids)]


class _Connector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalSource(_Connector):
    """A directory on the worker's file system, uploaded to the landing prefix (key = landing + relative path)."""

    kind: Literal["local"]
    path: str = Field(description="absolute path of a directory readable by the worker", min_length=1, max_length=4096)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("must not contain NUL characters")
        p = PurePosixPath(v)
        if not p.is_absolute():
            raise ValueError("must be an absolute path (the worker's working directory is not the operator's)")
        if ".." in p.parts:
            raise ValueError("must not contain '..' components")
        return v


class DicomwebSource(_Connector):
    """A DICOMweb PACS: QIDO-RS enumerates studies, WADO-RS pulls each study."""

    kind: Literal["dicomweb"]
    url: str = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web", max_length=2048)
    study_uids: StudyUids = None
    page_size: Int = Field(100, ge=1, le=1000, description="studies per QIDO-RS request (limit/offset paging)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
            port = parts.port
        except ValueError as err:
            raise ValueError(f"not a valid URL: {err}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("must name a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; set HIMIG_DICOMWEB_USERNAME/PASSWORD or _TOKEN on the worker")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        if port == 0:
            raise ValueError("port must be between 1 and 65535")
        if any(c.isspace() for c in v):
            raise ValueError("must not contain whitespace")
        return v.rstrip("/")


class DimseSource(_Connector):
    """A DIMSE PACS: C-FIND (Study Root, STUDY level) enumerates studies, C-GET pulls each study."""

    kind: Literal["dimse"]
    host: Annotated[str, Field(min_length=1, max_length=253, description="host name or IP address of the PACS")]
    port: Int = Field(ge=1, le=65535)
    called_ae: Annotated[str, Field(pattern=AE_TITLE_PATTERN, description="the PACS's AE title")]
    calling_ae: Annotated[str, Field(pattern=AE_TITLE_PATTERN, description="our AE title, as the PACS knows it")]
    study_uids: StudyUids = None

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


SourceConnector = Annotated[LocalSource | DicomwebSource | DimseSource, Field(discriminator="kind")]
