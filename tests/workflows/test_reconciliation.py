"""`ReconciliationWorkflow` against the real Temporal dev server, the HealthImaging emulator and moto
(EventBridge → SQS). Non-primary image sets are made the way production meets them: by importing two files of
one series that disagree on PatientID.

Decisions are attested (tests/support/reviewers.py): sent through a real codec server behind a real OIDC issuer
with the `temporal` CLI, by `himig approve` on a host holding the attestation key, or attested with the key
directly; unattested, forged and unlisted ones are refused and recorded."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pydantic
import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer, Worker

from activities.reconcile import ESCALATED_DETAIL_TYPE, EVENT_SOURCE, ReconcileActivities, diff_metadata
from contracts import metrics
from contracts.reconciliation import (
    ImageSetTarget,
    PromoteInput,
    ReconciliationDecision,
    ReconciliationInput,
    ReconciliationOutcome,
    ReconciliationStatus,
    reconciliation_workflow_id,
)
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually, assert_eventually_sync
from tests.support.installation import converter
from tests.support.logcapture import captured_logs
from tests.support.oidc_issuer import OidcIssuer
from tests.support.prometheus import by_label, scrape
from tests.support.reviewers import (
    attested,
    codec_server,
    decide,
    plain_payload,
    signal_approve,
    temporal_decide_async,
    token,
)
from tests.support.servers import free_port
from tests.support.settings import FINGERPRINT_KEY
from worker.aws import AwsClients
from worker.metrics import build_runtime, watch_reconciliations
from worker.settings import Settings
from workflows.reconciliation import ReconciliationWorkflow


@pytest.fixture
def bus(moto_url: str) -> dict[str, Any]:
    """A private EventBridge bus on moto with a rule for escalations → an SQS queue."""
    events = boto3.client("events", endpoint_url=moto_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    name = f"recon-{uuid.uuid4().hex[:8]}"
    events.create_event_bus(Name=name)
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="escalations", EventBusName=name, EventPattern=json.dumps(
        {"source": [EVENT_SOURCE], "detail-type": [ESCALATED_DETAIL_TYPE]}))
    events.put_targets(Rule="escalations", EventBusName=name, Targets=[{"Id": "q", "Arn": queue_arn}])
    return {"name": name, "sqs": sqs, "queue_url": queue_url}


@pytest.fixture
async def recon_worker(client: Client, settings: Settings, bus: dict[str, Any]) -> AsyncIterator[Worker]:
    clients = AwsClients.from_settings(settings)
    acts = ReconcileActivities(clients.medical_imaging, clients.events, bus["name"],
                               fingerprint_key=FINGERPRINT_KEY.encode(),
                               attestation_key=settings.reviewer_attestation_secret(),
                               reviewers=settings.reconciliation_reviewer_list())
    with ThreadPoolExecutor(max_workers=8) as executor:
        worker = Worker(
            client, task_queue=settings.task_queue, workflows=[ReconciliationWorkflow],
            activities=[acts.describe_conflict, acts.await_image_set, acts.update_before_promote,
                        acts.promote_image_set, acts.delete_image_set, acts.publish_escalation,
                        acts.verify_reviewer],
            activity_executor=executor, workflow_failure_exception_types=[pydantic.ValidationError])
        async with worker:
            yield worker


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer().start()
    yield issuer
    issuer.stop()


@pytest.fixture
def mi(settings: Settings) -> Any:
    return AwsClients.from_settings(settings).medical_imaging


def _import_conflict(mi: Any, s3: Any, bucket: str, datastore_id: str, role_arn: str) -> tuple[str, str]:
    """Import two files of one series with different PatientIDs: returns (primary, non-primary) ids."""
    study, series = uid(), uid()
    prefix = f"recon/{uuid.uuid4().hex[:8]}/"
    s3.put_object(Bucket=bucket, Key=prefix + "a.dcm", Body=make_instance(study, series, patient_id="SYNTH-OLD-7"))
    s3.put_object(Bucket=bucket, Key=prefix + "b.dcm", Body=make_instance(study, series, patient_id="SYNTH-NEW-9"))
    job = mi.start_dicom_import_job(datastoreId=datastore_id, dataAccessRoleArn=role_arn,
                                    inputS3Uri=f"s3://{bucket}/{prefix}", outputS3Uri=f"s3://{bucket}/out/{prefix}")

    def completed() -> None:
        props = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])["jobProperties"]
        assert props["jobStatus"] == "COMPLETED", "import job did not complete"

    assert_eventually_sync(completed, timeout=30, interval=0.05)
    sets = mi.search_image_sets(datastoreId=datastore_id, searchCriteria={"filters": [
        {"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series}]}]})["imageSetsMetadataSummaries"]
    by_primary = {s["isPrimary"]: s["imageSetId"] for s in sets}
    assert set(by_primary) == {True, False}, sets
    return by_primary[True], by_primary[False]


def _get(mi: Any, datastore_id: str, set_id: str, state: str | None = None) -> dict[str, Any]:
    """GetImageSet, waiting (bounded) until the set reaches ``state`` when given."""

    def reached() -> dict[str, Any]:
        got: dict[str, Any] = mi.get_image_set(datastoreId=datastore_id, imageSetId=set_id)
        assert state is None or got["imageSetState"] == state, f"image set still {got['imageSetState']}"
        return got

    return assert_eventually_sync(reached, timeout=10, interval=0.05)


class Recon:
    """One reconciliation under test: a fresh conflict and its running workflow."""

    def __init__(self, handle: WorkflowHandle[Any, Any], primary: str, non_primary: str) -> None:
        self.handle, self.primary, self.non_primary = handle, primary, non_primary

    async def status(self) -> ReconciliationStatus:
        return await self.handle.query("conflict", result_type=ReconciliationStatus)

    async def wait_state(self, state: str, timeout: float = 20.0) -> ReconciliationStatus:
        async def reached() -> ReconciliationStatus:
            status = await self.status()
            assert status.state == state, f"state {status.state}, wanted {state}"
            return status

        return await assert_eventually(reached, timeout=timeout, interval=0.05)


@pytest.fixture
def start(client: Client, recon_worker: Worker, mi: Any, buckets: dict[str, Any], datastore_id: str,
          settings: Settings) -> Any:
    async def _start(**extra: Any) -> Recon:
        primary, non_primary = await asyncio.to_thread(_import_conflict, mi, buckets["s3"], buckets["work"],
                                                       datastore_id, settings.data_access_role_arn)
        # Plain JSON, as `route`, the CLI or the Temporal UI start it.
        payload = {"datastore_id": datastore_id, "image_set_id": non_primary, "migration_id": "mig-1", **extra}
        handle = await client.start_workflow(
            "ReconciliationWorkflow", payload, id=reconciliation_workflow_id(datastore_id, non_primary),
            task_queue=recon_worker.task_queue, execution_timeout=timedelta(seconds=60),
            result_type=ReconciliationOutcome)
        return Recon(handle, primary, non_primary)
    return _start


async def _replays(handle: WorkflowHandle[Any, Any]) -> None:
    """The recorded history replays deterministically (signals, updates, timer, activities)."""
    replayer = Replayer(workflows=[ReconciliationWorkflow], data_converter=converter(),
                        workflow_failure_exception_types=[pydantic.ValidationError])
    await replayer.replay_workflow(await handle.fetch_history())


class TestReconciliation:
    async def test_promote_by_signal_makes_a_new_primary_and_deletes_the_old_set(
            self, client: Client, start: Any, mi: Any, datastore_id: str, issuer: OidcIssuer) -> None:
        recon = await start()
        status = await recon.wait_state("awaiting_decision")

        # The query names what differs, old vs new, without any patient value.
        assert status.conflict is not None and status.conflict.primary_image_set_id == recon.primary
        diffs = {d.attribute: d for d in status.conflict.differences}
        assert diffs["PatientID"].normalized and diffs["PatientID"].level == "Patient"
        assert diffs["PatientID"].primary_fingerprint != diffs["PatientID"].non_primary_fingerprint
        text = status.model_dump_json()
        assert "SYNTH-OLD-7" not in text and "SYNTH-NEW-9" not in text

        # Exactly what an operator types: `temporal workflow signal --name approve --input '{...}'` through the
        # codec server with their token. The JSON says "alice"; the token says who it is: alice-sub.
        with codec_server(issuer) as codec:
            sent = await temporal_decide_async(
                client, recon.handle.id, {"action": "promote", "reviewer": "alice", "reason": "new is right"},
                codec=codec, bearer=token(issuer, "alice-sub"), signal=True)
        assert sent.returncode == 0, sent.stderr
        outcome = await recon.handle.result()
        assert outcome.state == "promoted" and outcome.decided_by == "alice-sub" and outcome.reason == "new is right"
        new_id = outcome.promoted_image_set_id
        assert new_id and new_id not in (recon.primary, recon.non_primary)
        assert (await asyncio.to_thread(_get, mi, datastore_id, new_id, "ACTIVE"))["isPrimary"] is True
        assert (await asyncio.to_thread(_get, mi, datastore_id, recon.non_primary, "DELETED"))["imageSetState"] \
            == "DELETED"
        final = await recon.status()
        assert [(r.accepted, r.via, r.action, r.reviewer, r.claimed_reviewer) for r in final.decisions] == \
            [(True, "signal", "promote", "alice-sub", "alice")]
        await _replays(recon.handle)

    async def test_discard_by_update_through_the_codec_server(self, client: Client, start: Any, mi: Any,
                                                              datastore_id: str, issuer: OidcIssuer) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")
        with codec_server(issuer) as codec:
            sent = await temporal_decide_async(
                client, recon.handle.id, {"action": "discard", "reviewer": "bob-sub", "reason": "duplicate"},
                codec=codec, bearer=token(issuer, "bob-sub", email="bob@example.org"))
        assert sent.returncode == 0, sent.stderr
        await asyncio.to_thread(_get, mi, datastore_id, recon.non_primary, "DELETED")
        outcome = await recon.handle.result()
        assert outcome.state == "discarded" and outcome.decided_by == "bob-sub"
        [record] = (await recon.status()).decisions
        assert (record.via, record.reviewer, record.claimed_reviewer) == ("update", "bob-sub", None)
        await _replays(recon.handle)

    async def test_keep_leaves_the_set_untouched(self, start: Any, mi: Any, datastore_id: str) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")
        before = await asyncio.to_thread(_get, mi, datastore_id, recon.non_primary)
        await signal_approve(recon.handle, {"action": "keep", "reviewer": "carol-sub", "reason": "needs research"},
                             "carol-sub")
        assert (await recon.handle.result()).state == "kept"
        after = await asyncio.to_thread(_get, mi, datastore_id, recon.non_primary)
        assert (after["versionId"], after["imageSetState"], after["isPrimary"]) == \
            (before["versionId"], "ACTIVE", False)

    async def test_bad_decisions_are_rejected_and_recorded(self, start: Any) -> None:
        recon = await start(authorized_reviewers=["alice-sub"])
        await recon.wait_state("awaiting_decision")
        await signal_approve(recon.handle, {"action": "explode", "reviewer": "alice"}, "alice-sub")
        await recon.handle.signal("approve", 42)
        # bob-sub is a reviewer of the installation, but this reconciliation narrows it to alice-sub.
        await signal_approve(recon.handle, {"action": "keep", "reviewer": "alice-sub", "reason": "x"}, "bob-sub")
        with pytest.raises(WorkflowUpdateFailedError):  # malformed: rejected to the caller, nothing in history
            await decide(recon.handle, {"action": "keep"}, "alice-sub")
        with pytest.raises(WorkflowUpdateFailedError) as refused:  # not authorised: refused to the caller, recorded
            await decide(recon.handle, {"action": "keep", "reviewer": "alice-sub"}, "bob-sub")
        assert "not authorised" in str(refused.value.cause)

        async def recorded() -> ReconciliationStatus:
            status = await recon.status()
            assert len(status.decisions) == 4, status.decisions
            return status

        status = await assert_eventually(recorded, timeout=60, interval=0.05)
        assert status.state == "awaiting_decision"
        rejected = [r for r in status.decisions if not r.accepted]
        assert sorted(r.via for r in rejected) == ["signal", "signal", "signal", "update"]
        by_error = {r.via + ":" + (r.error or "")[:20]: r for r in rejected}
        shape = next(r for r in rejected if "action" in (r.error or ""))
        assert "explode" not in (shape.error or "")
        assert any("JSON object" in (r.error or "") for r in rejected), by_error
        narrowed = [r for r in rejected if "not authorised" in (r.error or "")]
        assert {(r.via, r.reviewer, r.claimed_reviewer) for r in narrowed} == \
            {("signal", "bob-sub", "alice-sub"), ("update", "bob-sub", "alice-sub")}

        outcome = await decide(recon.handle, {"action": "keep", "reviewer": "alice-sub"}, "alice-sub")
        assert outcome.state == "kept" and outcome.decided_by == "alice-sub"
        status = await recon.status()
        assert [r.accepted for r in status.decisions] == [False, False, False, False, True]
        await _replays(recon.handle)

    async def test_a_rejected_signal_is_one_log_line_naming_the_field_without_the_values(self, start: Any) -> None:
        canary = "QZCANARYDECISIONREASON"
        recon = await start(authorized_reviewers=["alice-sub"])
        await recon.wait_state("awaiting_decision")
        with captured_logs("info") as logs:
            await signal_approve(recon.handle, {"action": "explode", "reviewer": "alice", "reason": canary},
                                 "alice-sub")
            # bob-sub may decide in this installation, not this reconciliation; he claims to be mallory.
            await signal_approve(recon.handle, {"action": "keep", "reviewer": "mallory", "reason": canary},
                                 "bob-sub")

            async def two_rejections() -> list[dict[str, Any]]:
                found = [x for x in logs.lines() if x["event"] == "reconciliation decision rejected"]
                assert len(found) == 2, logs.text
                return found

            bad_action, unauthorised = await assert_eventually(two_rejections, timeout=60)
        assert canary.lower() not in logs.text.lower() and "explode" not in logs.text
        assert "could not be formatted" not in logs.text
        assert bad_action["error"].startswith("action: ") and bad_action["via"] == "signal"
        assert bad_action["workflow_id"] == recon.handle.id and "run_id" in bad_action
        assert unauthorised["reviewer"] == "bob-sub" and "not authorised" in unauthorised["error"]

    async def test_timeout_escalates_and_a_later_decision_still_works(self, start: Any,
                                                                      bus: dict[str, Any]) -> None:
        recon = await start(timeout_seconds=2)
        status = await recon.wait_state("escalated")
        assert status.escalated_at is not None

        def receive() -> list[dict[str, Any]]:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                msgs = bus["sqs"].receive_message(QueueUrl=bus["queue_url"], WaitTimeSeconds=1).get("Messages", [])
                if msgs:
                    return [json.loads(m["Body"]) for m in msgs]
            return []

        events = await asyncio.to_thread(receive)
        assert len(events) == 1
        assert events[0]["detail-type"] == ESCALATED_DETAIL_TYPE and events[0]["source"] == EVENT_SOURCE
        assert events[0]["detail"]["imageSetId"] == recon.non_primary
        assert events[0]["detail"]["workflowId"] == recon.handle.id
        assert (await recon.status()).state == "escalated"  # escalation does not decide

        await signal_approve(recon.handle, {"action": "keep", "reviewer": "dave-sub", "reason": "late but sure"},
                             "dave-sub")
        assert (await recon.handle.result()).state == "kept"
        await _replays(recon.handle)


def _refusals(status: ReconciliationStatus) -> list[tuple[str, str | None, str]]:
    return [(r.via, r.reviewer, r.error or "") for r in status.decisions if not r.accepted]


class TestWhoDecides:
    """Only an attested identity in HIMIG_RECONCILIATION_REVIEWERS decides; every refusal is recorded with why."""

    async def _refused(self, recon: Recon, count: int) -> list[tuple[str, str | None, str]]:
        async def recorded() -> list[tuple[str, str | None, str]]:
            refusals = _refusals(await recon.status())
            assert len(refusals) == count, refusals
            return refusals

        refusals = await assert_eventually(recorded, timeout=15, interval=0.05)
        assert (await recon.status()).state == "awaiting_decision"  # a refusal decides nothing
        return refusals

    async def test_a_person_not_on_the_list_is_refused_and_recorded(self, client: Client, start: Any,
                                                                     issuer: OidcIssuer) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")
        # mallory has a genuine token the codec server accepts (allowed subjects `*`), and claims to be alice.
        with codec_server(issuer) as codec:
            sent = await temporal_decide_async(client, recon.handle.id,
                                               {"action": "discard", "reviewer": "alice-sub", "reason": "mine"},
                                               codec=codec, bearer=token(issuer, "mallory-sub"))
        assert sent.returncode != 0
        [(via, reviewer, why)] = await self._refused(recon, 1)
        assert (via, reviewer) == ("update", "mallory-sub")
        assert "'mallory-sub' is not in HIMIG_RECONCILIATION_REVIEWERS" in why
        [record] = (await recon.status()).decisions
        assert record.claimed_reviewer == "alice-sub" and record.action == "discard"

        await signal_approve(recon.handle, {"action": "keep", "reviewer": "alice-sub"}, "alice-sub")
        assert (await recon.handle.result()).decided_by == "alice-sub"
        await _replays(recon.handle)

    async def test_unattested_decisions_are_refused_and_recorded(self, client: Client, start: Any) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")
        # A plain client (the SDK's own signal and update) and the temporal CLI without --codec-endpoint.
        await recon.handle.signal("approve", {"action": "discard", "reviewer": "alice-sub", "reason": "x"})
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await recon.handle.execute_update("decide", {"action": "discard", "reviewer": "alice-sub"},
                                              result_type=ReconciliationOutcome)
        assert "not attested" in str(refused.value.cause)
        assert isinstance(refused.value.cause, ApplicationError) and refused.value.cause.type == "DecisionRejected"
        plain = await temporal_decide_async(client, recon.handle.id, {"action": "discard", "reviewer": "alice-sub"})
        assert plain.returncode != 0
        plain_signal = await temporal_decide_async(client, recon.handle.id,
                                                   {"action": "discard", "reviewer": "alice-sub"}, signal=True)
        assert plain_signal.returncode == 0, plain_signal.stderr
        refusals = await self._refused(recon, 4)
        assert sorted(via for via, _, _ in refusals) == ["signal", "signal", "update", "update"]
        for _, reviewer, why in refusals:
            assert reviewer is None
            assert why == "not attested: decide through the codec server (Temporal UI / temporal CLI with " \
                          "--codec-endpoint)"
        await _replays(recon.handle)

    async def test_forged_attestations_are_refused(self, start: Any) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")
        me = {"reconciliation_id": recon.handle.id}  # named, as it must be, so that verification decides
        # Another key (a guess, or another installation's).
        forged = attested({**me, "action": "discard", "reviewer": "alice-sub"}, "alice-sub", key="x" * 40)
        await recon.handle.signal("approve", forged)
        # alice's genuine attestation of `keep`, copied onto a `discard`.
        genuine = attested({**me, "action": "keep", "reviewer": "alice-sub"}, "alice-sub").payload
        other = plain_payload({**me, "action": "discard", "reviewer": "alice-sub"})
        other.metadata.update({k: v for k, v in genuine.metadata.items() if k.startswith("himig-")})
        await recon.handle.signal("approve", RawValue(other))
        # alice's attestation, the identity changed to bob's.
        renamed = attested({**me, "action": "discard", "reviewer": "bob-sub"}, "alice-sub").payload
        renamed.metadata["himig-attested-by"] = b"bob-sub"
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await recon.handle.execute_update("decide", RawValue(renamed), result_type=ReconciliationOutcome)
        assert "does not verify" in str(refused.value.cause)
        # Attested for another namespace.
        await signal_approve(recon.handle, {"action": "discard", "reviewer": "alice-sub"}, "alice-sub",
                             namespace="someone-elses")
        # alice's genuine decision for another reconciliation (as `himig approve` makes it), replayed here.
        await signal_approve(recon.handle, {"action": "discard", "reviewer": "alice-sub",
                                            "reconciliation_id": "recon-" + "0" * 32 + "-" + "1" * 32}, "alice-sub")
        refusals = await self._refused(recon, 5)
        assert sorted(why for _, _, why in refusals) == ["attestation does not verify"] * 4 + \
            ["the decision names another reconciliation (reconciliation_id)"]  # (recorded as each is decided)
        assert {reviewer for _, reviewer, _ in refusals} == {None}  # a forger's claim is not recorded as who
        await _replays(recon.handle)

    async def test_an_attested_decision_must_name_its_reconciliation(self, start: Any) -> None:
        """Else one copied out of a history (sealed, but readable by whoever holds the keys) would decide any."""
        recon = await start()
        await recon.wait_state("awaiting_decision")
        unnamed = attested({"action": "discard", "reviewer": "alice-sub"}, "alice-sub")  # a genuine attestation
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await recon.handle.execute_update("decide", unnamed, result_type=ReconciliationOutcome)
        assert "must name this reconciliation" in str(refused.value.cause)
        [(via, reviewer, why)] = await self._refused(recon, 1)
        assert via == "update" and reviewer is None and "reconciliation_id" in why
        assert (await recon.status()).state == "awaiting_decision"

    async def test_himig_approve_with_the_key_records_the_os_user(self, client: Client, start: Any) -> None:
        from typer.testing import CliRunner

        from cli.app import app

        recon = await start()
        await recon.wait_state("awaiting_decision")
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host}
        result = await asyncio.to_thread(CliRunner().invoke, app, ["approve", recon.handle.id, "--action", "keep",
                                                                   "--reason", "checked"], env=env)
        assert result.exit_code == 0, result.output
        outcome = await recon.handle.result()
        assert outcome.state == "kept" and outcome.decided_by == getpass.getuser()
        [record] = (await recon.status()).decisions
        assert (record.accepted, record.via, record.reviewer, record.claimed_reviewer) == \
            (True, "update", getpass.getuser(), None)

    async def test_himig_approve_without_the_key_refuses_before_sending(self, client: Client,
                                                                        start: Any) -> None:
        from typer.testing import CliRunner

        from cli.app import app

        recon = await start()
        await recon.wait_state("awaiting_decision")
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
               "HIMIG_REVIEWER_ATTESTATION_KEY": None}
        result = await asyncio.to_thread(CliRunner().invoke, app, ["approve", recon.handle.id, "--action", "keep"],
                                         env=env)
        assert result.exit_code == 2, result.output
        flat = " ".join(result.output.split())
        assert "HIMIG_REVIEWER_ATTESTATION_KEY" in flat and "--codec-endpoint" in flat and "--name decide" in flat
        status = await recon.status()
        assert status.decisions == [] and status.state == "awaiting_decision"  # nothing was sent
        await recon.handle.terminate(reason="test done")


class TestIdempotentSteps:
    async def test_a_repeated_promote_reuses_the_first_copy_and_a_repeated_delete_succeeds(
            self, mi: Any, buckets: dict[str, Any], datastore_id: str, settings: Settings) -> None:
        """What a retry after a lost response or a worker crash does: no second copy, no error on delete."""
        primary, non_primary = await asyncio.to_thread(_import_conflict, mi, buckets["s3"], buckets["work"],
                                                       datastore_id, settings.data_access_role_arn)
        acts = ReconcileActivities(mi, None, None, fingerprint_key=FINGERPRINT_KEY.encode())
        env = ActivityEnvironment()
        args = PromoteInput(datastore_id=datastore_id, image_set_id=non_primary, primary_image_set_id=primary,
                            not_before=datetime.now(UTC))
        first = await asyncio.to_thread(env.run, acts.promote_image_set, args)
        assert not first.reused_existing
        await asyncio.to_thread(_get, mi, datastore_id, first.image_set_id, "ACTIVE")
        await asyncio.to_thread(_get, mi, datastore_id, non_primary, "ACTIVE")
        again = await asyncio.to_thread(env.run, acts.promote_image_set, args)
        assert (again.image_set_id, again.reused_existing) == (first.image_set_id, True)

        target = ImageSetTarget(datastore_id=datastore_id, image_set_id=non_primary)
        assert not (await asyncio.to_thread(env.run, acts.delete_image_set, target)).already_deleted
        await asyncio.to_thread(_get, mi, datastore_id, non_primary, "DELETED")
        assert (await asyncio.to_thread(env.run, acts.delete_image_set, target)).already_deleted


class TestPureParts:
    def test_diff_names_attributes_and_hides_values(self) -> None:
        def doc(pid: str, modality: str) -> dict[str, Any]:
            return {"Patient": {"DICOM": {"PatientID": pid, "PatientName": "SYNTH^X"}},
                    "Study": {"DICOM": {"StudyInstanceUID": "1.2", "StudyDescription": "d"},
                              "Series": {"1.2.3": {"DICOM": {"Modality": modality}, "Instances": {}}}}}
        diffs = diff_metadata(doc("SYNTH-1", "CT"), doc("SYNTH-2", "MR"), b"k")
        assert [(d.level, d.attribute, d.normalized) for d in diffs] == \
            [("Patient", "PatientID", True), ("Series", "Modality", True)]
        assert "SYNTH" not in json.dumps([d.model_dump() for d in diffs])
        assert diff_metadata(doc("SYNTH-1", "CT"), doc("SYNTH-2", "MR"), b"k", same_series=False)[0].attribute \
            == "PatientID"
        assert len(diff_metadata(doc("SYNTH-1", "CT"), doc("SYNTH-2", "MR"), b"k", same_series=False)) == 1
        assert diff_metadata(doc("A", "CT"), doc("A", "CT"), b"k") == []
        other_key = diff_metadata(doc("SYNTH-1", "CT"), doc("SYNTH-2", "CT"), b"other")[0]
        assert other_key.primary_fingerprint != diffs[0].primary_fingerprint

    @pytest.mark.parametrize("payload,needle", [
        ({"action": "keep"}, "reviewer"),
        ({"action": "keep", "reviewer": "a b"}, "reviewer"),
        ({"action": "keep", "reviewer": "a", "update_first": {"Patient": {"PatientID": "X"}}}, "update_first"),
        ({"action": "promote", "reviewer": "a", "extra": 1}, "extra"),
    ])
    def test_decision_model_names_the_field(self, payload: dict[str, Any], needle: str) -> None:
        with pytest.raises(pydantic.ValidationError, match=needle):
            ReconciliationDecision.model_validate(payload)

    def test_input_rejects_bad_ids(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="image_set_id"):
            ReconciliationInput.model_validate({"datastore_id": "a" * 32, "image_set_id": "../x"})


class TestReconciliationsPending:
    """`himig_reconciliations_pending` counts, from visibility, the reconciliations waiting for a decision."""

    async def test_a_waiting_reconciliation_is_on_the_gauge_until_decided(
            self, start: Any, client: Client, settings: Settings) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")
        port = free_port()
        runtime = build_runtime(settings.model_copy(update={"metrics_port": port}))
        assert runtime is not None
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_reconciliations(client, runtime.metric_meter, settings.task_queue,
                                                            every=0.2, stop=stop))
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            async def pending(n: float) -> None:
                gauge = by_label(scrape(url), metrics.RECONCILIATIONS_PENDING.name, "state")
                assert gauge == {"awaiting_decision": n, "escalated": 0.0}, gauge

            await assert_eventually(lambda: pending(1.0), timeout=20)
            await signal_approve(recon.handle, {"action": "keep", "reviewer": "carol-sub", "reason": "metrics test"},
                                 "carol-sub")
            assert (await recon.handle.result()).state == "kept"
            await assert_eventually(lambda: pending(0.0), timeout=20)
        finally:
            stop.set()
            await asyncio.wait_for(watcher, timeout=60)
