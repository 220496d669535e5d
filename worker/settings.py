"""All runtime settings of the worker and the CLI, read from the environment (and `.env`).

One `Settings` object is built at process start and passed in; nothing reads `os.environ` elsewhere.
Endpoint overrides use boto3's own standard variable names so that every AWS client, including those
in tools we do not control, finds the local stack the same way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.sources import parse_origins

DEFAULT_TASK_QUEUE = "dicom-migration"


class Settings(BaseSettings):
    """Worker and CLI settings. Every field can be set by the environment variable named in its alias."""

    model_config = SettingsConfigDict(env_prefix="HIMIG_", env_file=".env", extra="ignore", populate_by_name=True)

    temporal_address: str = Field("127.0.0.1:7233", description="host:port of the Temporal frontend")
    temporal_namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE

    aws_region: str = Field("us-east-1", validation_alias=AliasChoices("HIMIG_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"))
    # Standard boto3 per-service endpoint variables; `None` means the real AWS endpoint.
    s3_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "HIMIG_S3_ENDPOINT_URL"))
    medical_imaging_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_MEDICAL_IMAGING", "HIMIG_MEDICAL_IMAGING_ENDPOINT_URL")
    )
    eventbridge_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_EVENTBRIDGE", "HIMIG_EVENTBRIDGE_ENDPOINT_URL")
    )
    sqs_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_SQS", "HIMIG_SQS_ENDPOINT_URL"))
    healthlake_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_HEALTHLAKE", "HIMIG_HEALTHLAKE_ENDPOINT_URL")
    )

    # DICOMweb (WADO-RS spot checks, the FHIR Endpoint address): the medical-imaging endpoint when that is
    # overridden (the local emulator serves both), else https://dicom-medical-imaging.<region>.amazonaws.com.
    dicomweb_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("HIMIG_DICOMWEB_ENDPOINT_URL"))
    healthlake_data_access_role_arn: str = Field(
        "arn:aws:iam::000000000000:role/HealthLakeImportRole", pattern=r"^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+$",
        description="role HealthLake assumes to read the ImagingStudy NDJSON and write the import output")
    healthlake_kms_key_id: str = Field(
        "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-000000000000",
        description="KMS key for the HealthLake import job's output (StartFHIRImportJob requires one)")

    data_access_role_arn: str = Field(
        "arn:aws:iam::000000000000:role/HealthImagingImportRole",
        description="role HealthImaging assumes to read the import input and write its output",
    )
    event_bus_name: str | None = Field("default", description="EventBridge bus for domain events; empty disables")
    health_file: str | None = Field(None, description="file written with our pid while polling (stack health)")
    parse_concurrency: int = Field(8, ge=1, le=256, description="parallel header reads inside one parse activity")
    max_concurrent_activities: int = Field(32, ge=1, le=1000)
    graceful_shutdown_seconds: float = Field(25.0, ge=0, le=115, description="below ECS stopTimeout")
    fingerprint_key: SecretStr | None = Field(
        None, min_length=16,
        description="secret keying the patient/study/series fingerprints (HMAC) kept in S3 and shown in "
                    "reconciliation; the same on every worker, never rotated casually (fingerprints written "
                    "under another key no longer match). Unset: plain SHA-256")

    def fingerprint_secret(self) -> bytes | None:
        return self.fingerprint_key.get_secret_value().encode() if self.fingerprint_key else None
    # Import-job polling: the delay grows from the first to the maximum. With the job-events queue configured
    # (HIMIG_JOB_EVENTS_QUEUE_URL) events wake waiting batches, so the maximum can be minutes (e.g. 300).
    job_poll_initial_seconds: float = Field(1.0, gt=0, le=3600, description="first delay between job polls")
    job_poll_max_seconds: float = Field(30.0, gt=0, le=3600, description="longest delay between job polls")

    # Source connectors (MigrationInput.source_connector): PACS credentials live here, never in workflow input.
    dicomweb_username: str | None = Field(None, description="HTTP basic-auth user for a DICOMweb source")
    dicomweb_password: SecretStr | None = Field(None, description="HTTP basic-auth password for a DICOMweb source")
    dicomweb_token: SecretStr | None = Field(None, description="bearer token for a DICOMweb source (wins over basic)")
    dicomweb_allowed_origins: str = Field(
        "", description="comma/space-separated scheme://host[:port] a `dicomweb` source may name; required with "
        "credentials (they are only sent to these); empty without credentials allows any")
    source_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="network timeout talking to a PACS")
    source_dir_roots: str = Field(
        "", description="colon-separated directories a `local` source must be under; empty refuses `local` sources")

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("dicomweb_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        parse_origins(value)  # raises ValueError naming the bad entry
        return value

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

    @field_validator("temporal_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port, got {value!r}")
        return value
