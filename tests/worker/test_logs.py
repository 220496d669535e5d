"""The log pipeline (worker/logs.py) and the patient-value scrub set (activities/phi.py), without a server."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import structlog
from temporalio.exceptions import ApplicationError

from activities import phi
from worker.log_context import input_ids, scrubbed_failure
from worker.logs import configure_logging


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Everything logged during the test, as JSON lines; logging is put back as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    logging.captureWarnings(False)
    structlog.reset_defaults()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestScrub:
    def test_a_registered_name_is_scrubbed_in_its_printed_forms(self) -> None:
        with phi.collecting():
            phi.register("CANARYDOE^JOHNATHAN")
            out = phi.scrub("name CANARYDOE^JOHNATHAN / canarydoe johnathan / Johnathan Canarydoe")
        assert "canarydoe" not in out.lower() and "johnathan" not in out.lower(), out

    @pytest.mark.parametrize("value", ["", "A", "M", "12", "abc", "   ", "\0\0\0"])
    def test_values_shorter_than_the_minimum_scrub_nothing(self, value: str) -> None:
        text = "A 12 abc M: parsed 12 files in 3 pages"
        with phi.collecting():
            phi.register(value)
            assert phi.current() == frozenset()
            assert phi.scrub(text) == text

    def test_the_minimum_length_is_four(self) -> None:
        with phi.collecting():
            phi.register("WXYZ")
            assert phi.scrub("id WXYZ!") == "id [phi]!"

    def test_short_values_match_whole_words_only(self) -> None:
        with phi.collecting():
            phi.register("HEAD")
            assert phi.scrub("parse_headers: HEAD, head") == "parse_headers: [phi], [phi]"

    def test_long_values_match_inside_other_text(self) -> None:
        with phi.collecting():
            phi.register("MRN99887766")
            assert phi.scrub("keyXMRN99887766Y") == "keyX[phi]Y"

    @pytest.mark.parametrize("value", ["a.*b+c?(d)", "[x]{2}|y", r"back\slash^", "$^.*", "(((("])
    def test_regex_metacharacters_are_literal(self, value: str) -> None:
        with phi.collecting():
            phi.register(value)
            out = phi.scrub(f"before {value} after, and aXXb nothing else")
        assert value not in out
        assert out.startswith("before ") and out.endswith("after, and aXXb nothing else")

    def test_unicode_values_and_their_latin1_bytes(self) -> None:
        with phi.collecting():
            phi.register("MÜLLER^JÖRG")
            phi.register("ÅSTRÖM^BJØRN".encode("latin-1"))
            out = phi.scrub("müller jörg; Müller^Jörg; åström bjørn")
        assert out == "[phi]; [phi]; [phi]", out

    def test_nothing_is_registered_outside_an_activity(self) -> None:
        phi.register("CANARY-OUTSIDE")
        assert phi.current() == frozenset()

    def test_threads_started_in_context_register_into_the_same_set(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with phi.collecting(), ThreadPoolExecutor(2) as pool:
            list(pool.map(phi.in_context(phi.register), ["CANARY-T1", "CANARY-T2"]))
            assert {"CANARY-T1", "CANARY-T2"} <= phi.current()


class TestPipeline:
    def test_stdlib_extra_fields_are_fields_and_redacted(self, lines: io.StringIO) -> None:
        logging.getLogger("x").warning("plain", extra={"job_id": "j-1", "PatientName": "CANARY^KEY"})
        (line,) = parsed(lines)
        assert line["job_id"] == "j-1" and line["PatientName"] == "[redacted]" and line["event"] == "plain"

    def test_values_are_scrubbed_in_message_fields_and_tracebacks(self, lines: io.StringIO) -> None:
        log = structlog.get_logger("t")
        with phi.collecting():
            phi.register("CANARYVALUE^ONE")
            try:
                raise RuntimeError("bad value 'CANARYVALUE^ONE'")
            except RuntimeError:
                log.exception("failed on CANARYVALUE ONE", detail=["x CANARYVALUE^ONE"])
                logging.getLogger("third").exception("failed on canaryvalue^one")
        text = lines.getvalue()
        assert "canaryvalue" not in text.lower(), text
        first, second = parsed(lines)
        assert "RuntimeError" in first["exception"] and "RuntimeError" in second["exception"]

    def test_a_validation_error_is_named_by_field_and_rule_without_its_input(self, lines: io.StringIO) -> None:
        class Model(pydantic.BaseModel):
            by: str

        try:
            Model.model_validate({"by": 12345678, "CANARY-EXTRA": 1})
        except pydantic.ValidationError:
            logging.getLogger("temporalio.worker").exception("dropping the signal")
        (line,) = parsed(lines)
        assert "12345678" not in lines.getvalue() and "exception" not in line
        assert line["error"].startswith("Model: by: Input should be a valid string"), line

    def test_warnings_and_pydicom_lines_carry_the_bound_ids(self, lines: io.StringIO) -> None:
        with structlog.contextvars.bound_contextvars(workflow_id="wf-1", batch=3):
            warnings.warn("a pydicom-like warning", UserWarning, stacklevel=1)
            logging.getLogger("pydicom").warning("Invalid value for VR")
        warned, logged = parsed(lines)
        assert warned["logger"] == "py.warnings" and "a pydicom-like warning" in warned["event"]
        assert (warned["workflow_id"], warned["batch"]) == ("wf-1", 3)
        assert (logged["logger"], logged["workflow_id"], logged["batch"]) == ("pydicom", "wf-1", 3)

    def test_held_pydicom_lines_are_released_scrubbed_at_debug(self, lines: io.StringIO) -> None:
        with phi.collecting():
            with phi.holding_third_party_logs():
                logging.getLogger("pydicom").warning("Invalid value 'CANARYHELD^NAME' for PN")
                phi.register("CANARYHELD^NAME")  # known only after the warning
            assert phi.held_count() == 1
        (line,) = parsed(lines)
        assert line["level"] == "debug" and "[phi]" in line["event"] and "CANARYHELD" not in line["event"]

    def test_the_sdk_loggers_give_ids_as_fields(self, lines: io.StringIO) -> None:
        logging.getLogger("temporalio.activity").info(
            "hello", extra={"temporal_activity": {"activity_type": "parse_headers", "attempt": 2,
                                                  "workflow_id": "wf", "workflow_run_id": "run"}})
        (line,) = parsed(lines)
        assert {k: line[k] for k in ("activity", "attempt", "workflow_id", "run_id")} == {
            "activity": "parse_headers", "attempt": 2, "workflow_id": "wf", "run_id": "run"}


class TestFailures:
    def test_an_application_error_holding_a_value_is_replaced_keeping_its_type(self) -> None:
        err = ApplicationError("PatientID CANARY-PID-77 is bad", type="InvalidSource", non_retryable=True)
        new = scrubbed_failure(err, frozenset({"CANARY-PID-77"}))
        assert isinstance(new, ApplicationError)
        assert (new.message, new.type, new.non_retryable) == ("PatientID [phi] is bad", "InvalidSource", True)

    def test_a_plain_exception_keeps_its_type_name_and_a_clean_one_is_left_alone(self) -> None:
        new = scrubbed_failure(ValueError("x canary-pid-77"), frozenset({"CANARY-PID-77"}))
        assert isinstance(new, ApplicationError) and (new.message, new.type) == ("x [phi]", "ValueError")
        assert scrubbed_failure(ValueError("clean"), frozenset({"CANARY-PID-77"})) is None

    def test_a_value_in_a_cause_is_found(self) -> None:
        try:
            try:
                raise KeyError("CANARY-PID-77")
            except KeyError as inner:
                raise RuntimeError("outer") from inner
        except RuntimeError as err:
            assert scrubbed_failure(err, frozenset({"CANARY-PID-77"})) is not None

    def test_a_validation_error_is_replaced_by_its_fields_and_rules(self) -> None:
        class Row(pydantic.BaseModel):
            key: str
            size: int

        try:
            Row.model_validate({"key": "QZCANARY/PATIENT/1.dcm", "size": "QZCANARY-SIZE"})
        except pydantic.ValidationError as err:
            new = scrubbed_failure(err, frozenset())
        assert isinstance(new, ApplicationError) and new.type == "ValidationError" and not new.non_retryable
        assert new.message == "Row: size: Input should be a valid integer, unable to parse string as an integer"
        try:
            try:
                Row.model_validate({"key": 1})
            except pydantic.ValidationError as inner:
                raise RuntimeError("reading the manifest failed") from inner
        except RuntimeError as outer:
            new = scrubbed_failure(outer, frozenset())
        assert isinstance(new, ApplicationError) and new.message == "reading the manifest failed"

    def test_ids_from_activity_inputs(self) -> None:
        class Batch(pydantic.BaseModel):
            migration_id: str = "m1"
            batch: int = 4
            part: int | None = None

        class Review(pydantic.BaseModel):
            batch: Batch = Batch()

        class Page(pydantic.BaseModel):
            migration_id: str = "m2"
            page: int = 7

        assert input_ids([Review()]) == {"migration_id": "m1", "batch": 4}
        assert input_ids([Batch(part=2)]) == {"migration_id": "m1", "batch": 4, "part": 2}
        assert input_ids([Page()]) == {"migration_id": "m2", "page": 7}
        assert input_ids([]) == {} and input_ids(["just a string"]) == {}
