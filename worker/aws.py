"""boto3 client factory: one place decides endpoints, retries and connection pools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from worker.settings import Settings


def make_client(service: str, settings: Settings, endpoint_url: str | None = None, *, pool: int = 64) -> Any:
    """Create a boto3 client for ``service``.

    When an endpoint is overridden (the local stack), host-prefix injection is switched off: botocore would
    otherwise send HealthImaging runtime calls to ``runtime-127.0.0.1``, which cannot resolve.
    """
    config = Config(
        region_name=settings.aws_region,
        max_pool_connections=pool,
        # Temporal owns retries with backoff; botocore retrying underneath would hide throttling from it.
        retries={"mode": "standard", "max_attempts": 2},
        inject_host_prefix=endpoint_url is None,
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.session.Session().client(service, endpoint_url=endpoint_url, config=config)


@dataclass
class AwsClients:
    """The clients activities use. boto3 clients are thread-safe; sessions are not, hence one per client."""

    s3: Any
    medical_imaging: Any
    events: Any
    healthlake: Any = None
    # botocore credentials for the SigV4-signed HTTP calls that have no SDK operation (DICOMweb, FHIR $validate).
    credentials: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsClients:
        return cls(
            s3=make_client("s3", settings, settings.s3_endpoint_url),
            medical_imaging=make_client("medical-imaging", settings, settings.medical_imaging_endpoint_url),
            events=make_client("events", settings, settings.eventbridge_endpoint_url),
            healthlake=make_client("healthlake", settings, settings.healthlake_endpoint_url),
            credentials=boto3.session.Session().get_credentials(),
        )
