"""Least privilege, proven from the code: the ECS task role grants exactly the IAM actions the service's AWS calls
need (found by `tests.support.aws_calls`), each scoped to resources where IAM allows it, and parliament finds
nothing wrong with the policy."""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.support.aws_calls import SERVICE_PACKAGES, Scan, ScanError, scan, supports_resource_level
from tests.support.deployment import PERMISSION_POLICIES

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "deploy" / "iam" / "task-role-policy.json"

def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _policy() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(POLICY.read_text())
    return doc


def _granted(doc: dict[str, Any]) -> dict[str, list[str]]:
    """action (lower case, IAM actions are case-insensitive) -> the Sids granting it."""
    out: dict[str, list[str]] = {}
    for st in doc["Statement"]:
        for action in _list(st["Action"]):
            out.setdefault(action.lower(), []).append(st.get("Sid", "?"))
    return out


@pytest.fixture(scope="module")
def found() -> Scan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parliament imports pkg_resources
        return scan(ROOT)


# ---- the scanner can fail ---------------------------------------------------------------------------------------

FAKE_AWS = '''
import boto3

def make_client(service: str, settings: object) -> object:
    return boto3.session.Session().client(service)

class AwsClients:
    s3: object
    medical_imaging: object

    @classmethod
    def from_settings(cls, settings: object) -> "AwsClients":
        return cls(s3=make_client("s3", settings), medical_imaging=make_client("medical-imaging", settings))
'''

FAKE_ACTIVITIES = '''
import asyncio
from boto3.s3.transfer import TransferConfig
from functools import partial
from fake.aws import AwsClients, make_client
from fake.signed import SignedHttp

class Stage:
    def __init__(self, s3: object, medical_imaging: object, dicomweb: SignedHttp | None) -> None:
        self._s3 = s3
        self._mi = medical_imaging
        self._http = dicomweb

    def run(self, body: object) -> None:
        self._s3.get_object(Bucket="b", Key="k")
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket="b"):
            pass
        self._s3.upload_fileobj(body, "b", "k", Config=TransferConfig())
        self._mi.start_dicom_import_job(datastoreId="d")
        partial(self._mi.get_image_set, datastoreId="d")
        url = f"{self._base}/studies/{1}/series/{2}/instances/{3}/metadata"
        self._http.request("GET", url)

async def poll(sqs: object) -> None:
    await asyncio.to_thread(sqs.delete_message, QueueUrl="q")

def wait(clients: AwsClients) -> None:
    clients.s3.get_waiter("object_exists").wait(Bucket="b", Key="k")

def configure(events: object) -> None:  # a provisioning helper: skipped
    events.put_rule(Name="r")

def build(clients: AwsClients) -> Stage:
    record = {"s3": {}}
    s3 = record.get("s3")  # a dict named s3: not a client
    s3.get("bucket")
    make_client("events", None)
    return Stage(clients.s3, clients.medical_imaging, SignedHttp(None, "r", "medical-imaging"))
'''


def _fake(tmp_path: Path, activities: str) -> Path:
    pkg = tmp_path / "fake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "aws.py").write_text(FAKE_AWS)
    (pkg / "signed.py").write_text("class SignedHttp:\n    pass\n")
    (pkg / "activities.py").write_text(textwrap.dedent(activities))
    return tmp_path


def _scan_fake(tmp_path: Path, activities: str) -> Scan:
    root = _fake(tmp_path, activities)
    return scan(root, ["fake"], helpers={"fake/activities.py": {"configure"}})


def test_scanner_finds_the_planted_calls(tmp_path: Path) -> None:
    result = _scan_fake(tmp_path, FAKE_ACTIVITIES)
    assert set(result.actions) == {
        "s3:GetObject",  # get_object, and the object_exists waiter (HeadObject)
        "s3:ListBucket",  # the list_objects_v2 paginator
        "s3:PutObject", "s3:AbortMultipartUpload",  # upload_fileobj (multipart)
        "medical-imaging:StartDICOMImportJob", "iam:PassRole",
        "medical-imaging:GetImageSet",  # a bound method handed to partial
        "medical-imaging:GetDICOMInstanceMetadata",  # signed HTTP
        "sqs:DeleteMessage",  # a bound method handed to asyncio.to_thread
    }
    assert {u.line for u in result.actions["s3:GetObject"]} == {15, 28}  # get_object, the waiter
    assert [u.call for u in result.skipped] == ["events.put_rule"]


