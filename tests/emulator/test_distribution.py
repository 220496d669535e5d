"""The emulator is a product of its own: its wheel holds only ``emulator/``, and nothing in it needs the service.

The wheel is built from a copy of ``emulator/`` so the check sees exactly what the distribution declares (and
leaves no ``build/`` behind in the checkout). Installing it into a fresh venv is left out on purpose: too slow
for the suite, and the import-graph test below covers what that would catch.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMULATOR_DIR = ROOT / "emulator"
EMULATOR_SRC = EMULATOR_DIR / "src" / "emulator"
# Top-level packages of the migration service and its local tooling.
SERVICE_PACKAGES = frozenset({"contracts", "workflows", "activities", "worker", "cli", "devstack", "corpus"})


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _normalized(match.group(1))


def _project(pyproject: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(pyproject.read_text())["project"]
    return project


def test_pyproject_declares_no_dependency_on_the_service() -> None:
    service_dists = {_normalized(_project(p)["name"])
                     for p in (ROOT / "pyproject.toml", ROOT / "devstack" / "pyproject.toml")}
    project = _project(EMULATOR_DIR / "pyproject.toml")
    requirements = list(project.get("dependencies") or [])
    for extra in (project.get("optional-dependencies") or {}).values():
        requirements += extra
    names = {_requirement_name(r) for r in requirements}
    assert names, "the emulator declares its dependencies"
    assert not names & service_dists
    assert not names & SERVICE_PACKAGES


def _imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.add(node.args[0].value)
    return found


def test_no_emulator_module_imports_the_service() -> None:
    sources = sorted(EMULATOR_SRC.rglob("*.py"))
    assert len(sources) > 10
    offenders = {}
    for path in sources:
        imported = _imported_modules(ast.parse(path.read_text(), filename=str(path)))
        bad = sorted(m for m in imported if m.split(".")[0] in SERVICE_PACKAGES)
        if bad:
            offenders[str(path.relative_to(EMULATOR_SRC))] = bad
    assert offenders == {}


def test_the_import_walk_sees_service_imports() -> None:
    # Guards the walk itself: a checker that finds nothing would make the test above vacuous.
    tree = ast.parse("import worker.settings\nfrom contracts.pipeline import X\n"
                     "def f():\n    importlib.import_module('devstack.stack')\n")
    assert _imported_modules(tree) == {"worker.settings", "contracts.pipeline", "devstack.stack"}


def test_wheel_holds_only_the_emulator_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EMULATOR_DIR, source,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc"))
    out = tmp_path / "wheel"
    proc = subprocess.run(
        # the dev extra installs setuptools and wheel, so no isolated build environment (and no index) is needed
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", str(source), "-w", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("himig_emulator-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in dist_info} == {wheels[0].name.split("-py3")[0] + ".dist-info"}
    package = [n for n in names if n not in dist_info]
    assert package and all(n.startswith("emulator/") and n.endswith(".py") for n in package), package
    expected = {f"emulator/{p.relative_to(EMULATOR_SRC).as_posix()}" for p in EMULATOR_SRC.rglob("*.py")}
    assert set(package) == expected
    entry_points = zipfile.ZipFile(wheels[0]).read(next(n for n in dist_info if n.endswith("entry_points.txt")))
    assert "himig-emulator = emulator.__main__:main" in entry_points.decode()


@pytest.mark.parametrize("command", [[sys.executable, "-m", "emulator", "--help"],
                                     [str(Path(sys.executable).parent / "himig-emulator"), "--help"]],
                         ids=["python -m emulator", "himig-emulator"])
def test_command_line_help(command: list[str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "--data-dir" in proc.stdout and "--port" in proc.stdout
