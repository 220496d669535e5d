"""The worker registers exactly the activities declared in contracts/activities.py, each as declared.

Workflows call activities through those declarations (name, input type, result type); the worker runs the
implementations of activities/. A rename, a changed input or result type, or an activity registered but never
declared would otherwise only show when a workflow runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from temporalio import activity

import contracts.activities
from tests.support.settings import make_settings
from worker.aws import AwsClients
from worker.registry import build_activities


def _definition(fn: Callable[..., Any]) -> Any:
    # The SDK's own reading of a callable: the name it is called by, and the types the data converter
    # decodes its input and result into.
    return activity._Definition.must_from_callable(fn)


def _declared() -> dict[str, Callable[..., Any]]:
    fns = [v for v in vars(contracts.activities).values()
           if callable(v) and getattr(v, "__module__", None) == contracts.activities.__name__]
    return {_definition(fn).name: fn for fn in fns}


def _registered() -> dict[str, Callable[..., Any]]:
    # Clients are only created here (no request is made): a closed port keeps the test off any network.
    settings = make_settings(s3_endpoint_url="http://127.0.0.1:9",
                        medical_imaging_endpoint_url="http://127.0.0.1:9",
                        eventbridge_endpoint_url="http://127.0.0.1:9", healthlake_endpoint_url="http://127.0.0.1:9")
    fns = build_activities(AwsClients.from_settings(settings), settings)
    by_name = {_definition(fn).name: fn for fn in fns}
    assert len(by_name) == len(fns), "an activity name is registered twice"
    return by_name


DECLARED = _declared()
REGISTERED = _registered()


def test_every_declared_activity_is_registered_and_nothing_else() -> None:
    assert len(DECLARED) == 34
    assert sorted(REGISTERED) == sorted(DECLARED)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_the_implementation_has_the_declared_signature(name: str) -> None:
    declared, registered = _definition(DECLARED[name]), _definition(REGISTERED[name])
    assert registered.arg_types == declared.arg_types
    assert registered.ret_type == declared.ret_type
    assert declared.ret_type is not None and len(declared.arg_types or []) == 1
    # Parameter names too, so that the declaration reads like the implementation.
    assert list(inspect.signature(REGISTERED[name]).parameters) == list(inspect.signature(DECLARED[name]).parameters)


def test_declarations_are_never_run() -> None:
    with pytest.raises(NotImplementedError, match="declaration"):
        DECLARED["parse_headers"](None)
