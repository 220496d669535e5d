"""EventBridge events: the emulator PutEvents to a bus on the local moto server; a rule delivers them to SQS.

Also the webhook sink, the in-memory log (``/_emulator/events``), delivery faults (duplicates, reordering) and
failed deliveries that are retried, counted, and never fail the API call.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.emulator.conftest import Importer, create_datastore, dicom_bytes, unique
from tests.emulator.resilience_support import admin, strict_client
from tests.support.eventually import assert_eventually_sync
from tests.support.servers import ServerProcess, start_emulator

JOB_FLOW = ["Import Job Submitted", "Import Job In Progress", "Image Set Created", "Image Set Created",
            "Import Job Completed"]


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Webhook.received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def bus(moto_url: str) -> dict[str, Any]:
    """A custom bus on moto with a rule {"source": ["aws.medical-imaging"]} → an SQS queue."""
    events = boto3.client("events", endpoint_url=moto_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    name = unique("himig-bus")
    events.create_event_bus(Name=name)
    queue_url = sqs.create_queue(QueueName=unique("himig-events"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="medical-imaging", EventBusName=name,
                    EventPattern=json.dumps({"source": ["aws.medical-imaging"]}))
    events.put_targets(Rule="medical-imaging", EventBusName=name, Targets=[{"Id": "q", "Arn": queue_arn}])
    return {"name": name, "sqs": sqs, "queue_url": queue_url}


@pytest.fixture(scope="module")
def emu(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory, bus: dict[str, Any],
        webhook: tuple[str, list[dict[str, Any]]]) -> Iterator[ServerProcess]:
    # --events is left at "auto": the standard AWS_ENDPOINT_URL_EVENTBRIDGE switches PutEvents on.
    server = start_emulator(tmp_path_factory.mktemp("events"), moto_url, log_dir,
                            extra_args=["--event-bus-name", bus["name"], "--events-webhook-url", webhook[0]],
                            extra_env={"AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url})
    yield server
    server.stop()


def received(bus: dict[str, Any], datastore_id: str, want: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """SQS messages (the raw events) about ``datastore_id``, in receive order, until ``want`` of them arrived."""
    sqs, url = bus["sqs"], bus["queue_url"]
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < want and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in resp.get("Messages", []):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            event = json.loads(m["Body"])
            if event["detail"].get("datastoreId") == datastore_id:
                found.append(event)
    return found


def logged(server: ServerProcess, datastore_id: str) -> list[dict[str, Any]]:
    """The emulator's own record of delivered events for one data store, in delivery order."""
    events = admin(server.url, "GET", "events?flush=true")["events"]
    return [e for e in events if e["detail"].get("datastoreId") == datastore_id]


