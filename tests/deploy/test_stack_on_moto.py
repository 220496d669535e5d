"""The CloudFormation template deployed for real into moto's CloudFormation, and the worker's listeners run on
what it created: the rule → job-events queue path and the landing bucket → ingest queue path.

The listeners are configured from the deployed task definition's own environment (so the variable names and the
queue URLs are the stack's), with only the endpoints pointed at the local servers. A moto server of its own: the
rule on the default bus would otherwise see every other test's import-job events.
"""

from __future__ import annotations

import ast
import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from contracts.ingest import ingest_workflow_id
from contracts.migration import batch_workflow_id
from tests.support.deployment import DEPLOY, EXAMPLE_VALUES, fill, plain_file, render_module, use_only
from tests.support.dicom import make_instance, uid
from tests.support.eventually import wait_until_async
from tests.support.installation import PAYLOAD_KEYS
from tests.support.listeners import running
from tests.support.servers import start_moto
from worker.jobevents import JobEventListener
from worker.listener import SqsListener
from worker.settings import Settings, load_settings
from workflows.batch import JOB_EVENT_SIGNAL

STACK = "himig-test"
WAIT_LIMIT = 30.0


def aws(url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name="us-east-1")


@pytest.fixture(scope="module")
def stack(log_dir: Path) -> Iterator[dict[str, Any]]:
    server = start_moto(log_dir)
    try:
        url = server.url
        ec2, sm, cf = aws(url, "ec2"), aws(url, "secretsmanager"), aws(url, "cloudformation")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="himig", Description="worker", VpcId=vpc)["GroupId"]
        parameters = {
            "ImageRepository": "himig/worker", "ImageTag": "1.4.0", "Subnets": subnet, "SecurityGroups": group,
            "TemporalAddress": "himig.a1b2c.tmprl.cloud:7233", "TemporalNamespace": "himig.a1b2c",
            "TaskQueue": f"deployed-{uuid.uuid4().hex[:8]}", "DatastoreId": "c" * 32,
            "SourceBucket": "hospital-archive", "SourcePrefix": "dicom/", "WorkBucket": "himig-work",
            "IngestBucketName": "himig-landing", "HealthLakeDatastoreId": "d" * 32,
            "FingerprintKeySecretArn": sm.create_secret(Name="himig/fingerprint", SecretString="k" * 32)["ARN"],
            "TemporalApiKeySecretArn": sm.create_secret(Name="himig/api-key", SecretString="an-api-key")["ARN"],
            "PayloadKeysSecretArn": sm.create_secret(Name="himig/payload-keys", SecretString=PAYLOAD_KEYS)["ARN"],
            "PayloadKmsKeyArn": aws(url, "kms").create_key(Description="himig payloads")["KeyMetadata"]["Arn"],
            "ReviewerAttestationKeySecretArn": sm.create_secret(Name="himig/reviewer-attestation-key",
                                                                SecretString="r" * 48)["ARN"],
            "ReconciliationReviewers": "alice-sub,bob-sub",
        }
        cf.create_stack(StackName=STACK, TemplateBody=(DEPLOY / "cloudformation" / "himig.yaml").read_text(),
                        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
                        Capabilities=["CAPABILITY_IAM"])
        described = cf.describe_stacks(StackName=STACK)["Stacks"][0]
        assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
        summaries = cf.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
        yield {"url": url, "parameters": parameters, "resources": {r["LogicalResourceId"]: r for r in summaries},
               "summaries": summaries,
               "outputs": {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}}
    finally:
        server.stop()


def cf_resources(stack: dict[str, Any]) -> list[dict[str, Any]]:
    return list(stack["summaries"])


def deployed_values(stack: dict[str, Any]) -> dict[str, str]:
    """The placeholders of the plain files, as this stack filled them in."""
    iam, sqs = aws(stack["url"], "iam"), aws(stack["url"], "sqs")
    physical = {k: r["PhysicalResourceId"] for k, r in stack["resources"].items()}
    values = {**EXAMPLE_VALUES, **stack["parameters"], "STACK_NAME": STACK, "AWS_ACCOUNT_ID": "123456789012",
              "LogGroup": physical["LogGroup"]}
    for role in ("TaskRole", "ExecutionRole", "DataAccessRole", "HealthLakeDataAccessRole"):
        values[f"{role}Arn"] = iam.get_role(RoleName=physical[role])["Role"]["Arn"]
    for queue in ("JobEventsQueue", "IngestQueue"):
        values[queue] = physical[queue]
        values[f"{queue}Arn"] = sqs.get_queue_attributes(
            QueueUrl=physical[queue], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return values


# moto 5.2.5's CloudFormation divergences, each worked around here only:
# - an ECS task definition keeps neither requiresCompatibilities, networkMode, cpu, runtimePlatform nor the
#   two role ARNs (it registers an EC2 "bridge" definition);
MOTO_DROPS = ("requiresCompatibilities", "networkMode", "cpu", "runtimePlatform", "executionRoleArn", "taskRoleArn")
# - Ref AWS::NoValue inside a list becomes a null entry instead of removing the entry;
# - an inline role policy is stored as Python's repr of the document, not JSON.


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nulls(v) for v in value if v is not None]
    return value


