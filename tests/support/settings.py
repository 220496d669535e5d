"""Settings for tests: the values a deployment must provide (production has no defaults for them), in one place.

`TEST_ENV` is what the local stack would put in the environment; tests/conftest.py exports it for the whole
session, so workers and `himig` started as subprocesses find it too. `make_settings` builds `Settings` with it.
"""

from __future__ import annotations

from typing import Any

from worker.settings import Settings

ACCOUNT = "000000000000"
FINGERPRINT_KEY = "test-fingerprint-key-not-a-secret"
TEST_VALUES: dict[str, Any] = {
    "data_access_role_arn": f"arn:aws:iam::{ACCOUNT}:role/HealthImagingImportRole",
    "healthlake_data_access_role_arn": f"arn:aws:iam::{ACCOUNT}:role/HealthLakeImportRole",
    "healthlake_kms_key_id": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-0000-0000-000000000000",
    "fingerprint_key": FINGERPRINT_KEY,
}
TEST_ENV = {f"HIMIG_{name.upper()}": value for name, value in TEST_VALUES.items()}


def make_settings(**overrides: Any) -> Settings:
    """`Settings` with the test values (overridable) and no `.env`."""
    return Settings(_env_file=None, **{**TEST_VALUES, **overrides})