def test_datastore_and_import_events_reach_sqs(emu: ServerProcess, bus: dict[str, Any], s3: Any, bucket: str,
                                               webhook: tuple[str, list[dict[str, Any]]]) -> None:
    mi = strict_client(emu.url)
    ds_id = create_datastore(mi)
    imp = Importer(s3, mi, bucket, ds_id)
    # Same series, different PatientID: a.dcm makes the primary set, b.dcm conflicts → a non-primary set.
    props = imp.run("ev/in/", {"a.dcm": dicom_bytes(sop="1.2.826.0.60.1", patient_id="PAT-A"),
                               "b.dcm": dicom_bytes(sop="1.2.826.0.60.2", patient_id="PAT-B")})
    assert props["jobStatus"] == "COMPLETED"

    events = received(bus, ds_id, 7)
    kinds = sorted(e["detail-type"] for e in events)
    assert kinds == sorted(["Data Store Creating", "Data Store Created", *JOB_FLOW])
    for e in events:
        assert e["source"] == "aws.medical-imaging"
        assert e["detail"]["imagingVersion"] == "1.0"
        assert e["resources"][0].startswith(f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{ds_id}")
    by_kind = {e["detail-type"]: e for e in events}
    assert by_kind["Data Store Creating"]["detail"]["datastoreStatus"] == "CREATING"
    assert by_kind["Data Store Created"]["detail"]["datastoreStatus"] == "ACTIVE"
    for kind, status in (("Import Job Submitted", "SUBMITTED"), ("Import Job In Progress", "IN_PROGRESS"),
                         ("Import Job Completed", "COMPLETED")):
        detail = by_kind[kind]["detail"]
        assert detail == {"imagingVersion": "1.0", "datastoreId": ds_id, "jobId": props["jobId"],
                          "jobName": props["jobName"], "jobStatus": status, "inputS3Uri": f"s3://{bucket}/ev/in/",
                          "outputS3Uri": props["outputS3Uri"]}

    sets = [e for e in events if e["detail-type"] == "Image Set Created"]
    result = imp.results(props)
    expected = {(line["importResponse"]["imageSetId"], line["importResponse"]["isPrimary"])
                for line in result["success"]}
    assert {(e["detail"]["imageSetId"], e["detail"]["isPrimary"]) for e in sets} == expected
    assert {flag for _, flag in expected} == {True, False}
    for e in sets:
        d = e["detail"]
        assert d["imageSetVersion"] == "1" and isinstance(d["isPrimary"], bool)
        assert (d["imageSetState"], d["imageSetWorkflowStatus"]) == ("ACTIVE", "CREATED")
        assert "imagesetId" not in d  # one spelling by default (--events-image-set-id-key)
        assert e["resources"] == [f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{ds_id}"
                                  f"/imageset/{d['imageSetId']}"]

    # Delivery order is emit order: the job's events bracket its image-set events.
    order = [e["detail-type"] for e in logged(emu, ds_id)]
    assert order == ["Data Store Creating", "Data Store Created", *JOB_FLOW]

    # The webhook got the full envelope (with account and the same event ids as the log).
    hooked = [e for e in webhook[1] if e["detail"].get("datastoreId") == ds_id]
    assert [e["detail-type"] for e in hooked] == order
    assert {k for k in hooked[0]} == {"version", "id", "detail-type", "source", "account", "time", "region",
                                      "resources", "detail"}


def test_datastore_deletion_events(emu: ServerProcess, bus: dict[str, Any]) -> None:
    mi = strict_client(emu.url)
    ds_id = create_datastore(mi)
    mi.delete_datastore(datastoreId=ds_id)
    events = received(bus, ds_id, 4)
    assert [(e["detail-type"], e["detail"]["datastoreStatus"]) for e in events if "Delet" in e["detail-type"]] \
        == [("Data Store Deleting", "DELETING"), ("Data Store Deleted", "DELETED")]


def test_duplicate_and_out_of_order_delivery(emu: ServerProcess, bus: dict[str, Any], s3: Any,
                                             bucket: str) -> None:
    added = admin(emu.url, "POST", "faults", [
        {"kind": "event_duplicate", "detailType": "Import Job Submitted", "count": 1},
        {"kind": "event_reorder", "detailType": "Import Job In Progress", "count": 1},
    ])["faults"]
    try:
        mi = strict_client(emu.url)
        ds_id = create_datastore(mi)
        props = Importer(s3, mi, bucket, ds_id).run("dup/in/", {"a.dcm": dicom_bytes(sop="1.2.826.0.61.1")})
        assert props["jobStatus"] == "COMPLETED"
        expected = ["Import Job Submitted", "Import Job Submitted", "Image Set Created", "Import Job In Progress",
                    "Import Job Completed"]
        events = [e for e in received(bus, ds_id, 2 + len(expected)) if e["detail-type"] != "Data Store Creating"
                  and e["detail-type"] != "Data Store Created"]
        # moto's SQS hands messages out in the order the rule delivered them.
        assert [e["detail-type"] for e in events] == expected
        log = [e for e in logged(emu, ds_id) if e["detail-type"].startswith(("Import", "Image"))]
        assert [e["detail-type"] for e in log] == expected
        assert log[0]["id"] == log[1]["id"]  # an at-least-once duplicate is the same event
        faults = {f["id"]: f for f in admin(emu.url, "GET", "faults")["faults"]}
        assert [faults[f["id"]]["fired"] for f in added] == [1, 1]
        counters = admin(emu.url, "GET", "events")["counters"]
        assert counters["duplicated"] >= 1 and counters["reordered"] >= 1
    finally:
        admin(emu.url, "DELETE", "faults")


def test_failed_deliveries_are_retried_counted_and_never_fail_the_call(moto_url: str, log_dir: Path,
                                                                       tmp_path: Path, s3: Any,
                                                                       bucket: str) -> None:
    # First a black hole: it takes connections (the kernel accepts them into its backlog) and never answers, so
    # a delivery attempt hangs until the emulator's own 5 s read timeout, and none can fail in less than 10 s.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    dead = f"http://127.0.0.1:{hole.getsockname()[1]}"
    server = start_emulator(tmp_path / "dead", moto_url, log_dir,
                            extra_args=["--events-max-attempts", "2", "--events-image-set-id-key", "both"],
                            extra_env={"AWS_ENDPOINT_URL_EVENTBRIDGE": dead})
    try:
        mi = strict_client(server.url)
        ds_id = create_datastore(mi)
        # The call did not wait for delivery: it returned while its events were still undelivered and unfailed
        # (an ordering, not a duration: a call that delivered inline would return only after they had failed).
        counters = admin(server.url, "GET", "events")["counters"]
        assert counters["emitted"] >= 1 and counters["delivered"] == counters["failed"] == 0, counters
        # From now on nothing listens there (connections in the backlog are reset): every attempt fails at once.
        hole.close()
        props = Importer(s3, mi, bucket, ds_id).run("dead/in/", {"a.dcm": dicom_bytes(sop="1.2.826.0.62.1")})
        assert props["jobStatus"] == "COMPLETED"
        # The job's last event is emitted just after its COMPLETED status is committed: poll briefly.
        def all_failed() -> dict[str, Any]:
            snap: dict[str, Any] = admin(server.url, "GET", "events?flush=true")
            assert snap["counters"]["failed"] >= 6, snap["counters"]
            return snap

        snap = assert_eventually_sync(all_failed, timeout=30)
        assert snap["eventBridge"] is True
        assert snap["counters"]["delivered"] == 0
        assert snap["counters"]["failed"] == snap["counters"]["emitted"] == 6  # 2 data store + 4 job events
        assert snap["counters"]["retries"] >= 6
        created = next(e for e in snap["events"] if e["detail-type"] == "Image Set Created")["detail"]
        assert created["imageSetId"] == created["imagesetId"]  # --events-image-set-id-key both
    finally:
        hole.close()
        server.stop()
