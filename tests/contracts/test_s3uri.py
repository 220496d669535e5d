from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.s3uri import S3Location, parse_s3_uri


class TestParseS3Uri:
    def test_splits_bucket_and_key(self) -> None:
        assert parse_s3_uri("s3://my-bucket/a/b/") == S3Location("my-bucket", "a/b/")
        assert parse_s3_uri("s3://my-bucket") == S3Location("my-bucket", "")

    @pytest.mark.parametrize("uri", ["http://b/x", "s3://A/x", "s3://ab/x", "s3://bucket/a//b", "s3://bucket/../x",
                                     "s3://bucket/" + "x" * 1100, ""])
    def test_rejects_with_the_field_name(self, uri: str) -> None:
        with pytest.raises(ValueError, match=r"^source_s3_uri: "):
            parse_s3_uri(uri, field="source_s3_uri")

    def test_join_has_single_slashes(self) -> None:
        assert S3Location("b", "p/").join("x", "/y/").key == "p/x/y"
        assert S3Location("b", "").join("x").key == "x"

    @given(st.text(max_size=80))
    def test_never_raises_anything_but_value_error(self, text: str) -> None:
        with contextlib.suppress(ValueError):
            parse_s3_uri("s3://" + text)
