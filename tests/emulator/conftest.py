"""Fixtures for the emulator tests: unique buckets and data stores per test, DICOM builders, job polling,
and private emulator processes (for flags such as a manual clock or small quotas, and for restarts)."""

from __future__ import annotations

import copy
import io
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from botocore.config import Config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from tests.conftest import make_medical_imaging
from tests.support.eventually import assert_eventually_sync, wait_until
from tests.support.oidc_issuer import AUDIENCE, OidcIssuer
from tests.support.servers import ServerProcess, start_emulator

ROLE_ARN = "arn:aws:iam::123456789012:role/HealthImagingImportRole"
_BASE = pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def dicom_bytes(study: str = "1.2.826.0.1.1", series: str = "1.2.826.0.1.1.1", sop: str = "1.2.826.0.1.1.1.1",
                patient_id: str = "PAT-1", mutate: Callable[[Dataset], None] | None = None,
                enforce_file_format: bool = True) -> bytes:
    """A small CT (CT_small.dcm, ~39 KB) with the given UIDs and PatientID, as P10 bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long values are deliberate in some tests
        return _build(study, series, sop, patient_id, mutate, enforce_file_format)


def _build(study: str, series: str, sop: str, patient_id: str, mutate: Callable[[Dataset], None] | None,
           enforce_file_format: bool) -> bytes:
    ds = copy.deepcopy(_BASE)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = patient_id
    ds.PatientName = "TEST^SYNTHETIC"
    if mutate is not None:
        mutate(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=enforce_file_format)
    return buf.getvalue()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_job(mi: Any, datastore_id: str, job_id: str, timeout: float = 30.0,
             statuses: tuple[str, ...] = ("COMPLETED", "FAILED")) -> dict[str, Any]:
    """Poll GetDICOMImportJob until the job reaches one of ``statuses`` (bounded; fails the test otherwise)."""

    def ended() -> dict[str, Any]:
        props: dict[str, Any] = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"]
        assert props["jobStatus"] in statuses, f"job {job_id} still {props['jobStatus']} after {timeout}s"
        return props

    return assert_eventually_sync(ended, timeout=timeout, interval=0.02)


def wait_datastore_active(mi: Any, datastore_id: str, timeout: float = 10.0) -> None:
    wait_until(lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "ACTIVE",
               "the data store to become ACTIVE", timeout=timeout, interval=0.02)


def create_datastore(mi: Any) -> str:
    ds_id: str = mi.create_datastore(datastoreName=unique("ds"))["datastoreId"]
    wait_datastore_active(mi, ds_id)
    return ds_id


class Importer:
    """Upload files to a private bucket prefix and run import jobs over them."""

    def __init__(self, s3: Any, mi: Any, bucket: str, datastore_id: str) -> None:
        self.s3 = s3
        self.mi = mi
        self.bucket = bucket
        self.datastore_id = datastore_id

    def upload(self, prefix: str, files: dict[str, bytes]) -> None:
        for name, body in files.items():
            self.s3.put_object(Bucket=self.bucket, Key=f"{prefix}{name}", Body=body)

    def start(self, prefix: str, token: str | None = None, output: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "datastoreId": self.datastore_id, "dataAccessRoleArn": ROLE_ARN,
            "inputS3Uri": f"s3://{self.bucket}/{prefix}",
            "outputS3Uri": output or f"s3://{self.bucket}/out/",
        }
        if token:
            kwargs["clientToken"] = token
        result: dict[str, Any] = self.mi.start_dicom_import_job(**kwargs)
        return result

    def run(self, prefix: str, files: dict[str, bytes] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Upload (optionally), import, wait; returns the final jobProperties."""
        if files:
            self.upload(prefix, files)
        job = self.start(prefix, **kwargs)
        return wait_job(self.mi, self.datastore_id, job["jobId"])

    def read(self, uri: str) -> str:
        assert uri.startswith(f"s3://{self.bucket}/")
        key = uri[len(f"s3://{self.bucket}/"):]
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body.decode()

    def results(self, props: dict[str, Any]) -> dict[str, Any]:
        """Manifest and parsed ndjson lines of a finished job."""
        import json

        out = props["outputS3Uri"]
        return {
            "manifest": json.loads(self.read(out + "job-output-manifest.json"))["jobSummary"],
            "success": [json.loads(x) for x in self.read(out + "SUCCESS/success.ndjson").splitlines()],
            "failure": [json.loads(x) for x in self.read(out + "FAILURE/failure.ndjson").splitlines()],
            "warning": [json.loads(x) for x in self.read(out + "WARNING/warning.ndjson").splitlines()],
        }


@pytest.fixture
def bucket(s3: Any) -> str:
    name = unique("emu")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def datastore_id(medical_imaging: Any) -> str:
    return create_datastore(medical_imaging)


@pytest.fixture
def importer(s3: Any, medical_imaging: Any, bucket: str, datastore_id: str) -> Importer:
    return Importer(s3, medical_imaging, bucket, datastore_id)


@pytest.fixture
def raw_client(emulator_url: str) -> Any:
    """A medical-imaging client that skips botocore's client-side validation, so the server's is exercised."""
    import boto3

    return boto3.client("medical-imaging", endpoint_url=emulator_url, region_name="us-east-1",
                        config=Config(inject_host_prefix=False, parameter_validation=False,
                                      retries={"mode": "standard", "max_attempts": 1}))


@pytest.fixture
def private_emulator(moto_url: str, log_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra emulator processes with their own flags/data dir; all are stopped (by pid) at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, port: int | None = None) -> ServerProcess:
        server = start_emulator(data_dir or tmp_path / "data", moto_url, log_dir, port=port, extra_args=list(args))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client_for(server: ServerProcess) -> Any:
    return make_medical_imaging(server.url)


# ---- OIDC (DICOMweb bearer tokens)


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    """A local OIDC issuer; module-scoped, so each module counts the JWKS fetches of its own emulator."""
    server = OidcIssuer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oidc_emulator(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                  issuer: OidcIssuer) -> Iterator[ServerProcess]:
    """A private emulator that accepts ``issuer``'s bearer tokens (audience AUDIENCE) as well as SigV4."""
    server = start_emulator(tmp_path_factory.mktemp("oidc-emulator-data"), moto_url, log_dir,
                            extra_args=["--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE])
    yield server
    server.stop()
