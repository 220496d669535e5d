"""FHIR R4 resource checks for the HealthLake subset, at the three import validation levels.

``fhir.resources`` 8.3 ships R4B (and R5/STU3) models but no plain R4 package. R4B is a technical correction of R4
with the same structure for the resources this project writes (ImagingStudy, Patient, Endpoint...), so the R4B
models stand in for R4; the resource types R4B *added* are rejected as unknown to R4 (see :data:`R4B_ONLY`).

What each level checks (what the emulator can tell apart; AWS does not publish the exact rule sets):

``minimal``
    The line is a JSON object with a known R4 ``resourceType`` and a valid FHIR ``id``. Nothing else.
``structure-only``
    ``minimal`` plus the base R4 structure, parsed with the R4B models: unknown elements, wrong JSON types
    (``"numberOfSeries": "x"``), malformed primitives (dates, ids, uris...), choice-type conflicts. Missing
    required elements (cardinality ``1..``) and value sets are *not* checked.
``strict``
    ``structure-only`` plus required elements and the required-binding value sets the models carry
    (``ImagingStudy.status``, ``Patient.gender``, ``Endpoint.status``...). Value sets are checked only once the
    structure is valid (they are read from the parsed model). Profiles in ``meta.profile`` and invariants
    (FHIRPath constraints) are not evaluated.

Messages never contain element *values* (they can be patient data), only element paths and rule names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

LEVELS = ("strict", "structure-only", "minimal")
FHIR_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE_NAME_RE = re.compile(r"[A-Z][A-Za-z]{0,63}")

# Resource types introduced by R4B: they do not exist in R4, which is all HealthLake stores.
R4B_ONLY = frozenset({
    "AdministrableProductDefinition", "Citation", "ClinicalUseDefinition", "EvidenceReport", "Ingredient",
    "ManufacturedItemDefinition", "MedicinalProductDefinition", "NutritionProduct", "PackagedProductDefinition",
    "RegulatedAuthorization", "SubscriptionStatus", "SubscriptionTopic",
    # abstract base types, never instances
    "Resource", "DomainResource",
})

_REQUIRED_TYPES = ("missing", "model_field_validation.missing")


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue. ``code`` is from the FHIR issue-type value set."""

    severity: str
    code: str
    diagnostics: str
    expression: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome; an empty list becomes the usual single informational "All OK" issue."""
    if not issues:
        issues = [Issue("information", "informational", "All OK")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)


@cache
def resource_class(resource_type: str) -> type[BaseModel] | None:
    """The R4B model class of an R4 resource type, or None (unknown type, a datatype name, or R4B-only)."""
    if not _TYPE_NAME_RE.fullmatch(resource_type) or resource_type in R4B_ONLY:
        return None
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Resource) else None


def shown_type(value: Any) -> str:
    """A resource type safe to echo in a message (a well-formed type name, or a placeholder)."""
    return value if isinstance(value, str) and _TYPE_NAME_RE.fullmatch(value) else "<invalid>"


def parse_json(raw: bytes) -> tuple[Any, list[Issue]]:
    """Decode one resource's JSON text. Returns the value (None when undecodable) and any issues."""
    try:
        return json.loads(raw), []
    except UnicodeDecodeError:
        return None, [Issue("error", "structure", "Content is not valid UTF-8")]
    except json.JSONDecodeError as exc:
        # Position only: the message of JSONDecodeError does not quote the content, but keep it minimal anyway.
        return None, [Issue("error", "structure", f"Invalid JSON at line {exc.lineno} column {exc.colno}")]


def check_resource(doc: Any, level: str, require_id: bool = True) -> list[Issue]:
    """Validate a decoded JSON value as an R4 resource at ``level``; returns the issues (empty = valid).

    ``require_id``: imports need an id (the resource is stored under it); ``$validate`` for a create does not.
    """
    if not isinstance(doc, dict):
        return [Issue("error", "structure", "A FHIR resource must be a JSON object")]
    resource_type = doc.get("resourceType")
    if resource_type is None:
        return [Issue("error", "required", "Element 'resourceType' is required", "resourceType")]
    if not isinstance(resource_type, str):
        return [Issue("error", "structure", "Element 'resourceType' must be a string", "resourceType")]
    cls = resource_class(resource_type)
    if cls is None:
        return [Issue("error", "not-supported", f"Unknown FHIR R4 resource type '{shown_type(resource_type)}'",
                      "resourceType")]
    rid = doc.get("id")
    if rid is None and require_id:
        return [Issue("error", "required", f"Element '{resource_type}.id' is required", f"{resource_type}.id")]
    if rid is not None and (not isinstance(rid, str) or not FHIR_ID_RE.fullmatch(rid)):
        return [Issue("error", "value", f"Element '{resource_type}.id' is not a valid FHIR id "
                                        "([A-Za-z0-9-.]{1,64})", f"{resource_type}.id")]
    if level == "minimal":
        return []
    issues: list[Issue] = []
    model: BaseModel | None = None
    try:
        model = cls.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            required = err["type"] in _REQUIRED_TYPES
            if required and level != "strict":
                continue  # structure-only: cardinality is a conformance rule, not structure
            issues.append(_issue_from_pydantic(resource_type, err))
    except (ValueError, TypeError) as exc:  # model-level validators may raise plain errors
        issues.append(Issue("error", "structure", f"Resource could not be parsed ({type(exc).__name__})"))
    if level == "strict" and model is not None:
        _check_value_sets(model, resource_type, issues)
    return issues


def _path(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _issue_from_pydantic(resource_type: str, err: Any) -> Issue:
    path = _path(resource_type, tuple(err.get("loc", ())))
    kind = err["type"]
    if kind in _REQUIRED_TYPES:
        return Issue("error", "required", f"Element '{path}' is required", path)
    if kind == "extra_forbidden":
        return Issue("error", "structure", f"Unknown element '{path}'", path)
    message = str(err.get("msg", "invalid"))
    value = err.get("input")
    # Some validators quote the offending value in their message; never echo element values.
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value) and len(str(value)) > 2:
        message = message.replace(str(value), "<value>")
    code = "structure" if kind.endswith(("_type", "_parsing")) or kind in ("model_type", "list_type") else "value"
    return Issue("error", code, f"Invalid element '{path}': {message}", path)


def _check_value_sets(model: BaseModel, path: str, issues: list[Issue]) -> None:
    """Required-binding codes: the R4B models list them as ``enum_values`` but do not enforce them."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name, None)
        if value is None:
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        element = f"{path}.{field.alias or name}"
        enum = extra.get("enum_values")
        items = value if isinstance(value, list) else [value]
        if isinstance(enum, list) and enum:
            for i, item in enumerate(items):
                if isinstance(item, str) and item not in enum:
                    where = f"{element}[{i}]" if isinstance(value, list) else element
                    issues.append(Issue("error", "code-invalid",
                                        f"Element '{where}' has a code outside its required value set "
                                        f"({' | '.join(str(e) for e in enum)})", where))
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                _check_value_sets(item, f"{element}[{i}]" if isinstance(value, list) else element, issues)


def identifiers(doc: dict[str, Any]) -> list[tuple[str | None, str]]:
    """``(system, value)`` of each ``identifier`` entry with a string value (for ``?identifier=`` search)."""
    out: list[tuple[str | None, str]] = []
    items = doc.get("identifier")
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return out
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("value"), str):
            system = item.get("system")
            out.append((system if isinstance(system, str) else None, item["value"]))
    return out
