"""Render the plain deployment files from the CloudFormation template, so the two can never disagree.

    python deploy/render.py          # rewrite deploy/ecs, deploy/iam and deploy/s3 from the template
    python deploy/render.py --check  # exit 1 naming each file that differs from what the template gives

The template (deploy/cloudformation/himig.yaml) is the one source. For operators who deploy with the AWS CLI
instead, the files here are the same resources in the shapes the APIs take, with ``${Name}`` placeholders where the
stack would have filled in a value (fill them with ``envsubst``):

- a template parameter stays as itself: ``${DatastoreId}``;
- ``AWS::Region`` / ``AWS::AccountId`` / ``AWS::Partition`` / ``AWS::StackName`` become ``${AWS_REGION}``,
  ``${AWS_ACCOUNT_ID}``, ``${AWS_PARTITION}``, ``${STACK_NAME}``;
- a resource the operator creates first: ``Ref`` gives ``${JobEventsQueue}`` (its URL, as Ref would),
  ``GetAtt`` gives ``${TaskRoleArn}``.

Conditions are taken as in `FEATURES` (an API key for Temporal, event-driven ingestion and HealthLake on; see the
README for the variations). The task definition is converted to `RegisterTaskDefinition`'s input using botocore's
own ECS model, so a key the API does not know fails the rendering.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import botocore.session
from cfnlint.decode import decode_str

DEPLOY = Path(__file__).resolve().parent
TEMPLATE = DEPLOY / "cloudformation" / "himig.yaml"

FEATURES = {
    "CreateCluster": False,
    "HasApiKey": True,
    "HasClientCert": False,
    "HasServerCa": False,
    "HasKmsKey": False,
    "HasHealthLake": True,
    "IngestEnabled": True,
    "HasPayloadKeys": True,
    "HasPayloadKmsKey": True,
    "HasMetrics": True,
    "HasTracing": False,
    "HasReviewerKey": True,
    "HasHealthImagingOidc": False,  # SigV4 to HealthImaging's DICOMweb, the default
}
PSEUDO = {"AWS::Region": "AWS_REGION", "AWS::AccountId": "AWS_ACCOUNT_ID", "AWS::Partition": "AWS_PARTITION",
          "AWS::StackName": "STACK_NAME"}
# Role (logical id) -> file stem, for the roles' permission and trust policies.
ROLES = {"TaskRole": "task-role", "ExecutionRole": "execution-role", "DataAccessRole": "data-access-role",
         "HealthLakeDataAccessRole": "healthlake-data-access-role"}
QUEUE_POLICIES = {"JobEventsQueuePolicy": "sqs/job-events-queue-policy.json",
                  "IngestQueuePolicy": "sqs/ingest-queue-policy.json"}
_NO_VALUE = object()


class RenderError(ValueError):
    """The template uses something the renderer cannot turn into a plain file."""


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    template, problems = decode_str(path.read_text())
    if problems or template is None:
        raise RenderError(f"{path}: {problems}")
    return json.loads(json.dumps(template))  # plain dicts, not cfn-lint's nodes


class Resolver:
    """Resolves intrinsic functions to placeholders, with the conditions fixed by ``features``."""

    def __init__(self, template: dict[str, Any], features: dict[str, bool]) -> None:
        missing = set(template.get("Conditions", {})) - set(features)
        if missing:
            raise RenderError(f"conditions without a rendering choice in FEATURES: {sorted(missing)}")
        self._parameters = set(template.get("Parameters", {}))
        self._resources = set(template.get("Resources", {}))
        self._features = features

    def placeholder(self, name: str) -> str:
        if name in PSEUDO:
            return "${" + PSEUDO[name] + "}"
        if name in self._parameters or name in self._resources:
            return "${" + name + "}"
        if "." in name:  # ${Resource.Attr} inside Fn::Sub
            resource, attr = name.split(".", 1)
            if resource in self._resources:
                return "${" + resource + attr.replace(".", "") + "}"
        raise RenderError(f"unknown reference {name!r}")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(n) for n in node]
            return [i for i in items if i is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.placeholder(arg)
            if key == "Fn::GetAtt":
                resource, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.placeholder(f"{resource}.{attr}")
            if key == "Fn::Sub":
                if not isinstance(arg, str):
                    raise RenderError("Fn::Sub with a variable map is not supported")
                return re.sub(r"\$\{([^!}][^}]*)\}", lambda m: self.placeholder(m.group(1)), arg)
            if key == "Fn::If":
                name, then, otherwise = arg
                return self.resolve(then if self._features[name] else otherwise)
            if key == "Fn::Join":
                sep, parts = arg
                return sep.join(str(p) for p in self.resolve(parts))
            if key.startswith("Fn::"):
                raise RenderError(f"{key} is not supported by the renderer")
        out = {}
        for k, v in node.items():
            value = self.resolve(v)
            if value is not _NO_VALUE:
                out[k] = value
        return out


def _member(members: dict[str, Any], cfn_key: str, where: str) -> str:
    for name in members:
        if name.lower() == cfn_key.lower():
            return name
    raise RenderError(f"{where}: {cfn_key!r} is not a field of the ECS API")


def to_api_shape(value: Any, shape: Any, where: str) -> Any:
    """A CloudFormation property value in the API's shape (member names and scalar types) per botocore's model."""
    if shape.type_name == "structure":
        if not isinstance(value, dict):
            raise RenderError(f"{where}: expected an object")
        return {(m := _member(shape.members, k, where)): to_api_shape(v, shape.members[m], f"{where}.{m}")
                for k, v in value.items()}
    if shape.type_name == "list":
        return [to_api_shape(v, shape.member, f"{where}[{i}]") for i, v in enumerate(value)]
    if shape.type_name == "map":
        return {str(k): to_api_shape(v, shape.value, f"{where}.{k}") for k, v in value.items()}
    if shape.type_name == "string":
        return str(value)
    if shape.type_name in ("integer", "long"):
        return int(value)
    if shape.type_name == "boolean":
        if isinstance(value, str):
            return value.lower() == "true"
        return bool(value)
    return value


def ecs_input_shape() -> Any:
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def task_definition(resolved: dict[str, Any]) -> dict[str, Any]:
    props = resolved["Resources"]["TaskDefinition"]["Properties"]
    return to_api_shape(props, ecs_input_shape(), "TaskDefinition")


def _policy(document: dict[str, Any]) -> dict[str, Any]:
    return {"Version": document["Version"], "Statement": document["Statement"]}


def render(template: dict[str, Any] | None = None, features: dict[str, bool] | None = None) -> dict[str, str]:
    """Relative path under deploy/ -> file text, for every plain file."""
    template = template or load_template()
    # Only the resources: Rules and Conditions are checked by CloudFormation itself, never rendered.
    resolved = {"Resources": Resolver(template, features or FEATURES).resolve(template["Resources"])}
    files: dict[str, Any] = {"ecs/task-definition.json": task_definition(resolved)}
    for logical_id, stem in ROLES.items():
        props = resolved["Resources"][logical_id]["Properties"]
        (policy,) = props["Policies"]
        files[f"iam/{stem}-policy.json"] = _policy(policy["PolicyDocument"])
        files[f"iam/{stem}-trust-policy.json"] = _policy(props["AssumeRolePolicyDocument"])
    for logical_id, path in QUEUE_POLICIES.items():
        files[path] = _policy(resolved["Resources"][logical_id]["Properties"]["PolicyDocument"])
    rule = resolved["Resources"]["JobEventsRule"]["Properties"]
    files["events/job-events-rule-pattern.json"] = rule["EventPattern"]
    files["s3/ingest-notification.json"] = s3_notification(
        resolved["Resources"]["IngestBucket"]["Properties"]["NotificationConfiguration"])
    return {path: json.dumps(doc, indent=2) + "\n" for path, doc in files.items()}


def s3_notification(cfn: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's NotificationConfiguration in PutBucketNotificationConfiguration's shape."""
    return {"QueueConfigurations": [
        {"QueueArn": q["Queue"], "Events": [q["Event"]],
         "Filter": {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]}
                                            for r in q["Filter"]["S3Key"]["Rules"]]}}}
        for q in cfn["QueueConfigurations"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in render().items():
        path = DEPLOY / rel
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote deploy/{rel}")
    if stale:
        print("out of date with deploy/cloudformation/himig.yaml (run `make deploy-files`): "
              + ", ".join(f"deploy/{s}" for s in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
