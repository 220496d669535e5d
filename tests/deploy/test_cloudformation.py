"""The CloudFormation template and the plain files rendered from it, checked with the real tools: cfn-lint,
botocore's ECS model, parliament, and the worker's own settings loader."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from botocore.validate import ParamValidator

from contracts.jobevents import RULE_PATTERN
from tests.support.deployment import (
    DEPLOY,
    EXAMPLE_VALUES,
    PERMISSION_POLICIES,
    fill,
    plain_file,
    render_module,
    use_only,
    worker_variables,
)
from tests.support.installation import PAYLOAD_KEYS
from worker.settings import Settings, load_settings

TEMPLATE = DEPLOY / "cloudformation" / "himig.yaml"
def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    assert exe, "cfn-lint (a dev dependency) must be installed in the venv"
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)


def template_text() -> str:
    return TEMPLATE.read_text()


class TestTemplate:
    def test_cfn_lint_passes(self) -> None:
        result = cfn_lint(TEMPLATE)
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize(("change", "rule"), [
        # a role the task definition needs, misspelt
        (("TaskRoleArn: !GetAtt TaskRole.Arn", "TaskRoleArn: !GetAtt TaskRoles.Arn"), "E1010"),
        # a Fargate size ECS rejects
        (("Cpu: !Ref TaskCpu", "Cpu: 3"), "E"),
        # an IAM action that does not exist
        (("medical-imaging:StartDICOMImportJob", "medical-imaging:StartDicomImport"), "W3037"),
    ])
    def test_cfn_lint_rejects_a_broken_template(self, tmp_path: Path, change: tuple[str, str], rule: str) -> None:
        text = template_text()
        assert change[0] in text
        broken = tmp_path / "broken.yaml"
        broken.write_text(text.replace(change[0], change[1], 1))
        result = cfn_lint(broken)
        assert result.returncode != 0 and rule in result.stdout, result.stdout

    def test_the_drain_fits_in_the_stop_timeout(self) -> None:
        template = render_module().load_template()
        drain = template["Parameters"]["GracefulShutdownSeconds"]
        (container,) = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        # ECS kills the container StopTimeout seconds after SIGTERM; Fargate allows at most 120.
        assert drain["Default"] <= drain["MaxValue"] < container["StopTimeout"] <= 120
        assert Settings.model_fields["graceful_shutdown_seconds"].metadata[-1].le >= drain["MaxValue"]

    def test_the_rule_pattern_is_the_one_the_listener_expects(self) -> None:
        pattern = plain_file("events/job-events-rule-pattern.json")
        assert {k: sorted(v) for k, v in pattern.items()} == {k: sorted(v) for k, v in RULE_PATTERN.items()}

    def test_the_health_check_is_the_images(self) -> None:
        dockerfile = (DEPLOY / "Dockerfile").read_text()
        worker_stage = dockerfile[dockerfile.index("AS worker"):]
        image_check = json.loads(re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", worker_stage)[1])  # type: ignore[index]
        health_file = re.search(r"HIMIG_HEALTH_FILE=(\S+)", worker_stage)[1]  # type: ignore[index]
        (container,) = plain_file("ecs/task-definition.json")["containerDefinitions"]
        assert container["healthCheck"]["command"] == ["CMD-SHELL", image_check[-1]]
        assert {"name": "HIMIG_HEALTH_FILE", "value": health_file} in container["environment"]
        assert container["user"] == re.search(r"USER (\d+)", worker_stage)[1]  # type: ignore[index]


class TestPlainFiles:
    def test_they_are_what_the_template_renders(self) -> None:
        rendered = render_module().render()
        on_disk = {str(p.relative_to(DEPLOY)): p.read_text()
                   for sub in ("ecs", "iam", "sqs", "events", "s3") for p in (DEPLOY / sub).glob("*.json")}
        assert set(on_disk) == set(rendered), "a plain file without a source in the template, or one missing"
        stale = [rel for rel, text in rendered.items() if on_disk[rel] != text]
        assert not stale, f"run `make deploy-files`: {stale}"

    def test_the_check_mode_sees_a_template_change(self, tmp_path: Path) -> None:
        render = render_module()
        template = render.load_template()
        changed = copy.deepcopy(template)
        changed["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["StopTimeout"] = 90
        assert render.render(changed)["ecs/task-definition.json"] != render.render(template)["ecs/task-definition.json"]

    def test_the_renderer_refuses_what_the_ecs_api_does_not_know(self) -> None:
        render = render_module()
        template = render.load_template()
        template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["StopTimeOut"] = 1
        template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Bogus"] = 1
        with pytest.raises(render.RenderError, match="'Bogus' is not a field of the ECS API"):
            render.render(template)

    def test_every_condition_has_a_rendering_choice(self) -> None:
        render = render_module()
        template = render.load_template()
        template["Conditions"]["Unchosen"] = {"Fn::Equals": ["a", "a"]}
        with pytest.raises(render.RenderError, match="Unchosen"):
            render.render(template)

    def test_the_task_definition_is_valid_input_of_register_task_definition(self) -> None:
        shape = render_module().ecs_input_shape()
        report = ParamValidator().validate(plain_file("ecs/task-definition.json"), shape)
        assert not report.has_errors(), report.generate_report()
        broken = plain_file("ecs/task-definition.json")
        broken["containerDefinitions"][0]["stopTimeout"] = "120"
        broken["containerDefinitions"][0]["essential"] = "yes"
        broken["containerDefinitions"][0]["stopTimeOut"] = 120
        problems = ParamValidator().validate(broken, shape).generate_report()
        for field in ("stopTimeout", "essential", "stopTimeOut"):
            assert field in problems

    def test_every_placeholder_has_an_example(self) -> None:
        for path in DEPLOY.glob("*/*.json"):
            fill(path.read_text(), EXAMPLE_VALUES)  # raises naming the placeholder

    def test_the_task_environment_is_read_by_the_worker(self, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
        """Every variable the task sets is one the worker reads (a typo would be ignored silently), and together
        with the secrets they load into working settings."""
        (container,) = plain_file("ecs/task-definition.json")["containerDefinitions"]
        env = {e["name"]: e["value"] for e in container["environment"]}
        secrets = {"HIMIG_FINGERPRINT_KEY": "k" * 32, "HIMIG_PAYLOAD_KEYS": PAYLOAD_KEYS,
                   "HIMIG_REVIEWER_ATTESTATION_KEY": "r" * 48, "TEMPORAL_API_KEY": "an-api-key"}
        assert {s["name"] for s in container["secrets"]} == set(secrets)
        unknown = sorted({*env, *secrets} - worker_variables())
        assert not unknown, f"the worker reads no such variables: {unknown}"
        use_only({**env, **secrets}, monkeypatch, tmp_path)
        settings = load_settings()
        assert settings.job_events.queue_url == EXAMPLE_VALUES["JobEventsQueue"]
        assert settings.ingest.enabled and settings.ingest.ingest_input().source_s3_uri == "s3://himig-landing/incoming/"
        assert settings.data_access_role_arn == EXAMPLE_VALUES["DataAccessRoleArn"]
        assert settings.graceful_shutdown_seconds == 60
        assert settings.reconciliation_reviewer_list() == tuple(EXAMPLE_VALUES["ReconciliationReviewers"].split(","))
        assert settings.reviewer_attestation_secret() == b"r" * 48
        temporal = settings.temporal()
        assert (temporal.address, temporal.namespace) == (EXAMPLE_VALUES["TemporalAddress"], "himig.a1b2c")
        assert temporal.tls is not None and temporal.api_key == "an-api-key"

    def test_the_metrics_port_is_the_one_the_task_publishes(self, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
        """The worker serves Prometheus on the port the container maps, on the task's address (not loopback)."""
        (container,) = plain_file("ecs/task-definition.json")["containerDefinitions"]
        env = {e["name"]: e["value"] for e in container["environment"]}
        (mapping,) = container["portMappings"]
        use_only({**env, "HIMIG_FINGERPRINT_KEY": "k" * 32}, monkeypatch, tmp_path)
        assert load_settings().metrics_bind_address() == f"0.0.0.0:{mapping['containerPort']}"
        assert mapping["protocol"] == "tcp"
        # With Metrics=off the template maps no port and sets no metrics variable.
        render = render_module()
        off = render.render(features={**render.FEATURES, "HasMetrics": False})
        (quiet,) = json.loads(off["ecs/task-definition.json"])["containerDefinitions"]
        assert "portMappings" not in quiet
        assert not {e["name"] for e in quiet["environment"]} & {"HIMIG_METRICS_PORT", "HIMIG_METRICS_HOST"}

    def test_mtls_secrets_arrive_as_pem_data(self) -> None:
        """The template passes the client certificate and key as TEMPORAL_TLS_CLIENT_*_DATA (secrets are values,
        not files); the SDK's environment configuration takes them like the *_PATH variables."""
        from worker.temporal_connection import resolve

        cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
        conn = resolve(env={"TEMPORAL_ADDRESS": "t.example:7233", "TEMPORAL_TLS_CLIENT_CERT_DATA": cert,
                            "TEMPORAL_TLS_CLIENT_KEY_DATA": key})
        assert conn.tls is not None
        assert (conn.tls.client_cert, conn.tls.client_private_key) == (cert.encode(), key.encode())


