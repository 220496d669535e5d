"""Everything a caller can send is strict: the class, tested over every model reachable from outside.

A caller reaches these models through workflow inputs (`temporal workflow start --input`, the Temporal UI, the
CLI), signals and updates. Each of them, and every model nested in one, must refuse unknown keys, and every
integer, boolean and number field must refuse what pydantic's lax mode would coerce: JSON ``true`` as 1, 1.0 or
"5" as an integer, 1 or "yes" as a boolean, NaN / Infinity / 1e309 as a number. A field added later without
`contracts.common.Int` / `Bool` / `Float` fails here.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from typing import Annotated, Any, Union

import pydantic
import pytest
from pydantic import BaseModel, TypeAdapter

from contracts.batch import BatchInput, ManifestApproval
from contracts.errors import describe_validation_error
from contracts.ingest import Arrival, IngestInput
from contracts.jobevents import JobEvent
from contracts.migration import MigrationInput, OperatorCommand
from contracts.plan import PlanRequest
from contracts.reconciliation import ReconciliationDecision, ReconciliationInput
from contracts.sweep import SweepInput

# What a caller can send: workflow inputs, then signal and update arguments.
ROOTS: list[type[BaseModel]] = [
    MigrationInput, IngestInput, ReconciliationInput, BatchInput, SweepInput,
    OperatorCommand, Arrival, JobEvent, ReconciliationDecision, ManifestApproval, PlanRequest,
]

# Valid JSON for each root, the base each hostile case alters one field of.
VALID: dict[type[BaseModel], dict[str, Any]] = {
    MigrationInput: {"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32, "work_s3_uri": "s3://work-b/w/"},
    IngestInput: {"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32, "work_s3_uri": "s3://work-b/w/"},
    ReconciliationInput: {"datastore_id": "a" * 32, "image_set_id": "b" * 32},
    BatchInput: {"migration_id": "m1", "batch": 0, "source_s3_uri": "s3://src-b/in/", "work_s3_uri": "s3://w-b/w/",
                 "datastore_id": "a" * 32},
    SweepInput: {"datastore_id": "a" * 32},
    OperatorCommand: {},
    Arrival: {"key": "in/a.dcm", "size": 10, "event_time": "2026-12-01T00:00:00Z"},
    JobEvent: {"job_id": "j1", "status": "COMPLETED"},
    ReconciliationDecision: {"action": "keep", "reviewer": "alice"},
    ManifestApproval: {"approve": True, "reviewer": "alice"},
    PlanRequest: {"migration": {"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32,
                                "work_s3_uri": "s3://work-b/w/"}},
}

# JSON texts lax mode would coerce, per scalar type.
HOSTILE_JSON: dict[type, list[str]] = {
    int: ["true", "false", "1.0", "2.5", '"5"', "1e3"],
    bool: ["1", "0", '"true"', '"yes"', '"1"', "1.0"],
    float: ["true", '"1.5"', "NaN", "Infinity", "-Infinity", "1e309", '"nan"'],
}
HOSTILE_PYTHON: dict[type, list[Any]] = {
    int: [True, False, 1.0, "5"],
    bool: [1, 0, "true", "yes"],
    float: [True, "1.5", float("nan"), float("inf"), float("-inf")],
}


def _unwrap(annotation: Any) -> list[Any]:
    """The types inside an annotation (through Annotated, unions, lists, dicts and Literal-free generics)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, dict, tuple, set, frozenset):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    if origin is typing.Literal:
        return []
    return [annotation]


