"""Each stage module in ``activities/`` is a leaf: it imports shared modules, never another stage.

A stage module is one that defines an activity (``@activity.defn``). What two stages both need lives in a shared
module (``healthimaging``, ``ledger``, ``storage``...). A helper that serves exactly one stage (review's spot
check, FHIR routing's resource builder) is private to it. Every module must be one of the three, so a new module
is a decision, not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ACTIVITIES = Path(__file__).resolve().parents[2] / "activities"

SHARED = {"dicom_header", "errors", "s3_stream", "spill_db", "healthimaging", "heartbeat", "import_index", "failed_index", "instance_identity", "bearer_http", "client_credentials", "ledger", "phi", "signed_http", "sources", "storage"}
# helper -> the one stage module allowed to import it
PRIVATE = {"spotcheck": "review", "fhir": "fhir_route", "report_aggregate": "report", "report_html": "report", "plan_store": "plan", "report_store": "report", "plan_folders": "plan", "job_admission": "importjob", "failed_before": "plan", "verify_pixels": "verify", "verify_source": "verify", "verify_listing": "verify", "plan_compare": "report", "copy_lanes": "importjob"}


def _modules() -> dict[str, Path]:
    found = {p.stem: p for p in ACTIVITIES.glob("*.py") if p.stem != "__init__"}
    found |= {p.name: p / "__init__.py" for p in ACTIVITIES.iterdir() if (p / "__init__.py").is_file()}
    return found


def _defines_activity(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and target.attr == "defn" \
                        and isinstance(target.value, ast.Name) and target.value.id == "activity":
                    return True
    return False


def _imported_activities_modules(tree: ast.AST) -> set[str]:
    """Top-level ``activities.<name>`` modules imported anywhere in ``tree`` (function-level imports too)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "activities" else [f"activities.{a.name}" for a in node.names]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("activities.")}
    return out


def _trees() -> dict[str, ast.AST]:
    return {name: ast.parse(path.read_text(), filename=str(path)) for name, path in _modules().items()}


def _stages(trees: dict[str, ast.AST]) -> set[str]:
    return {name for name, tree in trees.items() if _defines_activity(tree)}


class TestStageModules:
    def test_every_module_is_a_stage_a_shared_module_or_a_private_helper(self) -> None:
        trees = _trees()
        stages = _stages(trees)
        assert len(stages) >= 10, f"too few stage modules found ({sorted(stages)}): is the detection broken?"
        assert not stages & (SHARED | PRIVATE.keys()), "a shared module or helper defines an activity"
        unclassified = set(trees) - stages - SHARED - PRIVATE.keys()
        assert not unclassified, f"classify {sorted(unclassified)} in this test: stage, SHARED or PRIVATE"
        assert set(PRIVATE.values()) <= stages

    @pytest.mark.parametrize("name", sorted(_stages(_trees())))
    def test_stage_imports_no_other_stage(self, name: str) -> None:
        trees = _trees()
        stages = _stages(trees)
        imported = _imported_activities_modules(trees[name]) - {name}
        assert not imported & stages, (f"activities/{name}.py imports stage module(s) {sorted(imported & stages)}: "
                                       "move what they share into a shared module")
        foreign = {h for h in imported & PRIVATE.keys() if PRIVATE[h] != name}
        assert not foreign, f"activities/{name}.py imports {sorted(foreign)}, private to another stage"

    def test_shared_modules_import_no_stage(self) -> None:
        trees = _trees()
        stages = _stages(trees)
        for name in SHARED | PRIVATE.keys():
            wrong = _imported_activities_modules(trees[name]) & stages
            assert not wrong, f"activities/{name} imports stage module(s) {sorted(wrong)}"