@pytest.mark.parametrize(("code", "message"), [
    # a call on something whose service nobody can tell
    ("def f(thing: object) -> None:\n    thing.put_events(Entries=[])\n", "cannot be determined"),
    # an attribute that is not an operation of the client's service
    ("def f(s3: object) -> None:\n    s3.get_objekt(Bucket='b')\n", "not an operation of s3"),
    # a client handed over under a name that says another service
    ("from fake.aws import make_client\n\ndef g(s3: object) -> None:\n    pass\n\n"
     "def f() -> None:\n    g(make_client('sqs', None))\n", "whose name does not say sqs"),
    # a paginator the service does not have
    ("def f(s3: object) -> None:\n    s3.get_paginator('list_things')\n", "no paginator"),
    # a client made for a service that is not a literal
    ("from fake.aws import make_client\n\ndef f(name: str) -> None:\n    make_client(name, None)\n",
     "not a string literal"),
    # a signed request to a URL no route knows
    ("from fake.signed import SignedHttp\n\ndef f(dicomweb: SignedHttp) -> None:\n"
     "    dicomweb.request('DELETE', f'{1}/studies/{2}')\n", "matches 0 routes"),
])
def test_scanner_raises_on_what_it_cannot_attribute(tmp_path: Path, code: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        _scan_fake(tmp_path, "from fake.aws import make_client\n\ndef h() -> None:\n    make_client('events', None)\n\n"
                   + code)


def test_scanner_refuses_a_provisioning_helper_the_service_calls(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="provisioning helper configure"):
        _scan_fake(tmp_path, "def configure(events: object) -> None:\n    events.put_rule(Name='r')\n\n"
                   "def main(events: object) -> None:\n    configure(events)\n")


# ---- the real code against the policy -----------------------------------------------------------------------------

def test_scan_covers_the_service_packages(found: Scan) -> None:
    assert {u.path.split("/")[0] for uses in found.actions.values() for u in uses} <= set(SERVICE_PACKAGES)
    assert found.actions, "the scanner found no AWS call at all"


def test_policy_grants_exactly_what_the_code_uses(found: Scan) -> None:
    granted = _granted(_policy())
    used = {a.lower(): a for a in found.actions}
    missing = [f"{used[a]} (used at {', '.join(map(str, found.actions[used[a]]))})" for a in sorted(set(used) - set(granted))]
    extra = [f"{a} (statements {', '.join(granted[a])})" for a in sorted(set(granted) - set(used))]
    assert not missing, "the code uses actions the task role does not grant:\n  " + "\n  ".join(missing)
    assert not extra, "the task role grants actions no code uses:\n  " + "\n  ".join(extra)


@pytest.mark.parametrize("rel", PERMISSION_POLICIES)
def test_policy_shape(rel: str) -> None:
    doc = json.loads((ROOT / "deploy" / rel).read_text())
    assert doc["Version"] == "2012-10-17"
    sids = [st.get("Sid") for st in doc["Statement"]]
    assert all(sids) and len(set(sids)) == len(sids), "every statement has a unique Sid"
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow", f"{st['Sid']}: only Allow statements"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, f"{st['Sid']}: NotAction etc."
        for action in _list(st["Action"]):
            assert not re.search(r"[*?]", action), f"{st['Sid']}: wildcard action {action}"
        resources = _list(st["Resource"])
        for action in _list(st["Action"]):
            if supports_resource_level(action):
                assert "*" not in resources, f"{st['Sid']}: {action} supports resource-level permissions, not '*'"
        for resource in resources:
            # an ARN built here, or one the stack passes whole (a role, a secret, the KMS key)
            assert resource == "*" or resource.startswith("arn:${AWS_PARTITION}:") \
                or re.fullmatch(r"\$\{\w+Arn\}", resource), f"{st['Sid']}: {resource}"
        if "iam:PassRole" in _list(st["Action"]):
            assert "iam:PassedToService" in json.dumps(st.get("Condition", {})), f"{st['Sid']}: PassRole unconditioned"
