"""Property-based fuzzing of everything a caller or a queue can send: workflow inputs, signal and update arguments
(validated as Temporal decodes them, from JSON), and SQS message bodies (S3 notifications, EventBridge events).

Nothing crashes: a model either validates or raises `ValidationError`, and every rejection names the field (a
location, or for a rule across fields a message naming them); a message body either parses or raises the
listener's own error, which the listener records.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contracts.errors import describe_validation_error
from contracts.jobevents import MalformedJobEvent, parse_job_event
from tests.contracts.test_strict_inputs import MODELS, ROOTS, VALID
from worker.listener import MalformedMessage, ParsedBody, parse_event_body

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def _dumps(value: Any) -> str:
    # Python's JSON writer spells non-finite floats NaN / Infinity, as a careless sender's might.
    return json.dumps(value, allow_nan=True)


def _names(model: type[BaseModel]) -> set[str]:
    return {name for m in MODELS for name in m.model_fields} | set(model.model_fields)


@st.composite
def altered(draw: st.DrawFn) -> tuple[type[BaseModel], str]:
    model = draw(st.sampled_from(ROOTS))
    body = dict(VALID[model])
    keys = st.sampled_from(sorted(model.model_fields)) | st.text(max_size=12)
    for key, value in draw(st.dictionaries(keys, JSON, max_size=4)).items():
        body[key] = value
    return model, _dumps(body)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(altered())
def test_an_altered_input_validates_or_is_rejected_naming_the_field(case: tuple[type[BaseModel], str]) -> None:
    model, text = case
    try:
        model.model_validate_json(text)
    except pydantic.ValidationError as err:
        described = describe_validation_error(err)
        names = _names(model) | set(json.loads(text))
        for e in err.errors(include_input=False):
            where = [str(x) for x in e["loc"]]
            assert where or any(n in e["msg"] for n in names), (model.__name__, described)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ROOTS), JSON)
def test_any_json_value_as_a_whole_input_is_validated_or_rejected(model: type[BaseModel], value: Any) -> None:
    try:
        model.model_validate_json(_dumps(value))
    except pydantic.ValidationError as err:
        assert describe_validation_error(err)


def _envelopes() -> st.SearchStrategy[Any]:
    """S3 notifications and EventBridge events with fuzzed parts, and arbitrary JSON."""
    record = st.fixed_dictionaries({"eventName": st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete"]) | JSON,
                                    "eventTime": st.sampled_from(["2026-12-01T00:00:00.000Z"]) | JSON,
                                    "s3": st.fixed_dictionaries({"bucket": st.fixed_dictionaries({"name": JSON}),
                                                                 "object": JSON}) | JSON})
    s3_notification = st.fixed_dictionaries({"Records": st.lists(record | JSON, max_size=4) | JSON})
    eventbridge = st.fixed_dictionaries({
        "source": st.sampled_from(["aws.s3", "aws.medical-imaging"]) | JSON,
        "detail-type": st.sampled_from(["Object Created", "Import Job Completed", "Import Job Failed"]) | JSON,
        "time": JSON, "detail": st.fixed_dictionaries({"jobId": JSON, "jobStatus": JSON, "datastoreId": JSON,
                                                        "outputS3Uri": JSON, "bucket": JSON, "object": JSON}) | JSON})
    return s3_notification | eventbridge | JSON


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_envelopes() | st.text(max_size=200))
# Found by this test: a list as detail-type made parse_job_event raise TypeError (unhashable) in the listener.
@example({"source": "aws.medical-imaging", "detail-type": [], "time": None, "detail": None})
def test_any_sqs_body_is_parsed_or_refused_by_the_listeners(body: Any) -> None:
    text = body if isinstance(body, str) else _dumps(body)
    try:
        parsed = parse_event_body(text)
    except MalformedMessage as err:
        assert str(err)
    else:
        assert isinstance(parsed, ParsedBody)
        assert parsed.skipped >= 0 and parsed.malformed >= 0
    try:
        parse_job_event(text)
    except MalformedJobEvent as err:
        assert str(err)
