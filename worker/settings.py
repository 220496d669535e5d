"""All runtime settings of the worker and the CLI, read from the environment (and `.env`).

One `Settings` object is built and validated at process start, before anything connects, and passed in; nothing
reads `os.environ` elsewhere. Its sections (`ingest`, `job_events`) keep their own variable prefixes
(``HIMIG_INGEST_*``, ``HIMIG_JOB_EVENTS_*``) but are read and checked with the rest, so a bad value in any of them
stops the process with exit code 2 and a line naming the variable (`describe_error`).
Endpoint overrides use boto3's own standard variable names so that every AWS client, including those
in tools we do not control, finds the local stack the same way.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.common import ValidationLevel
from contracts.ingest import IngestInput
from contracts.migration import ROLE_ARN_PATTERN
from contracts.s3uri import parse_s3_uri
from contracts.sources import AE_TITLE_PATTERN, parse_origins
from worker import temporal_connection
from worker.codec import KEYS_VARIABLE, KeyRing
from worker.temporal_connection import (
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    TemporalConfigError,
    TemporalConnection,
)

DEFAULT_TASK_QUEUE = "dicom-migration"

# A KMS key as StartFHIRImportJob accepts it: key ARN, alias ARN, key id (also multi-Region ``mrk-``) or alias name.
KMS_KEY_PATTERN = (r"^(arn:aws(-[^:]+)?:kms:[a-z0-9-]+:[0-9]{12}:(key/[A-Za-z0-9-]+|alias/[A-Za-z0-9/_-]+)"
                   r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32}"
                   r"|alias/[A-Za-z0-9/_-]+)$")
_WHOLE = re.compile(r"^\s*[+-]?[0-9]+\s*$")


def _whole_number(value: Any) -> Any:
    # pydantic's lax mode reads "8.0" as 8; a setting written as a fraction is more likely a mistake than a count.
    if isinstance(value, str) and not _WHOLE.match(value):
        raise ValueError("must be a whole number (e.g. 8, not 8.0)")
    return value


def _not_blank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty")
    return value


def _matching(pattern: str, what: str) -> Any:
    compiled = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and not compiled.match(value):
            raise ValueError(f"must be {what}")  # the value is not repeated: the reason is enough to fix it
        return value
    return check


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")  # not 1/0, yes/no: a typo must not read as a choice


def _origins(value: str) -> str:
    parse_origins(value)  # raises ValueError naming the bad entry
    return value


def _http_url(value: str) -> str:
    url = urlsplit(value)
    try:
        url.port  # noqa: B018 (raises ValueError for a port that is not a number or out of range)
    except ValueError:
        raise ValueError("must be an http(s):// URL with a valid port") from None
    if url.scheme not in ("http", "https") or not url.hostname or url.username or url.password or url.fragment:
        raise ValueError("must be an http(s):// URL without credentials or fragment")
    return value


#: An http(s) URL (an OAuth2 token endpoint), checked when the settings are read.
HttpUrl = Annotated[str, AfterValidator(_http_url)]
#: Comma/space-separated ``scheme://host[:port]`` origins, each checked when the settings are read.
Origins = Annotated[str, AfterValidator(_origins)]
#: An integer setting: a whole number from the environment, never a fraction silently truncated.
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
#: A yes/no setting: ``true`` or ``false`` only.
Flag = Annotated[bool, BeforeValidator(_flag)]
RoleArn = Annotated[str, BeforeValidator(_matching(ROLE_ARN_PATTERN, "an IAM role ARN, "
                                                   "arn:aws:iam::<12-digit account>:role/<name>"))]
KmsKey = Annotated[str, BeforeValidator(_matching(KMS_KEY_PATTERN, "a KMS key ARN, alias ARN, key id or "
                                                  "alias/<name>"))]


class IngestSettings(BaseSettings):
    """Settings of the listener, from ``HIMIG_INGEST_*``. The listener runs only when a queue is configured."""

    model_config = SettingsConfigDict(env_prefix="HIMIG_INGEST_", env_file=".env", extra="ignore")

    queue_url: str | None = Field(None, description="SQS queue receiving S3 ObjectCreated events; unset or empty "
                                  "disables the arrivals listener")
    datastore_id: str | None = Field(None, description="HealthImaging data store arrivals are imported into "
                                     "(required with the queue)")
    source_s3_uri: str | None = Field(None, description="the watched prefix, s3://bucket/prefix/ (required with "
                                      "the queue)")
    work_s3_uri: str | None = Field(None, description="where ingest batches stage their work, s3://bucket/prefix/ "
                                    "(required with the queue)")
    quiet_seconds: float = Field(30.0, gt=0, description="a study's batch is flushed after this long without a "
                                 "new arrival")
    max_files: WholeNumber = Field(1_000, ge=1, description="a study's batch is flushed at this many files")
    max_wait_seconds: float = Field(600.0, gt=0, description="a study's batch is flushed at the latest this long "
                                    "after its first arrival")
    validation_level: ValidationLevel = Field(ValidationLevel.STRUCTURE_ONLY,
                                              description="validation level of ingest batches")
    data_access_role_arn: RoleArn | None = Field(None, description="IAM role ARN "
                                             "HealthImaging assumes for ingest imports; unset: HIMIG_DATA_ACCESS_ROLE_ARN")
    healthlake_datastore_id: str | None = Field(None, description="HealthLake data store receiving one FHIR "
                                                "ImagingStudy per arrived study (again whenever it grows); unset: no "
                                                "FHIR routing of arrivals")
    fhir_validation_level: ValidationLevel = Field(ValidationLevel.STRUCTURE_ONLY,
                                                   description="ValidationLevel of the arrivals' HealthLake import jobs")
    fhir_validate_first: bool = Field(False, description="`$validate` each arrival's ImagingStudy first; refused "
                                      "ones are reported and not imported")
    wait_seconds: WholeNumber = Field(10, ge=1, le=20, description="SQS long-poll wait, seconds")
    visibility_timeout: WholeNumber = Field(120, ge=10, le=43_200, description="seconds a received message stays "
                                            "hidden")

    @property
    def enabled(self) -> bool:
        return bool(self.queue_url)

    def ingest_input(self) -> IngestInput:
        """The workflow input; raises ValueError naming the field when the settings are incomplete or invalid."""
        return IngestInput.model_validate({
            "datastore_id": self.datastore_id, "source_s3_uri": self.source_s3_uri, "work_s3_uri": self.work_s3_uri,
            "quiet_seconds": self.quiet_seconds, "max_files": self.max_files,
            "max_wait_seconds": max(self.max_wait_seconds, self.quiet_seconds),
            "validation_level": self.validation_level, "data_access_role_arn": self.data_access_role_arn,
            "healthlake_datastore_id": self.healthlake_datastore_id or None,
            "fhir_validation_level": self.fhir_validation_level, "fhir_validate_first": self.fhir_validate_first,
        })

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> Self:
        # A listener with a queue but no usable workflow input would only fail on its first message.
        if self.enabled:
            try:
                self.ingest_input()
            except ValidationError as err:
                raise ValueError("\n".join(
                    f"HIMIG_INGEST_{str(e['loc'][0]).upper() if e['loc'] else 'QUEUE_URL'}: "
                    + ("required when HIMIG_INGEST_QUEUE_URL is set" if e["input"] is None else _one_line(e["msg"]))
                    for e in err.errors())) from None
        return self


class JobEventSettings(BaseSettings):
    """Settings of the job-events listener, from ``HIMIG_JOB_EVENTS_*``; it runs only when a queue is set."""

    model_config = SettingsConfigDict(env_prefix="HIMIG_JOB_EVENTS_", env_file=".env", extra="ignore")

    queue_url: str | None = Field(None, description="SQS queue an EventBridge rule sends import-job events to; "
                                  "unset or empty disables the job-events listener")
    wait_seconds: WholeNumber = Field(10, ge=1, le=20, description="SQS long-poll wait, seconds")
    visibility_timeout: WholeNumber = Field(60, ge=10, le=43_200, description="seconds a received message stays "
                                            "hidden")

    @property
    def enabled(self) -> bool:
        return bool(self.queue_url)


def _ae_titles(value: str) -> str:
    titles = [t.strip() for t in value.split(",") if t.strip()]
    for title in titles:
        if title != "*" and not re.match(AE_TITLE_PATTERN, title):
            raise ValueError("every entry must be an AE title (1-16 characters, no backslash or control "
                             "characters, no leading or trailing space) or *")
    if "*" in titles and len(titles) > 1:
        raise ValueError("* (any calling AE title) cannot be combined with a list")
    return value


class ReceiverSettings(BaseSettings):
    """Settings of the C-STORE receiver (`himig receive`, or the worker when a port is set), ``HIMIG_RECEIVER_*``.

    What it receives goes under ``HIMIG_INGEST_SOURCE_S3_URI`` into the study's `IngestWorkflow`, so it needs the
    ingest data store, source and work prefix too (not the queue).
    """

    model_config = SettingsConfigDict(env_prefix="HIMIG_RECEIVER_", env_file=".env", extra="ignore")

    port: int | None = Field(None, ge=1, le=65535, description="DICOM port the receiver listens on; unset: the "
                             "worker runs no receiver (`himig receive --port` starts one on its own)")
    host: str = Field("127.0.0.1", min_length=1, description="address the receiver binds (0.0.0.0 to accept "
                      "modalities on the network)")
    ae_title: Annotated[str, Field(pattern=AE_TITLE_PATTERN)] = Field(
        "HIMIG", description="the receiver's AE title; associations calling another title are rejected")
    allowed_calling_aes: Annotated[str, AfterValidator(_ae_titles)] = Field(
        "", description="comma-separated calling AE titles allowed to send (others are rejected: calling AE title "
        "not recognized); `*` accepts any; required with a port")
    max_associations: WholeNumber = Field(10, ge=1, le=200, description="concurrent associations; more are rejected "
                                          "(transient, local limit exceeded) and the sender retries later")
    idle_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="an association idle this long is aborted")
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="longest wait for the next message of an "
                                   "association exchange (ACSE and DIMSE)")
    max_pdu_bytes: WholeNumber = Field(262_144, ge=4096, le=16_777_216, description="largest PDU the receiver "
                                       "accepts (senders split datasets into PDUs of at most this size)")

    @property
    def enabled(self) -> bool:
        return self.port is not None

    def calling_ae_list(self) -> list[str]:
        """The allowed calling AE titles; empty means any (``*``)."""
        titles = [t.strip() for t in self.allowed_calling_aes.split(",") if t.strip()]
        return [] if titles == ["*"] else titles

    def problems(self, ingest: IngestSettings) -> list[str]:
        """What a running receiver lacks, one line per variable (nothing when it is not enabled)."""
        if not self.enabled:
            return []
        problems = []
        if not self.allowed_calling_aes.strip():
            problems.append("HIMIG_RECEIVER_ALLOWED_CALLING_AES: required when the receiver runs (the calling AE "
                            "titles allowed to send, or * for any)")
        try:
            ingest.ingest_input()
        except ValidationError as err:
            problems.extend(
                f"HIMIG_INGEST_{str(e['loc'][0]).upper() if e['loc'] else 'SOURCE_S3_URI'}: "
                + ("required when the receiver runs" if e["input"] is None else _one_line(e["msg"]))
                for e in err.errors())
        return problems


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps a server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CodecServerSettings(BaseSettings):
    """Settings of ``himig codec-server``, from ``HIMIG_CODEC_SERVER_*`` (checked when it starts: `problems`)."""

    model_config = SettingsConfigDict(env_prefix="HIMIG_CODEC_SERVER_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (0.0.0.0 behind a load balancer)")
    port: int = Field(8081, ge=1, le=65535, description="port to listen on")
    ui_origins: Origins = Field("", description="comma/space-separated scheme://host[:port] of the Temporal UI(s) "
                            "allowed to call from a browser (CORS); empty allows none")
    auth: Literal["oidc", "none"] = Field(
        "oidc", description="`oidc`: every request needs a bearer token from the issuer below; `none`: no "
        "check, only allowed when listening on a loopback address (a local stack)")
    oidc_issuer: str | None = Field(None, description="OIDC issuer URL (its discovery document names the JWKS)")
    oidc_audience: str | None = Field(None, description="the `aud` the tokens must carry")
    oidc_jwks_url: str | None = Field(None, description="the issuer's JWKS URL, when discovery is not available")
    allowed_subjects: str = Field("", description="comma-separated `sub` or `email` values allowed to decode "
                                  "and encode; `*` allows every token the issuer signs for the audience")
    allowed_groups: str = Field("", description="comma-separated groups (in the token's groups claim) allowed")
    groups_claim: str = Field("groups", min_length=1, description="the claim listing a token's groups")
    allow_unauthenticated: bool = Field(
        False, description="with AUTH=none on a non-loopback address: the operator vouches that the port is "
        "reachable from this machine only (a container port published on 127.0.0.1, as docker-compose.yml does)")
    tls_cert_path: str | None = Field(None, description="PEM certificate (chain) to serve HTTPS; the UI only "
                                      "forwards the bearer token to an https endpoint")
    tls_key_path: str | None = Field(None, description="PEM private key of the certificate")

    @field_validator("oidc_issuer", "oidc_jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value or None

    def ui_origin_list(self) -> tuple[str, ...]:
        return parse_origins(self.ui_origins)

    def allowed_subject_list(self) -> list[str]:
        return [v.strip() for v in self.allowed_subjects.split(",") if v.strip()]

    def allowed_group_list(self) -> list[str]:
        return [v.strip() for v in self.allowed_groups.split(",") if v.strip()]

    def problems(self) -> list[str]:
        """What stops the codec server from starting, one line per variable (the worker does not need these)."""
        problems = []
        prefix = "HIMIG_CODEC_SERVER_"
        if self.auth == "none":
            if not is_loopback(self.host) and not self.allow_unauthenticated:
                problems.append(f"{prefix}AUTH: `none` is only allowed on a loopback address; {prefix}HOST is not "
                                f"one (configure OIDC, or set {prefix}ALLOW_UNAUTHENTICATED=true when the port is "
                                "published to this machine only)")
        else:
            for name in ("oidc_issuer", "oidc_audience"):
                if not getattr(self, name):
                    problems.append(f"{prefix}{name.upper()}: required with {prefix}AUTH=oidc")
            if not self.allowed_subject_list() and not self.allowed_group_list():
                problems.append(f"{prefix}ALLOWED_SUBJECTS / {prefix}ALLOWED_GROUPS: name who may see decoded "
                                "payloads (or `*` in ALLOWED_SUBJECTS for everyone the issuer signs for)")
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            problems.append(f"{prefix}TLS_CERT_PATH and {prefix}TLS_KEY_PATH: HTTPS needs both or neither")
        return problems


class Settings(BaseSettings):
    """Worker and CLI settings. Every field can be set by the environment variable named in its alias."""

    model_config = SettingsConfigDict(env_prefix="HIMIG_", env_file=".env", extra="ignore", populate_by_name=True)

    # Where Temporal is: these win when set; otherwise TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / the config profile
    # (see worker.temporal_connection, which also reads TLS, mTLS and the API key the SDK's way).
    temporal_address: str = Field(DEFAULT_ADDRESS, description="host:port of the Temporal frontend")
    temporal_namespace: str = Field(DEFAULT_NAMESPACE, description="Temporal namespace")
    cli_timeout_seconds: float = Field(20.0, gt=0, le=600, description="`himig`: how long one call to Temporal "
                                       "(connecting, a query, a signal, a listing) may take before the command "
                                       "gives up with one line saying so")
    _temporal: TemporalConnection | None = PrivateAttr(None)
    task_queue: Annotated[str, BeforeValidator(_not_blank)] = Field(
        DEFAULT_TASK_QUEUE, description="Temporal task queue the worker polls and the CLI starts workflows on")

    aws_region: str = Field("us-east-1", validation_alias=AliasChoices("HIMIG_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
                            description="AWS region of every client")
    # Standard boto3 per-service endpoint variables; `None` means the real AWS endpoint.
    s3_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "HIMIG_S3_ENDPOINT_URL"),
                                        description="S3 endpoint; unset: AWS")
    medical_imaging_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_MEDICAL_IMAGING", "HIMIG_MEDICAL_IMAGING_ENDPOINT_URL"),
        description="HealthImaging endpoint; unset: AWS")
    eventbridge_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_EVENTBRIDGE", "HIMIG_EVENTBRIDGE_ENDPOINT_URL"),
        description="EventBridge endpoint; unset: AWS")
    sqs_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_SQS", "HIMIG_SQS_ENDPOINT_URL"),
                                         description="SQS endpoint (the listeners); unset: AWS")
    healthlake_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_HEALTHLAKE", "HIMIG_HEALTHLAKE_ENDPOINT_URL"),
        description="HealthLake endpoint; unset: AWS")

    # DICOMweb (WADO-RS spot checks, the FHIR Endpoint address): the medical-imaging endpoint when that is
    # overridden (the local emulator serves both), else https://dicom-medical-imaging.<region>.amazonaws.com.
    dicomweb_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("HIMIG_DICOMWEB_ENDPOINT_URL"),
                                              description="DICOMweb endpoint; unset: the HealthImaging endpoint when "
                                              "overridden, else AWS's")
    # No placeholder defaults: the local stack puts its own (account 000000000000) in the environment it builds.
    healthlake_data_access_role_arn: RoleArn | None = Field(
        None,
        description="IAM role ARN HealthLake assumes to read the ImagingStudy NDJSON and write the import output; "
                    "required to route to HealthLake")
    healthlake_kms_key_id: KmsKey | None = Field(
        None,
        description="KMS key (ARN, alias ARN, key id or alias/name) for the HealthLake import job's output; "
                    "required to route to HealthLake")

    data_access_role_arn: RoleArn | None = Field(
        None,
        description="IAM role ARN HealthImaging assumes to read the import input and write its output; required by "
                    "the worker")
    event_bus_name: str | None = Field("default", description="EventBridge bus for domain events; empty disables "
                                       "them")
    health_file: str | None = Field(None, description="file written with our pid while polling (container health)")
    import_index_s3_uri: str | None = Field(
        None, description="S3 prefix holding each data store's import index (what it already holds, so that no "
        "re-run, under any work prefix, imports a file twice); the same on every worker. Unset: "
        "`_himig-import-index/` at the root of each migration's work bucket")

    @field_validator("import_index_s3_uri")
    @classmethod
    def _index_uri(cls, value: str | None) -> str | None:
        if value:
            parse_s3_uri(value, field="import_index_s3_uri")
        return value or None

    parse_concurrency: WholeNumber = Field(8, ge=1, le=256, description="parallel header reads inside one parse "
                                           "activity")
    staging_copy_concurrency: WholeNumber = Field(
        16, ge=1, le=48, description="server-side S3 copies one worker runs at once to stage batches, across all the "
                                     "batches it stages; the batch whose staging started first is copied first, so "
                                     "its import job starts while later batches copy (at most 48: the worker's S3 "
                                     "connection pool of 64 is shared with parsing)")
    max_concurrent_activities: WholeNumber = Field(32, ge=1, le=1000, description="activities one worker runs at "
                                                   "once")
    graceful_shutdown_seconds: float = Field(25.0, ge=0, le=115, description="drain time on SIGTERM; below the ECS "
                                             "stopTimeout")
    import_rejects_trailing_padding: Flag = Field(
        False, description="set when the data store's import fails files whose Pixel Data is followed by zero "
                           "padding (no AWS document says HealthImaging does; the emulator does under its "
                           "strict_trailing_padding fault): parse then names such files and validation rejects "
                           "them at every level, instead of the import failing them")
    fingerprint_key: SecretStr | None = Field(
        None, min_length=16,
        description="secret (at least 16 characters) keying the patient/study/series fingerprints (HMAC) kept in "
                    "S3 and shown in reconciliation; required by the worker, the same on every worker, never "
                    "rotated casually (fingerprints written under another key no longer match)")

    payload_keys: SecretStr | None = Field(
        None, description="keys sealing every Temporal payload (AES-256-GCM): `id:base64-of-32-bytes`, comma-"
        "separated, the first seals new payloads, the others still open old ones (rotation: put the new key "
        "first, keep the old ones while their history is kept). Required: history would otherwise hold patient "
        "data in clear. `himig codec-key NEW-ID` prints a new entry")

    @field_validator("payload_keys")
    @classmethod
    def _key_ring(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            KeyRing.parse(value.get_secret_value())  # raises naming the entry, never the key
        return value

    payload_kms_key_id: KmsKey | None = Field(
        None, description="KMS key making the data keys that seal payloads (envelope encryption; needs "
        "kms:GenerateDataKey and kms:Decrypt). With it, new payloads use KMS data keys and HIMIG_PAYLOAD_KEYS, if "
        "set, only opens old ones")
    kms_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_KMS",
                                                                             "HIMIG_KMS_ENDPOINT_URL"),
                                         description="KMS endpoint (payload data keys); unset: AWS")

    def payload_key_ring(self) -> KeyRing | None:
        """The ring of ``payload_keys`` (None when only KMS is configured)."""
        return KeyRing.parse(self.payload_keys.get_secret_value()) if self.payload_keys is not None else None

    def payload_key_problems(self) -> list[str]:
        if self.payload_keys is None and self.payload_kms_key_id is None:
            return [f"{KEYS_VARIABLE}: required, or HIMIG_PAYLOAD_KMS_KEY_ID (payloads carry patient data and are "
                    f"encrypted); generate a key with `himig codec-key KEY-ID`"]
        return []

    def fingerprint_secret(self) -> bytes:
        """The fingerprint key; raises `InvalidSettings` naming ``HIMIG_FINGERPRINT_KEY`` when it is not set."""
        if self.fingerprint_key is None:
            raise InvalidSettings([_MISSING["fingerprint_key"]])
        return self.fingerprint_key.get_secret_value().encode()

    def worker_problems(self) -> list[str]:
        """What the worker needs that these settings lack (the CLI needs none of it), one line per variable."""
        return [line for name, line in _MISSING.items() if getattr(self, name) is None]

    # Who may decide a reconciliation (contracts/attestation.py): the key is held by the workers and the codec
    # server (and an admin host's `himig approve`), never by ordinary operators' CLIs.
    reviewer_attestation_key: SecretStr | None = Field(
        None, min_length=32,
        description="secret (at least 32 characters) with which the codec server and `himig approve` attest who "
                    "sent a reconciliation decision, and workers verify it; only the workers, the codec server and "
                    "admin hosts hold it. Unset on a worker: no decision verifies")
    reconciliation_reviewers: str = Field(
        "", description="comma-separated identities allowed to decide reconciliations: OIDC `sub` values (decisions "
                        "through the codec server) or OS user names (`himig approve` on a host holding the key); "
                        "empty: nobody may decide")

    @field_validator("reviewer_attestation_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    def reviewer_attestation_secret(self) -> bytes | None:
        key = self.reviewer_attestation_key
        return key.get_secret_value().encode() if key else None

    def reconciliation_reviewer_list(self) -> tuple[str, ...]:
        from contracts.attestation import parse_reviewers

        return parse_reviewers(self.reconciliation_reviewers)
    # Import-job polling: the delay grows from the first to the maximum. With the job-events queue configured
    # (HIMIG_JOB_EVENTS_QUEUE_URL) events wake waiting batches, so the maximum can be minutes (e.g. 300).
    job_poll_initial_seconds: float = Field(1.0, gt=0, le=3600, description="first delay between import-job polls, "
                                            "seconds")
    job_poll_max_seconds: float = Field(30.0, gt=0, le=3600, description="longest delay between import-job polls, "
                                        "seconds (minutes are fine with the job-events queue)")
    # Admission of import jobs (activities/job_admission.py): starts paced by what the service accepts, and a cap on
    # the jobs running in a data store whoever started them.
    import_start_initial_tps: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False, description="StartDICOMImportJob "
                                            "calls per second a worker begins with; it grows until throttled")
    import_start_max_tps: float = Field(40.0, gt=0, le=1000, allow_inf_nan=False, description="the most "
                                        "StartDICOMImportJob calls per second a worker makes (AWS's newest quota "
                                        "table: 40, burst 80)")
    plan_import_files_per_second: float = Field(
        80.0, gt=0, le=100_000, allow_inf_nan=False, description="`himig plan`'s estimate: files one import job "
        "imports per second (default: the local stack's measured 82/s, bench/RESULTS.md; set it from your data "
        "store's own jobs)")
    plan_staging_copies_per_second: float = Field(
        100.0, gt=0, le=100_000, allow_inf_nan=False, description="`himig plan`'s estimate: server-side S3 copies "
        "per second while one batch is staged")
    plan_import_job_overhead_seconds: float = Field(
        10.0, ge=0, le=86_400, allow_inf_nan=False, description="`himig plan`'s estimate: seconds each import job "
        "adds beyond its files (start, polling, manifest review, routing)")
    datastore_max_running_jobs: WholeNumber = Field(100, ge=1, le=1000, description="import jobs a data store may "
                                                    "run at once, counting every migration, ingest and other tool "
                                                    "(HealthImaging: 100, 20 in ap-southeast-2)")

    # Source connectors (MigrationInput.source_connector): PACS credentials live here, never in workflow input.
    dicomweb_username: str | None = Field(None, description="HTTP basic-auth user for a DICOMweb source")
    dicomweb_password: SecretStr | None = Field(None, description="HTTP basic-auth password for a DICOMweb source")
    dicomweb_token: SecretStr | None = Field(None, description="bearer token for a DICOMweb source (wins over basic)")
    dicomweb_allowed_origins: Origins = Field(
        "", description="comma/space-separated scheme://host[:port] a `dicomweb` source may name; required with "
        "credentials (they are only sent to these); empty without credentials allows any")
    # OAuth2 client credentials (RFC 6749 §4.4) for an OIDC-protected DICOMweb PACS: the worker fetches bearer
    # tokens from the issuer and refreshes them before they expire (a long pull outlives any one token).
    dicomweb_oidc_token_url: HttpUrl | None = Field(
        None, description="token endpoint of the PACS's OIDC issuer (client-credentials grant); with "
        "HIMIG_DICOMWEB_OIDC_CLIENT_ID and _CLIENT_SECRET it replaces HIMIG_DICOMWEB_TOKEN / basic auth")
    dicomweb_oidc_client_id: str | None = Field(None, description="OAuth2 client id of the worker at the PACS's "
                                                "issuer")
    dicomweb_oidc_client_secret: SecretStr | None = Field(None, description="OAuth2 client secret of the worker at "
                                                          "the PACS's issuer")
    dicomweb_oidc_scope: str | None = Field(None, description="space-separated scopes to request for the PACS "
                                            "(unset: the issuer's default)")
    # HealthImaging's DICOMweb (review's spot check): SigV4 with the worker's AWS credentials, unless the data store
    # was created with an OIDC (Lambda) authorizer and these are set: then an OIDC bearer token.
    healthimaging_oidc_token_url: HttpUrl | None = Field(
        None, description="token endpoint of the issuer the data store's OIDC authorizer trusts; with "
        "HIMIG_HEALTHIMAGING_OIDC_CLIENT_ID and _CLIENT_SECRET, DICOMweb calls to HealthImaging carry its bearer "
        "tokens instead of SigV4")
    healthimaging_oidc_client_id: str | None = Field(None, description="OAuth2 client id of the worker for "
                                                     "HealthImaging DICOMweb")
    healthimaging_oidc_client_secret: SecretStr | None = Field(None, description="OAuth2 client secret of the "
                                                               "worker for HealthImaging DICOMweb")
    healthimaging_oidc_scope: str | None = Field(None, description="space-separated scopes to request for "
                                                 "HealthImaging DICOMweb (unset: the issuer's default)")

    @field_validator("dicomweb_oidc_token_url", "dicomweb_oidc_client_id", "dicomweb_oidc_client_secret",
                     "dicomweb_oidc_scope", "healthimaging_oidc_token_url", "healthimaging_oidc_client_id",
                     "healthimaging_oidc_client_secret", "healthimaging_oidc_scope", mode="before")
    @classmethod
    def _blank_oidc_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _oidc_clients_complete(self) -> Self:
        problems = []
        for prefix in ("dicomweb_oidc", "healthimaging_oidc"):
            parts = {name: getattr(self, f"{prefix}_{name}") for name in ("token_url", "client_id", "client_secret")}
            if any(v is not None for v in parts.values()) and any(v is None for v in parts.values()):
                given = ", ".join(f"HIMIG_{prefix.upper()}_{n.upper()}" for n, v in parts.items() if v is not None)
                for name, value in parts.items():
                    if value is None:
                        problems.append(f"HIMIG_{prefix.upper()}_{name.upper()}: required with {given} (an OAuth2 "
                                        "client needs the token URL, its id and its secret)")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    source_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="network timeout talking to a PACS, "
                                          "seconds")
    source_dir_roots: str = Field(
        "", description="colon-separated directories a `local` source must be under; empty refuses `local` sources")
    # C-MOVE (a `dimse` source with "retrieve": "move"): the PACS sends studies to this AE title, which it maps to
    # this worker's address and port; each worker needs a title (and a PACS entry) of its own.
    dimse_move_ae_title: str | None = Field(
        None, pattern=AE_TITLE_PATTERN, description="AE title of this worker's C-STORE receiver, the C-MOVE "
        "destination the PACS knows; unset refuses `retrieve: move`")
    dimse_move_port: int | None = Field(None, ge=1, le=65535,
                                        description="port the C-MOVE receiver listens on while a move runs")
    dimse_move_host: str = Field("127.0.0.1", description="address the C-MOVE receiver binds (0.0.0.0 in a "
                                 "container; the PACS must reach it)")
    dimse_retrievals_per_source: int = Field(4, ge=1, le=64,
                                             description="C-GETs/C-MOVEs at once against one PACS from this worker "
                                             "(PACS fail with 0xA702 under too many parallel moves)")

    # Sections with their own prefixes, read (and validated) together with everything above.
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="HIMIG_INGEST_*: the S3 arrivals listener")
    job_events: JobEventSettings = Field(default_factory=JobEventSettings,
                                         description="HIMIG_JOB_EVENTS_*: the import-job events listener")
    codec_server: CodecServerSettings = Field(default_factory=CodecServerSettings,
                                              description="HIMIG_CODEC_SERVER_*: `himig codec-server`")
    receiver: ReceiverSettings = Field(default_factory=ReceiverSettings,
                                       description="HIMIG_RECEIVER_*: the DICOM C-STORE receiver")

    # Observability: the Prometheus endpoint of the SDK runtime (its metrics and ours) and OTLP tracing.
    metrics_port: int | None = Field(None, ge=1, le=65535,
                                     description="port of the Prometheus /metrics endpoint; unset disables it")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds (0.0.0.0 in a container)")
    metrics_poll_seconds: float = Field(60.0, ge=5, le=3600,
                                        description="how often the pending-reconciliations gauge is recounted")
    otlp_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("HIMIG_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector (http[s]://host:port) receiving traces; unset disables tracing")

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="debug, info, warning or "
                                                                    "error")
    log_format: Literal["json", "console"] = Field("json", description="json (structlog JSON lines) or console")

    @field_validator("metrics_port", "otlp_endpoint", "dimse_move_ae_title", "dimse_move_port", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _move_pair(self) -> Settings:
        if (self.dimse_move_ae_title is None) != (self.dimse_move_port is None):
            raise ValueError("HIMIG_DIMSE_MOVE_AE_TITLE and HIMIG_DIMSE_MOVE_PORT are set together or not at all")
        return self

    @field_validator("metrics_host", "dimse_move_host")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address to bind (127.0.0.1, 0.0.0.0, ::), got {value!r}") from None
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = urlsplit(value)
        try:
            url.port  # noqa: B018 (raises ValueError for a port that is not a number or out of range)
        except ValueError:
            raise ValueError("must be http[s]://host[:port] with a valid port") from None
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment or url.username:
            raise ValueError("must be http[s]://host[:port] (no credentials, query or fragment)")
        return value.rstrip("/")

    def metrics_bind_address(self) -> str | None:
        """``host:port`` of the Prometheus endpoint (IPv6 in brackets), or None when metrics are off."""
        if self.metrics_port is None:
            return None
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        return f"{host}:{self.metrics_port}"

    @field_validator("event_bus_name", "health_file")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    def allowed_origins(self) -> tuple[str, ...]:
        """``dicomweb_allowed_origins`` parsed and normalised (checked when the settings are read)."""
        return parse_origins(self.dicomweb_allowed_origins)

    def local_roots(self) -> tuple[str, ...]:
        """The directories of ``source_dir_roots`` a `local` source must be under."""
        return tuple(r for r in self.source_dir_roots.split(":") if r)

    def dicomweb_base_url(self) -> str:
        return (self.dicomweb_endpoint_url or self.medical_imaging_endpoint_url
                or f"https://dicom-medical-imaging.{self.aws_region}.amazonaws.com")

    def temporal(self) -> TemporalConnection:
        """How to reach Temporal (resolved once; raises `TemporalConfigError` naming what is wrong)."""
        if self._temporal is None:
            explicit = self.model_fields_set
            self._temporal = temporal_connection.resolve(
                self.temporal_address if "temporal_address" in explicit else None,
                self.temporal_namespace if "temporal_namespace" in explicit else None)
        return self._temporal

    @field_validator("temporal_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if problem := temporal_connection.host_port_problem(value):
            raise ValueError(problem)
        return value


# Settings the worker cannot run without (the CLI, which only talks to Temporal and S3, needs none of them):
# no production defaults, so a deployment that forgets one fails at start naming it. The local stack sets its own.
_MISSING = {
    "data_access_role_arn": "HIMIG_DATA_ACCESS_ROLE_ARN: required by the worker (the ARN of the IAM role "
                            "HealthImaging assumes for import jobs)",
    "fingerprint_key": "HIMIG_FINGERPRINT_KEY: required by the worker (a secret of at least 16 characters keying "
                       "the patient fingerprints; `himig stack up` generates one for the local stack)",
}

# HIMIG_* variables that are not fields of `Settings` but are set legitimately beside them.
OTHER_VARIABLES = {
    "HIMIG_RECORD_HISTORIES": "the test suite: re-record the replay histories",
    "HIMIG_PRIVATE_NETNS": "the test suite: set by tests/support/in_private_netns.sh",
}
# Namespaces of other programs with settings of their own, which check their own names.
OTHER_PREFIXES = ("HIMIG_STACK_",  # the local stack (devstack.stack.StackConfig)
                  "HIMIG_EMULATOR_")  # the HealthImaging emulator


def _sections() -> tuple[tuple[type[BaseSettings], str], ...]:
    return ((Settings, "HIMIG_"), (IngestSettings, "HIMIG_INGEST_"), (JobEventSettings, "HIMIG_JOB_EVENTS_"),
            (CodecServerSettings, "HIMIG_CODEC_SERVER_"), (ReceiverSettings, "HIMIG_RECEIVER_"))


def _field_variables(field_name: str, field: Any, prefix: str) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [prefix + field_name.upper()]


def setting_variables() -> set[str]:
    """Every environment variable the settings read (prefix + field, or a field's aliases such as AWS_REGION)."""
    names: set[str] = set()
    for model, prefix in _sections():
        for field_name, field in model.model_fields.items():
            if field_name not in _SECTIONS:  # sections: listed with their own prefix
                names.update(_field_variables(field_name, field, prefix))
    return names


def unknown_variables(environ: dict[str, str], dotenv: dict[str, str | None]) -> list[str]:
    """One line per ``HIMIG_*`` name that nothing reads (a typo is otherwise silently ignored), with the likely
    intended name when one is close. Names are compared as pydantic-settings reads them: case-insensitively."""
    known = {n for n in setting_variables() if n.startswith("HIMIG_")} | set(OTHER_VARIABLES)
    problems = []
    for where, names in (("", environ), (" (in .env)", dotenv)):
        for name in sorted(names):
            upper = name.upper()
            if not upper.startswith("HIMIG_") or upper in known or upper.startswith(OTHER_PREFIXES):
                continue
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{name}{where}: not a himig setting{hint} (see the settings table in README.md)")
    return problems


def _dotenv() -> dict[str, str | None]:
    # pydantic-settings reads `.env` from the current directory; so do we, to check the same names.
    path = Path(".env")
    return dict(dotenv_values(path)) if path.is_file() else {}


def _default(field: Any) -> str:
    if field.default_factory is not None or field.default is None or field.is_required():
        return "-"
    value = getattr(field.default, "value", field.default)
    return f"`{value}`" if value != "" else "(empty)"


def settings_table() -> str:
    """The README's table of every variable: name (and aliases), default, description."""
    lines = ["| variable | default | description |", "|---|---|---|"]
    for model, prefix in _sections():
        for field_name, field in model.model_fields.items():
            if field_name in _SECTIONS:
                continue
            first, *others = _field_variables(field_name, field, prefix)
            name = f"`{first}`" + (f" (or {', '.join(f'`{o}`' for o in others)})" if others else "")
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| {name} | {_default(field)} | {description} |")
    return "\n".join(lines) + "\n"


TABLE_BEGIN = "<!-- settings table: generated by `python -m worker.settings --readme README.md`; do not edit -->"
TABLE_END = "<!-- end of the settings table -->"


def with_table(readme: str) -> str:
    """``readme`` with the block between `TABLE_BEGIN` and `TABLE_END` replaced by `settings_table`."""
    head, sep, rest = readme.partition(TABLE_BEGIN)
    _, sep2, tail = rest.partition(TABLE_END)
    if not sep or not sep2:
        raise ValueError(f"README has no settings-table markers ({TABLE_BEGIN} ... {TABLE_END})")
    return f"{head}{TABLE_BEGIN}\n{settings_table()}{TABLE_END}{tail}"


# Model name in a ValidationError's title -> the prefix of its variables.
_PREFIXES = {model.__name__: prefix for model, prefix in _sections()}
_SECTIONS = {"ingest": "IngestSettings", "job_events": "JobEventSettings", "codec_server": "CodecServerSettings",
             "receiver": "ReceiverSettings"}


def env_name(model: str, loc: tuple[Any, ...]) -> str:
    """The environment variable behind ``loc`` of ``model`` (an alias such as ``AWS_REGION`` stays as it is)."""
    if not loc:
        return _PREFIXES.get(model, "HIMIG_").rstrip("_")
    head = str(loc[0])
    if head.isupper():
        return head
    if model == "Settings" and head in _SECTIONS and len(loc) > 1:
        return env_name(_SECTIONS[head], loc[1:])
    return _PREFIXES.get(model, "HIMIG_") + head.upper()


def _one_line(message: str) -> str:
    return " ".join(message.removeprefix("Value error, ").split())


def describe_error(err: ValidationError) -> list[str]:
    """One line per problem, each naming the variable to change and the reason (never the value: secrets)."""
    lines = []
    for e in err.errors():
        if not e["loc"] and e["type"] == "value_error":
            # a check across fields already names its variables
            lines.extend(str(e["ctx"]["error"]).split("\n"))
        else:
            lines.append(f"{env_name(err.title, tuple(e['loc']))}: {_one_line(e['msg'])}")
    return lines


class InvalidSettings(ValueError):
    """Settings that cannot be used; ``problems`` has one line per variable, naming it and the reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings from the environment:\n" + "\n".join(f"  {p}" for p in problems))


_S = TypeVar("_S", IngestSettings, JobEventSettings, CodecServerSettings, ReceiverSettings)


def _section(section: type[_S], problems: list[str]) -> _S:
    try:
        return section()
    except ValidationError as err:
        problems.extend(describe_error(err))
        return section.model_construct()  # an unvalidated stand-in, only so the rest can still be checked


def load_settings(*, for_worker: bool = True) -> Settings:
    """Read and validate every setting, every section, before anything connects.

    Raises ``InvalidSettings`` listing all problems at once: each section is read on its own, so a bad section
    does not hide problems elsewhere; an unknown ``HIMIG_*`` variable (environment or `.env`) is a problem too.
    ``for_worker`` also requires what only the worker needs (the fingerprint key, the data-access role); the CLI
    passes False, so an operator's machine never needs the fingerprint secret.
    """
    problems: list[str] = unknown_variables(dict(os.environ), _dotenv())
    ingest = _section(IngestSettings, problems)
    job_events = _section(JobEventSettings, problems)
    codec_server = _section(CodecServerSettings, problems)
    receiver = _section(ReceiverSettings, problems)
    try:
        settings = Settings(ingest=ingest, job_events=job_events, codec_server=codec_server, receiver=receiver)
    except ValidationError as err:
        problems.extend(describe_error(err))
    else:
        if for_worker:
            problems.extend(settings.worker_problems())
            problems.extend(settings.receiver.problems(settings.ingest))
        try:
            settings.temporal()
        except TemporalConfigError as err:
            problems.extend(err.problems)
        problems.extend(settings.payload_key_problems())
    if problems:
        raise InvalidSettings(problems)
    return settings


def main(argv: list[str]) -> int:
    """``python -m worker.settings --markdown`` prints the settings table; ``--readme PATH`` rewrites its block."""
    if argv == ["--markdown"]:
        print(settings_table(), end="")
        return 0
    if len(argv) == 2 and argv[0] == "--readme":
        path = Path(argv[1])
        path.write_text(with_table(path.read_text()))
        return 0
    print("usage: python -m worker.settings --markdown | --readme README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