# Findings of parliament's community auditors that these policies must keep, each for a reason.
ACCEPTED = {
    # ECS pulls the image with a registry token; the action has no resource-level permission.
    ("CREDENTIALS_EXPOSURE", "ecr:getauthorizationtoken"),
    # StartDICOMImportJob / StartFHIRImportJob hand the service its data-access role; scoped to that role and,
    # by iam:PassedToService, to that service.
    ("PERMISSIONS_MANAGEMENT_ACTIONS", "iam:passrole"),
}


class TestParliament:
    @pytest.mark.parametrize("rel", PERMISSION_POLICIES)
    def test_no_findings(self, rel: str) -> None:
        policy = json.dumps(plain_file(rel))
        assert analyze(policy) == []
        community = [f for f in analyze(policy, community=True)
                     if not all((f[0], a) in ACCEPTED for a in f[2].get("actions", ["?"]))]
        assert community == [], community

    @pytest.mark.parametrize(("action", "resource", "issue"), [
        ("medical-imaging:StartDicomImport", "arn:aws:s3:::himig-work/himig/*", "UNKNOWN_ACTION"),
        # an image-set action on a bucket ARN
        ("medical-imaging:GetImageSet", "arn:aws:s3:::himig-work/*", "RESOURCE_MISMATCH"),
    ])
    def test_it_reports_a_planted_mistake(self, action: str, resource: str, issue: str) -> None:
        policy: dict[str, Any] = plain_file("iam/task-role-policy.json")
        policy["Statement"].append({"Effect": "Allow", "Action": action, "Resource": resource})
        assert [f[0] for f in analyze(json.dumps(policy))] == [issue]


def analyze(policy: str, community: bool = False) -> list[tuple[str, Any, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parliament imports pkg_resources, which warns of its own deprecation
        import parliament
    return [(f.issue, f.detail, f.location) for f in parliament.analyze_policy_string(
        policy, include_community_auditors=community).findings]