def as_document(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = ast.literal_eval(value)
    return without_nulls(value)


def contains(actual: Any, expected: Any, where: str = "") -> list[str]:
    """Where ``actual`` lacks or differs from ``expected`` (extra keys in ``actual`` are API defaults)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: not an object"]
        return [p for k, v in expected.items()
                for p in (contains(actual[k], v, f"{where}.{k}") if k in actual else [f"{where}.{k}: missing"])]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: {actual!r} != {expected!r}"]
        return [p for i, (a, e) in enumerate(zip(actual, expected, strict=True)) for p in contains(a, e, f"{where}[{i}]")]
    return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


class TestTheDeployedStack:
    def test_every_resource_is_created(self, stack: dict[str, Any]) -> None:
        template = render_module().load_template()
        # ClusterName is empty: the stack creates its cluster; every conditional feature is switched on.
        # moto lists queue and bucket policies without their logical ids: counted, not named.
        policies = {k for k, v in template["Resources"].items() if v["Type"].endswith("Policy")}
        assert set(stack["resources"]) - {""} == set(template["Resources"]) - policies
        unnamed = [r for r in cf_resources(stack) if not r["LogicalResourceId"]]
        assert len(unnamed) == len(policies)
        assert {r["ResourceStatus"] for r in cf_resources(stack)} == {"CREATE_COMPLETE"}

    def test_the_task_definition_is_the_plain_file(self, stack: dict[str, Any]) -> None:
        ecs = aws(stack["url"], "ecs")
        deployed = ecs.describe_task_definition(taskDefinition=stack["outputs"]["TaskDefinitionArn"])["taskDefinition"]
        expected = json.loads(fill((DEPLOY / "ecs/task-definition.json").read_text(), deployed_values(stack)))
        for field in MOTO_DROPS:  # checked statically (test_cloudformation), not by this deployment
            expected.pop(field)
        assert contains(without_nulls(deployed), expected) == []

    def test_the_role_policies_are_the_plain_files(self, stack: dict[str, Any]) -> None:
        iam = aws(stack["url"], "iam")
        values = deployed_values(stack)
        for role, stem in render_module().ROLES.items():
            name = stack["resources"][role]["PhysicalResourceId"]
            (policy_name,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
            document = as_document(iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"])
            assert document == json.loads(fill((DEPLOY / f"iam/{stem}-policy.json").read_text(), values)), role
            trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
            trust = as_document(trust)
            assert trust == json.loads(fill((DEPLOY / f"iam/{stem}-trust-policy.json").read_text(), values)), role


@pytest.fixture
def deployed_settings(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      temporal_env: Any) -> Settings:
    """The worker's settings from the deployed task definition's environment, endpoints pointed at moto and the
    test's Temporal (plaintext, no API key: the secrets are the only values not taken from the stack)."""
    ecs = aws(stack["url"], "ecs")
    (container,) = without_nulls(ecs.describe_task_definition(
        taskDefinition=stack["outputs"]["TaskDefinitionArn"])["taskDefinition"]["containerDefinitions"])
    use_only({e["name"]: e["value"] for e in container["environment"]}, monkeypatch, tmp_path)
    monkeypatch.setenv("HIMIG_FINGERPRINT_KEY", "k" * 32)
    monkeypatch.setenv("HIMIG_PAYLOAD_KEYS", PAYLOAD_KEYS)
    monkeypatch.setenv("TEMPORAL_TLS", "false")
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv("HIMIG_TEMPORAL_NAMESPACE", temporal_env.client.namespace)
    for service in ("S3", "SQS", "EVENTBRIDGE"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", stack["url"])
    monkeypatch.setenv("HIMIG_INGEST_WAIT_SECONDS", "1")
    monkeypatch.setenv("HIMIG_JOB_EVENTS_WAIT_SECONDS", "1")
    return load_settings()


def signalled(listener: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(listener.signalled >= 1)
    return check


def drained(sqs: Any, queue_url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        left = (await asyncio.to_thread(sqs.get_queue_attributes, QueueUrl=queue_url,
                                        AttributeNames=["All"]))["Attributes"]
        return (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
    return check


class TestTheListenersOnTheStack:
    async def test_an_import_job_event_reaches_its_batch_through_the_rule(
            self, stack: dict[str, Any], deployed_settings: Settings, client: Client) -> None:
        settings = deployed_settings
        assert settings.job_events.queue_url == stack["outputs"]["JobEventsQueueUrl"]
        # A batch waiting on its job (on a queue nobody polls: only the signal matters here).
        migration = f"deployed-{uuid.uuid4().hex[:6]}"
        handle = await client.start_workflow("ImportBatchWorkflow", id=batch_workflow_id(migration, 1),
                                             task_queue=f"nobody-{uuid.uuid4().hex[:6]}")
        output = f"s3://himig-work/himig/{migration}/import-output/batch-00001/"
        detail = {"imagingVersion": "1.0", "datastoreId": "c" * 32, "jobId": "1" * 32, "jobName": "x",
                  "jobStatus": "COMPLETED", "inputS3Uri": "s3://himig-work/himig/in/", "outputS3Uri": output}
        events = aws(stack["url"], "events")
        sent = events.put_events(Entries=[
            {"Source": "aws.medical-imaging", "DetailType": "Import Job Completed", "Detail": json.dumps(detail)},
            # not matched by the rule: never reaches the queue
            {"Source": "aws.medical-imaging", "DetailType": "Data Store Created", "Detail": json.dumps({"x": 1})},
        ])
        assert sent["FailedEntryCount"] == 0
        sqs = aws(stack["url"], "sqs")
        try:
            async with running(JobEventListener(client, sqs, settings.job_events)) as listener:
                await wait_until_async(signalled(listener), "the job event to be signalled", timeout=WAIT_LIMIT)
                await wait_until_async(drained(sqs, settings.job_events.queue_url or ""), "the queue to drain",
                                       timeout=WAIT_LIMIT)
            history = await handle.fetch_history()
            signals = [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events
                       if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
            assert signals == [JOB_EVENT_SIGNAL]
            assert (listener.malformed, listener.unknown_jobs) == (0, 0)
        finally:
            await handle.terminate("test done")

    async def test_an_arrival_in_the_landing_bucket_starts_its_ingest(
            self, stack: dict[str, Any], deployed_settings: Settings, client: Client) -> None:
        settings = deployed_settings
        assert settings.ingest.queue_url == stack["outputs"]["IngestQueueUrl"]
        s3 = aws(stack["url"], "s3")
        # moto's CloudFormation does not apply a bucket's NotificationConfiguration (moto 5.2.5,
        # s3 create_from_cloudformation_json): apply the rendered file, as an operator with an existing bucket would.
        notification = json.loads(fill((DEPLOY / "s3/ingest-notification.json").read_text(), deployed_values(stack)))
        s3.put_bucket_notification_configuration(Bucket="himig-landing", NotificationConfiguration=notification)
        study = uid()
        s3.put_object(Bucket="himig-landing", Key="incoming/ct/1.dcm", Body=make_instance(study, uid()))
        s3.put_object(Bucket="himig-landing", Key="elsewhere/2.dcm", Body=make_instance(uid(), uid()))
        sqs = aws(stack["url"], "sqs")
        listener = SqsListener(client, sqs, s3, settings.ingest, settings.task_queue)
        async with running(listener):
            await wait_until_async(signalled(listener), "the arrival to be signalled", timeout=WAIT_LIMIT)
            # S3's test event and the arrival, deleted; the key outside the watched prefix never sent
            await wait_until_async(drained(sqs, settings.ingest.queue_url or ""), "the queue to drain",
                                   timeout=WAIT_LIMIT)
        handle = client.get_workflow_handle(
            ingest_workflow_id(settings.ingest.datastore_id or "", study, "himig-landing", "incoming/ct/1.dcm"))
        try:
            described = await handle.describe()
            assert described.status == WorkflowExecutionStatus.RUNNING
            assert described.task_queue == stack["parameters"]["TaskQueue"]
            assert listener.signalled == 1
        finally:
            await handle.terminate("test done")


def test_plain_files_fill_from_a_real_stack(stack: dict[str, Any]) -> None:
    """Every placeholder of the plain files is something a deployed stack has a value for."""
    values = deployed_values(stack)
    for path in DEPLOY.glob("*/*.json"):
        fill(path.read_text(), values)
    assert plain_file("iam/task-role-policy.json", values)["Statement"]
