"""docker-compose.yml, the evaluation stack, as the real `docker-compose config` normalises it.

No Docker engine runs here, so the stack is never started: these checks hold the file to what it promises
(pinned images, health checks and conditions, loopback-only ports, production setting names, the queues and
search attributes the service needs). Each check is a function returning its problems; for several of them a
broken copy of the file, written to tmp_path and normalised by the same tool, shows the check rejects it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from contracts import search
from contracts.jobevents import RULE_PATTERN
from tests.support.deployment import use_only, worker_variables
from tests.support.installation import PAYLOAD_KEYS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
Config = dict[str, Any]

_MOTO_ACCOUNT_ID = "123456789012"  # devstack.stack.MOTO_ACCOUNT_ID: part of every queue URL moto hands out


def compose_config(path: Path) -> Config:
    """``docker-compose -f path config``, parsed (the real tool: merges anchors, normalises short forms)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; `make test` installs it)")
    out = subprocess.run([binary, "-f", str(path), "--project-directory", str(ROOT), "config"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert out.returncode == 0, f"docker-compose config rejected {path}:\n{out.stderr}"
    config: Config = yaml.safe_load(out.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> Config:
    return compose_config(COMPOSE)


# ---- the checks


def one_shots(cfg: Config) -> set[str]:
    """Services something waits for with `service_completed_successfully`: they run once and exit."""
    return {dep for svc in cfg["services"].values() for dep, how in (svc.get("depends_on") or {}).items()
            if how.get("condition") == "service_completed_successfully"}


def long_running(cfg: Config) -> set[str]:
    return set(cfg["services"]) - one_shots(cfg)


_EXACT_TAG = re.compile(r"^[a-z0-9][a-z0-9._/-]*:(\d+\.\d+(\.\d+)?([.-][\w.-]+)?|RELEASE\.\d{4}-\d{2}-\d{2}T[\d-]+Z)"
                        r"(@sha256:[0-9a-f]{64})?$")


def image_problems(cfg: Config) -> list[str]:
    problems = []
    for name, svc in cfg["services"].items():
        image = svc.get("image")
        if image is None:
            if "build" not in svc:
                problems.append(f"{name}: neither image nor build")
            continue
        if not _EXACT_TAG.match(image):
            problems.append(f"{name}: {image} is not pinned to an exact version tag")
        if image.split(":")[0].endswith("temporalio/auto-setup"):
            problems.append(f"{name}: {image} is the deprecated auto-setup image")
    return problems


def health_problems(cfg: Config) -> list[str]:
    problems = []
    for name in sorted(long_running(cfg)):
        svc = cfg["services"][name]
        check = svc.get("healthcheck") or {}
        if check.get("disable") or not check.get("test"):
            problems.append(f"{name}: long-running without a healthcheck")
        if svc.get("restart") not in ("unless-stopped", "always", "on-failure"):
            problems.append(f"{name}: long-running without a restart policy")
    for name in sorted(one_shots(cfg)):
        if cfg["services"][name].get("restart") not in (None, "no"):
            problems.append(f"{name}: a one-shot must not restart (it would never complete)")
    return problems


def dependency_problems(cfg: Config) -> list[str]:
    problems = []
    shots = one_shots(cfg)
    for name, svc in cfg["services"].items():
        for dep, how in (svc.get("depends_on") or {}).items():
            want = "service_completed_successfully" if dep in shots else "service_healthy"
            if how.get("condition") != want:
                problems.append(f"{name} -> {dep}: condition {how.get('condition')}, want {want}")
    return problems


def port_problems(cfg: Config) -> list[str]:
    problems = []
    for name, svc in cfg["services"].items():
        for port in svc.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            if host_ip != "127.0.0.1" or (isinstance(port, str) and port.count(":") != 2):
                problems.append(f"{name}: port {port} is not bound to 127.0.0.1")
    return problems


def moto_pin() -> str:
    deps = tomllib.loads((ROOT / "devstack" / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if d.replace(" ", "").startswith("moto[server]==")]
    assert pins, f"devstack/pyproject.toml must pin moto exactly (moto[server]==X.Y.Z), has {deps}"
    return pins[0].split("==", 1)[1].strip()


def moto_problems(cfg: Config) -> list[str]:
    image = cfg["services"]["moto"]["image"]
    repo, _, tag = image.partition(":")
    if repo != "motoserver/moto" or tag.split("@")[0] != moto_pin():
        return [f"moto: {image}, but the embedded stack runs moto {moto_pin()} (devstack/pyproject.toml)"]
    return []


def search_attribute_problems(cfg: Config) -> list[str]:
    setup = cfg["services"]["temporal-setup"]
    registered = setup["environment"]["SEARCH_ATTRIBUTES"].split()
    wanted = [key.name for key in search.ALL]
    problems = []
    if registered != wanted:
        problems.append(f"temporal-setup registers {registered}, contracts/search.py has {wanted}")
    script = " ".join(setup["command"])
    if "$$SEARCH_ATTRIBUTES" not in script or "search-attribute create" not in script:
        problems.append("temporal-setup does not create $SEARCH_ATTRIBUTES")
    return problems


def worker_env_problems(cfg: Config) -> list[str]:
    env = cfg["services"]["worker"]["environment"]
    known = worker_variables()
    problems = [f"worker: {name} is not a setting of worker.settings" for name in sorted(env) if name not in known]
    for required in ("TEMPORAL_ADDRESS", "HIMIG_INGEST_QUEUE_URL", "HIMIG_JOB_EVENTS_QUEUE_URL",
                     "HIMIG_DATA_ACCESS_ROLE_ARN", "HIMIG_FINGERPRINT_KEY",
                     "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_EVENTBRIDGE",
                     "AWS_ENDPOINT_URL_MEDICAL_IMAGING"):
        if required not in env:
            problems.append(f"worker: {required} is not set")
    return problems


def queue_problems(cfg: Config) -> list[str]:
    """The worker's queues and buckets are the ones the one-shots create, on the SQS it is pointed at."""
    services = cfg["services"]
    env, aws = services["worker"]["environment"], services["aws-setup"]["environment"]
    problems = []
    sqs = urlsplit(env["AWS_ENDPOINT_URL_SQS"])
    for setting, created in (("HIMIG_INGEST_QUEUE_URL", aws["INGEST_QUEUE"]),
                             ("HIMIG_JOB_EVENTS_QUEUE_URL", aws["JOB_EVENTS_QUEUE"])):
        url = urlsplit(env.get(setting, ""))
        if url.netloc != sqs.netloc or url.path != f"/{_MOTO_ACCOUNT_ID}/{created}":
            problems.append(f"worker: {setting}={env.get(setting)!r} is not the queue {created!r} aws-setup "
                            f"creates on {sqs.netloc}")
    if aws["AWS_ENDPOINT_URL_SQS"] != env["AWS_ENDPOINT_URL_SQS"]:
        problems.append("aws-setup creates the queues on another SQS endpoint than the worker's")
    if json.loads(aws["JOB_EVENTS_RULE_PATTERN"]) != RULE_PATTERN:
        problems.append(f"aws-setup's rule pattern is not contracts.jobevents.RULE_PATTERN ({RULE_PATTERN})")
    buckets = services["minio-setup"]["environment"]["BUCKETS"].split()
    for setting in ("HIMIG_INGEST_SOURCE_S3_URI", "HIMIG_INGEST_WORK_S3_URI"):
        bucket = urlsplit(env.get(setting, "")).netloc
        if bucket not in buckets:
            problems.append(f"worker: {setting} names bucket {bucket!r}, minio-setup creates {buckets}")
    return problems


def _seconds(value: Any) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(value))
    assert match and any(match.groups()), f"unreadable duration {value!r}"
    return int(match[1] or 0) * 60 + float(match[2] or 0)


def shutdown_problems(cfg: Config) -> list[str]:
    worker = cfg["services"]["worker"]
    drain = float(worker["environment"]["HIMIG_GRACEFUL_SHUTDOWN_SECONDS"])
    grace = _seconds(worker.get("stop_grace_period", "10s"))
    return [] if grace > drain else [f"worker: stop_grace_period {grace:g}s is not above the {drain:g}s drain"]


CHECKS: dict[str, Callable[[Config], list[str]]] = {
    "images": image_problems, "health": health_problems, "dependencies": dependency_problems,
    "ports": port_problems, "moto": moto_problems, "search attributes": search_attribute_problems,
    "worker env": worker_env_problems, "queues": queue_problems, "shutdown": shutdown_problems,
}


# ---- the file as it is


def test_the_real_tool_accepts_the_file(config: Config) -> None:
    assert {"postgresql", "temporal-schema", "temporal", "temporal-setup", "temporal-ui", "minio", "minio-setup",
            "moto", "aws-setup", "emulator", "orthanc", "worker"} <= set(config["services"])
    assert one_shots(config) == {"temporal-schema", "temporal-setup", "minio-setup", "aws-setup"}


@pytest.mark.parametrize("check", list(CHECKS))
def test_check_passes(config: Config, check: str) -> None:
    assert CHECKS[check](config) == []


def test_temporal_schema_set_up_by_admin_tools_for_both_databases(config: Config) -> None:
    schema = config["services"]["temporal-schema"]
    assert schema["image"].startswith("temporalio/admin-tools:")
    script = " ".join(schema["command"])
    for step in ("create", "setup-schema -v 0.0", "update-schema -d"):
        assert f"$$tool {step}" in script
    assert "for db in temporal temporal_visibility" in script
    temporal = config["services"]["temporal"]
    assert temporal["image"].startswith("temporalio/server:")
    assert temporal["image"].split(":")[1] == schema["image"].split(":")[1], "schema tool and server must match"


def test_orthanc_serves_dicomweb_and_the_worker_may_call_it(config: Config) -> None:
    orthanc, env = config["services"]["orthanc"], config["services"]["worker"]["environment"]
    assert orthanc["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    users = json.loads(orthanc["environment"]["ORTHANC__REGISTERED_USERS"])
    assert users == {env["HIMIG_DICOMWEB_USERNAME"]: env["HIMIG_DICOMWEB_PASSWORD"]}
    assert env["HIMIG_DICOMWEB_ALLOWED_ORIGINS"] == "http://orthanc:8042"


def test_worker_environment_is_valid_settings(config: Config, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """The worker's environment (with the data store id and the key the one-shot provides) passes
    `load_settings`."""
    from worker.settings import load_settings

    env = {name: value or "" for name, value in config["services"]["worker"]["environment"].items()}
    use_only({**env, "HIMIG_INGEST_DATASTORE_ID": "0" * 32, "HIMIG_PAYLOAD_KEYS": PAYLOAD_KEYS,
              "HIMIG_FINGERPRINT_KEY": "k" * 43}, monkeypatch, tmp_path)
    settings = load_settings()
    assert settings.ingest.enabled and settings.job_events.enabled
    assert settings.temporal().address == "temporal:7233"


def test_codec_server_environment_starts_a_server_for_the_ui(config: Config, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """The codec server's environment passes `load_settings` and the server's own start-up checks, and the UI
    is pointed at it (the browser's URL: the port published on this machine)."""
    from worker.settings import load_settings

    service = config["services"]["codec-server"]
    env = {name: value or "" for name, value in service["environment"].items()}
    use_only({**env, "HIMIG_PAYLOAD_KEYS": PAYLOAD_KEYS}, monkeypatch, tmp_path)
    server = load_settings(for_worker=False).codec_server  # as `himig codec-server` reads them
    assert server.problems() == []
    assert service["ports"] == [f"127.0.0.1:{server.port}:{server.port}/tcp"]  # as `docker-compose config` writes
    ui = config["services"]["temporal-ui"]["environment"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"] == f"http://127.0.0.1:{server.port}"
    assert server.ui_origin_list() == ("http://127.0.0.1:8233",)


def test_the_payload_key_is_made_once_and_read_by_every_sealing_service(config: Config) -> None:
    aws = " ".join(config["services"]["aws-setup"]["command"])
    assert "[ ! -s /setup/payload-keys ]" in aws and "head -c 32 /dev/urandom | base64" in aws
    for name in ("worker", "codec-server"):
        service = config["services"][name]
        assert "setup:/setup:ro" in service["volumes"]
        assert "$(cat /setup/payload-keys)" in " ".join(service["command"]), name


def test_the_reviewer_key_is_made_once_and_read_by_the_worker_whose_user_may_decide(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIMIG_RECONCILIATION_REVIEWERS", raising=False)  # the test installation's own list
    config = compose_config(COMPOSE)
    aws = " ".join(config["services"]["aws-setup"]["command"])
    assert "[ ! -s /setup/reviewer-attestation-key ]" in aws and "head -c 36 /dev/urandom | base64" in aws
    worker = config["services"]["worker"]
    assert "$(cat /setup/reviewer-attestation-key)" in " ".join(worker["command"])
    assert "export HIMIG_REVIEWER_ATTESTATION_KEY" in worker["command"][-1]
    assert worker["environment"]["HIMIG_RECONCILIATION_REVIEWERS"] == "himig"  # the image's user (deploy/Dockerfile)


def test_worker_reads_the_data_store_id_the_one_shot_writes(config: Config) -> None:
    worker, aws = config["services"]["worker"], config["services"]["aws-setup"]
    assert "setup:/setup:ro" in worker["volumes"] and "setup:/setup:rw" in aws["volumes"]
    assert "> /setup/datastore-id" in " ".join(aws["command"])
    assert "cat /setup/datastore-id" in " ".join(worker["command"]) and "exec python -m worker" in worker["command"][-1]


def test_worker_reads_the_fingerprint_key_the_one_shot_generates_once(config: Config) -> None:
    worker, aws = config["services"]["worker"], config["services"]["aws-setup"]
    script = " ".join(aws["command"])
    assert "[ ! -s /setup/fingerprint-key ]" in script and "/dev/urandom" in script  # generated once, then kept
    assert "HIMIG_FINGERPRINT_KEY:=$$(cat /setup/fingerprint-key)" in worker["command"][-1]


# ---- broken variants: each check rejects what it is there for


def _set(path: tuple[str, ...], value: Any) -> Callable[[Config], None]:
    def mutate(doc: Config) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return mutate


BROKEN: dict[str, tuple[Callable[[Config], None], str]] = {
    "latest tag": (_set(("services", "minio", "image"), "minio/minio:latest"), "images"),
    "bare major": (_set(("services", "postgresql", "image"), "postgres:16"), "images"),
    "auto-setup": (_set(("services", "temporal", "image"), "temporalio/auto-setup:1.30.1"), "images"),
    "no healthcheck": (_set(("services", "moto", "healthcheck"), None), "health"),
    "no restart": (_set(("services", "emulator", "restart"), None), "health"),
    "started, not healthy": (_set(("services", "worker", "depends_on", "emulator"),
                                  {"condition": "service_started"}), "dependencies"),
    "list depends_on": (_set(("services", "temporal-ui", "depends_on"), ["temporal"]), "dependencies"),
    "all interfaces": (_set(("services", "orthanc", "ports"), ["8042:8042"]), "ports"),
    "other moto": (_set(("services", "moto", "image"), "motoserver/moto:5.1.0"), "moto"),
    "attribute missing": (_set(("services", "temporal-setup", "environment", "SEARCH_ATTRIBUTES"),
                                "HimigMigrationId HimigState"), "search attributes"),
    "unknown setting": (_set(("services", "worker", "environment", "HIMIG_INGEST_QUEUE"), "x"), "worker env"),
    "no data-access role": (_set(("services", "worker", "environment", "HIMIG_DATA_ACCESS_ROLE_ARN"), None),
                            "worker env"),
    "old address name only": (_set(("services", "worker", "environment", "TEMPORAL_ADDRESS"), None), "worker env"),
    "queue not created": (_set(("services", "worker", "environment", "HIMIG_JOB_EVENTS_QUEUE_URL"),
                                "http://moto:5000/123456789012/himig-job-events"), "queues"),
    "short grace": (_set(("services", "worker", "stop_grace_period"), "20s"), "shutdown"),
}


@pytest.mark.parametrize("variant", list(BROKEN))
def test_check_rejects_broken_variant(variant: str, tmp_path: Path) -> None:
    mutate, check = BROKEN[variant]
    doc = yaml.safe_load(COMPOSE.read_text())
    mutate(doc)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False))
    problems = CHECKS[check](compose_config(broken))
    assert problems, f"the {check} check accepted the variant {variant!r}"