def _models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = list(ROOTS)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo += [t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return sorted(seen, key=lambda m: m.__name__)


def _scalar(annotation: Any) -> type | None:
    """int, bool or float when the field holds one of them (bool before int: bool is an int subclass)."""
    kinds = [t for t in _unwrap(annotation) if isinstance(t, type) and not issubclass(t, Enum)]
    for kind in (bool, int, float):
        if kind in kinds:
            return kind
    return None


MODELS = _models()
SCALAR_FIELDS = [(m, name, kind) for m in MODELS for name, f in m.model_fields.items()
                 if (kind := _scalar(f.annotation)) is not None]


def test_the_walk_reaches_the_nested_models() -> None:
    names = {m.__name__ for m in MODELS}
    # Carried state, nested messages and connectors are inputs too: a caller can type them.
    assert {"MigrationState", "IngestState", "OperatorAction", "PendingFlush", "FlushSummary", "FlushedMark",
            "FhirRouting", "LocalSource", "DicomwebSource", "DimseSource", "ReconciliationCarry",
            "ConflictDescription", "AttributeDifference", "DecisionRecord", "SweepCarry"} <= names
    assert len(SCALAR_FIELDS) > 40


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_unknown_keys_are_refused(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid", f"{model.__name__} ignores unknown keys"


def _leaves(annotation: Any) -> list[Any]:
    """The int/bool/float annotations (with their Annotated constraints) held inside a container annotation."""
    origin = typing.get_origin(annotation)
    base = typing.get_args(annotation)[0] if origin is Annotated else annotation
    if typing.get_origin(base) in (list, dict, tuple, set, frozenset):
        return [leaf for arg in typing.get_args(base) for leaf in _leaves(arg)]
    if typing.get_origin(base) in (Union, types.UnionType):
        return [leaf for arg in typing.get_args(base) for leaf in _leaves(arg)]
    return [annotation] if _scalar(annotation) is not None else []


@pytest.mark.parametrize("model,name,kind", SCALAR_FIELDS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_numbers_and_booleans_are_never_coerced(model: type[BaseModel], name: str, kind: type) -> None:
    field = model.model_fields[name]
    whole = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    # A field holding a container (dict of counts) is checked through the values it holds.
    inner = [] if _scalar_directly(field.annotation) else _leaves(field.annotation)
    for annotation in inner or [whole]:
        _check_adapter(model, name, kind, TypeAdapter(annotation), field.default if not inner else None)


def _scalar_directly(annotation: Any) -> bool:
    return not any(typing.get_origin(a) in (list, dict, tuple, set, frozenset)
                   for a in [annotation, *typing.get_args(annotation)])


def _check_adapter(model: type[BaseModel], name: str, kind: type, adapter: TypeAdapter[Any], default: Any) -> None:
    for text in HOSTILE_JSON[kind]:
        with pytest.raises(pydantic.ValidationError):
            adapter.validate_json(text)
            pytest.fail(f"{model.__name__}.{name} accepted JSON {text}")
    for value in HOSTILE_PYTHON[kind]:
        with pytest.raises(pydantic.ValidationError):
            adapter.validate_python(value)
            pytest.fail(f"{model.__name__}.{name} accepted {value!r}")
    if isinstance(default, kind):  # the field still takes its own kind of value
        assert adapter.validate_json(json.dumps(default)) == default


ROOT_FIELDS = [(m, name, kind, text) for m in ROOTS for name, f in m.model_fields.items()
               if (kind := _scalar(f.annotation)) is not None for text in HOSTILE_JSON[kind]]


@pytest.mark.parametrize("model,name,kind,text", ROOT_FIELDS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_a_rejection_names_the_field(model: type[BaseModel], name: str, kind: type, text: str) -> None:
    """As Temporal decodes them (validate_json): the error names the field and the rule, never the value."""
    body = json.dumps(VALID[model])[:-1] + ("," if VALID[model] else "") + f'"{name}": {text}}}'
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate_json(body)
    described = describe_validation_error(info.value)
    assert described.split(":")[0].startswith(name), described


@pytest.mark.parametrize("model", ROOTS, ids=lambda m: m.__name__)
def test_the_valid_bases_are_valid(model: type[BaseModel]) -> None:
    model.model_validate_json(json.dumps(VALID[model]))


def test_the_reported_examples() -> None:
    base = VALID[MigrationInput]
    for bad in ({"max_files_per_batch": True}, {"max_files_per_batch": 1.0}, {"import_start_interval_seconds": "1"},
                {"continued": {"phase": "reporting", "zzz": 1}}, {"continued": {"phase": "nowhere"}},
                {"continued": {"batches_planned": -3}}, {"manual_review": 1}):
        with pytest.raises(pydantic.ValidationError):
            MigrationInput.model_validate_json(json.dumps(base | bad))
