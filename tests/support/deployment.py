"""The deployment files for tests: the renderer (deploy/render.py is a script, not a package) and placeholders.

`EXAMPLE_VALUES` gives every ``${Name}`` placeholder of the plain files a value of the right shape (ARNs that
parse, a queue URL), so validators that check shapes (parliament, botocore) see what an operator would submit.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The roles' permission policies (their trust policies are resource policies, outside parliament's remit).
PERMISSION_POLICIES = ["iam/task-role-policy.json", "iam/execution-role-policy.json",
                       "iam/data-access-role-policy.json", "iam/healthlake-data-access-role-policy.json"]
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

ACCOUNT = "123456789012"
EXAMPLE_VALUES = {
    "AWS_PARTITION": "aws", "AWS_REGION": "us-east-1", "AWS_ACCOUNT_ID": ACCOUNT, "STACK_NAME": "himig",
    "ImageRepository": "himig/worker", "ImageTag": "1.4.0", "TaskCpu": "1024", "TaskMemory": "2048",
    "TaskQueue": "dicom-migration", "GracefulShutdownSeconds": "60",
    "TemporalAddress": "himig.a1b2c.tmprl.cloud:7233", "TemporalNamespace": "himig.a1b2c",
    "DatastoreId": "a" * 32, "HealthLakeDatastoreId": "b" * 32, "EventBusName": "default",
    "SourceBucket": "hospital-archive", "SourcePrefix": "dicom/", "WorkBucket": "himig-work", "WorkPrefix": "himig/",
    "IngestBucketName": "himig-landing", "IngestPrefix": "incoming/",
    "FingerprintKeySecretArn": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:himig/fingerprint-AbCdEf",
    "PayloadKeysSecretArn": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:himig/payload-keys-AbCdEf",
    "PayloadKmsKeyArn": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "ReviewerAttestationKeySecretArn":
        f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:himig/reviewer-attestation-key-AbCdEf",
    "ReconciliationReviewers": "3f1c9a2e-6b7d-4e8f-9a0b-1c2d3e4f5a6b,jdoe",
    "TemporalApiKeySecretArn": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:himig/temporal-api-key-AbCdEf",
    "TaskRoleArn": f"arn:aws:iam::{ACCOUNT}:role/himig-task",
    "ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/himig-execution",
    "DataAccessRoleArn": f"arn:aws:iam::{ACCOUNT}:role/himig-import",
    "HealthLakeDataAccessRoleArn": f"arn:aws:iam::{ACCOUNT}:role/himig-fhir-import",
    "JobEventsQueue": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/himig-job-events",
    "JobEventsQueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:himig-job-events",
    "JobEventsRuleArn": f"arn:aws:events:us-east-1:{ACCOUNT}:rule/himig-job-events",
    "IngestQueue": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/himig-ingest",
    "IngestQueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:himig-ingest",
    "LogGroup": "/himig/himig/worker",
}


@cache
def render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("himig_deploy_render", DEPLOY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with every placeholder replaced; a placeholder without a value is an error naming it."""
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"no value for placeholders {missing}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def plain_file(rel: str, values: dict[str, str] | None = None) -> Any:
    """A committed plain file under deploy/, parsed, with placeholders filled (from `EXAMPLE_VALUES` by default)."""
    return json.loads(fill((DEPLOY / rel).read_text(), EXAMPLE_VALUES if values is None else values))


# What temporalio.envconfig reads from the environment (sdk-core's envconfig.rs documents the list), and the
# credentials boto3 reads: set by deployments, not fields of worker.settings.
TEMPORAL_VARIABLES = {
    "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY", "TEMPORAL_TLS", "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_CERT_DATA", "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_DATA", "TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE",
}
AWS_CREDENTIAL_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def worker_variables() -> set[str]:
    """Every environment variable the worker reads: its settings (prefix + field, or the field's aliases), the
    SDK's Temporal variables and boto3's credentials. `load_settings` refuses unknown ``HIMIG_*`` names; this
    also covers the TEMPORAL_* and AWS_* ones a deployment sets."""
    from worker.settings import setting_variables

    return TEMPORAL_VARIABLES | AWS_CREDENTIAL_VARIABLES | setting_variables()


def use_only(env: dict[str, str], monkeypatch: Any, workdir: Path) -> None:
    """Make ``env`` the process's whole himig / Temporal / AWS environment (no `.env`: ``workdir`` has none)."""
    import os

    monkeypatch.chdir(workdir)
    for name in list(os.environ):
        if name.startswith(("HIMIG_", "TEMPORAL_", "AWS_ENDPOINT_URL")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
