"""Source connectors an operator can name in `MigrationInput.source_connector`.

A connector first pulls its source into the migration's landing prefix (`source_s3_uri`); the rest of the
pipeline then reads that prefix unchanged. Configs are strict: unknown keys, bad schemes, ports and AE titles
are rejected with the field name. Credentials never travel here: they are worker settings.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.common import Int

# DICOM PS3.5 §9.1: digits and dots, no leading zero in a component, at most 64 characters.
UID_PATTERN = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
# PS3.5 AE VR: up to 16 characters of the default repertoire, no backslash or control characters. We also refuse
# leading/trailing spaces (insignificant on the wire, so two spellings would name the same peer).
AE_TITLE_PATTERN = r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"
# One DNS label (RFC 1123): letters, digits, inner hyphens, at most 63 characters.
HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_STUDY_FILTER = 10_000
# A modality code (CS VR: upper-case letters, digits, space and underscore, at most 16 characters).
MODALITY_PATTERN = r"^[A-Z0-9_]([A-Z0-9_ ]{0,14}[A-Z0-9_])?$"
MAX_MODALITIES = 32


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


def _check_date(value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a calendar date") from None
    if day.year < 1850:
        raise ValueError("must not be before 1850 (no DICOM study is older)")
    return value


def _check_modalities(values: list[str] | None) -> list[str] | None:
    if values is not None and not values:
        raise ValueError("must list at least one modality (leave it out for every modality)")
    return None if values is None else list(dict.fromkeys(values))


# The optional study-date window of a PACS source, inclusive, as YYYY-MM-DD.
StudyDate = Annotated[str | None, AfterValidator(_check_date)]
Modalities = Annotated[
    list[Annotated[str, Field(pattern=MODALITY_PATTERN)]] | None,
    Field(max_length=MAX_MODALITIES, description="pull only studies with a series of one of these modalities"),
    AfterValidator(_check_modalities)]
# The PACS's maximum matches per search (e.g. Orthanc's LimitFindResults): an answer this long is taken as cut off.
ResultCap = Annotated[int | None, Field(None, ge=1, le=1_000_000, strict=True)]


class _Connector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _StudySearch(_Connector):
    """What a PACS source's study search may be narrowed by, and how a cut-off answer is recognised.

    Without ``study_uids`` the study search is split by study date: a range whose answer reaches ``result_cap``
    (or that the PACS flags as cut off) is halved until every answer is complete, so a PACS that caps its
    answers (500-1,000 matches is common) cannot silently truncate the enumeration.
    """

    study_uids: StudyUids = None
    study_date_from: StudyDate = Field(None, description="first study date to pull, YYYY-MM-DD (inclusive)")
    study_date_to: StudyDate = Field(None, description="last study date to pull, YYYY-MM-DD (inclusive)")
    modalities: Modalities = None
    result_cap: ResultCap = Field(None, description="the PACS's maximum matches per search")

    @model_validator(mode="after")
    def _window(self) -> _StudySearch:
        if self.study_date_from and self.study_date_to and self.study_date_from > self.study_date_to:
            raise ValueError("study_date_from must not be after study_date_to")
        if self.study_uids and (self.study_date_from or self.study_date_to or self.modalities):
            raise ValueError("study_uids names the studies; it cannot be combined with study_date_from, "
                             "study_date_to or modalities")
        return self


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


class DicomwebSource(_StudySearch):
    """A DICOMweb PACS: QIDO-RS enumerates studies, WADO-RS pulls each study."""

    kind: Literal["dicomweb"]
    url: str = Field(description="DICOMweb root, e.g. http://pacs:8042/dicom-web", max_length=2048)
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


class DimseSource(_StudySearch):
    """A DIMSE PACS: C-FIND (Study Root, STUDY level) enumerates studies, C-GET or C-MOVE pulls each study."""

    kind: Literal["dimse"]
    host: Annotated[str, Field(min_length=1, max_length=253, description="host name or IP address of the PACS")]
    port: Int = Field(ge=1, le=65535)
    called_ae: Annotated[str, Field(pattern=AE_TITLE_PATTERN, description="the PACS's AE title")]
    calling_ae: Annotated[str, Field(pattern=AE_TITLE_PATTERN, description="our AE title, as the PACS knows it")]
    retrieve: Literal["get", "move"] = Field(
        "get", description="get: C-GET over our association; move: C-MOVE to the worker's C-STORE receiver "
        "(HIMIG_DIMSE_MOVE_AE_TITLE, which the PACS must know as a move destination)")
    parallel: Int = Field(1, ge=1, le=32,
                          description="studies retrieved at once from this PACS by one pull (also capped per worker "
                          "by HIMIG_DIMSE_RETRIEVALS_PER_SOURCE)")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


SourceConnector = Annotated[LocalSource | DicomwebSource | DimseSource, Field(discriminator="kind")]
