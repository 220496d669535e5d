"""Hostile connector configurations: every bad value is rejected with the field name and the reason."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts.migration import MigrationInput
from contracts.sources import DicomwebSource, DimseSource, LocalSource, is_uid

BASE = {"source_s3_uri": "s3://land/in/", "datastore_id": "a" * 32, "work_s3_uri": "s3://work/runs/"}
DIMSE = {"kind": "dimse", "host": "pacs.example", "port": 104, "called_ae": "PACS", "calling_ae": "HIMIG"}


def _error(connector: Any, **extra: Any) -> str:
    with pytest.raises(ValidationError) as info:
        MigrationInput.model_validate({**BASE, "source_connector": connector, **extra})
    return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())


def test_valid_connectors_parse_to_their_kind() -> None:
    m = MigrationInput.model_validate({**BASE, "source_connector": {"kind": "local", "path": "/data/export"}})
    assert isinstance(m.source_connector, LocalSource)
    m = MigrationInput.model_validate({**BASE, "source_connector": {
        "kind": "dicomweb", "url": "https://pacs:8042/dicom-web/", "study_uids": ["1.2.3", "1.2.3"]}})
    assert isinstance(m.source_connector, DicomwebSource)
    assert m.source_connector.url == "https://pacs:8042/dicom-web"  # trailing slash dropped
    assert m.source_connector.study_uids == ["1.2.3"]  # duplicates dropped, order kept
    m = MigrationInput.model_validate({**BASE, "source_connector": DIMSE})
    assert isinstance(m.source_connector, DimseSource) and m.source_connector.port == 104
    assert MigrationInput.model_validate(BASE).source_connector is None


@pytest.mark.parametrize(("connector", "needle"), [
    ({"kind": "ftp", "path": "/x"}, "source_connector: Input tag 'ftp' found using 'kind' does not match"),
    ({"path": "/x"}, "Unable to extract tag using discriminator 'kind'"),
    ({"kind": "local", "path": "/x", "recursive": True}, "source_connector.local.recursive: Extra inputs"),
    ({"kind": "local", "path": "relative/dir"}, "source_connector.local.path: Value error, must be an absolute path"),
    ({"kind": "local", "path": "/data/../etc"}, "source_connector.local.path: Value error, must not contain '..'"),
    ({"kind": "local", "path": "/data/\x00x"}, "source_connector.local.path: Value error, must not contain NUL"),
    ({"kind": "local", "path": ""}, "source_connector.local.path: String should have at least 1 character"),
    ({"kind": "dicomweb", "url": "file:///etc/passwd"}, "source_connector.dicomweb.url: Value error, must be an http"),
    ({"kind": "dicomweb", "url": "ftp://pacs/dicom-web"}, "source_connector.dicomweb.url: Value error, must be an http"),
    ({"kind": "dicomweb", "url": "http://user:pw@pacs/dw"}, "source_connector.dicomweb.url: Value error, must not carry credentials"),
    ({"kind": "dicomweb", "url": "http://pacs:99999/dw"}, "source_connector.dicomweb.url: Value error, not a valid URL"),
    ({"kind": "dicomweb", "url": "http://pacs:0/dw"}, "source_connector.dicomweb.url: Value error, port must be between"),
    ({"kind": "dicomweb", "url": "http:///dw"}, "source_connector.dicomweb.url: Value error, must name a host"),
    ({"kind": "dicomweb", "url": "http://pacs/dw?x=1"}, "source_connector.dicomweb.url: Value error, must not have a query"),
    ({"kind": "dicomweb", "url": "http://pacs/d w"}, "source_connector.dicomweb.url: Value error, must not contain whitespace"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "page_size": 0}, "source_connector.dicomweb.page_size: Input should be greater"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "study_uids": []}, "source_connector.dicomweb.study_uids: Value error, must list"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "study_uids": ["1.02.3"]}, "study_uids: Value error, item 0 is not a DICOM UID"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "study_uids": ["1.2", "../../x"]}, "study_uids: Value error, item 1 is not"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "study_uids": ["1." * 40 + "1"]}, "study_uids: Value error, item 0"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "password": "x"}, "source_connector.dicomweb.password: Extra inputs"),
    ({**DIMSE, "port": 0}, "source_connector.dimse.port: Input should be greater than or equal to 1"),
    ({**DIMSE, "port": 65536}, "source_connector.dimse.port: Input should be less than or equal to 65535"),
    ({**DIMSE, "port": "104x"}, "source_connector.dimse.port: Input should be a valid integer"),
    ({**DIMSE, "called_ae": "A" * 17}, "source_connector.dimse.called_ae: String should match pattern"),
    ({**DIMSE, "calling_ae": "BAD\\AE"}, "source_connector.dimse.calling_ae: String should match pattern"),
    ({**DIMSE, "calling_ae": " LEAD"}, "source_connector.dimse.calling_ae: String should match pattern"),
    ({**DIMSE, "calling_ae": "X\nY"}, "source_connector.dimse.calling_ae: String should match pattern"),
    ({**DIMSE, "called_ae": ""}, "source_connector.dimse.called_ae: String should match pattern"),
    ({**DIMSE, "host": "pacs/evil"}, "source_connector.dimse.host: Value error, is not a valid host name"),
    ({**DIMSE, "host": "user@pacs"}, "source_connector.dimse.host: Value error, is not a valid host name"),
    ({**DIMSE, "host": "::::"}, "source_connector.dimse.host: Value error, is not a valid IPv6 literal"),
    ({**DIMSE, "host": "[1:2"}, "source_connector.dimse.host: Value error, is not a valid IPv6 literal"),
    ({**DIMSE, "host": "[10.0.0.1]"}, "source_connector.dimse.host: Value error, is not a valid IPv6 literal"),
    ({**DIMSE, "host": "pacs:104"}, "source_connector.dimse.host: Value error, is not a valid IPv6 literal"),
    ({**DIMSE, "host": "1.2.3.4.5"}, "source_connector.dimse.host: Value error, is not a valid IPv4 address"),
    ({**DIMSE, "host": "999.1.1.1"}, "source_connector.dimse.host: Value error, is not a valid IPv4 address"),
    ({**DIMSE, "host": "01.2.3.4"}, "source_connector.dimse.host: Value error, is not a valid IPv4 address"),
    ({**DIMSE, "host": "123-456"}, "source_connector.dimse.host: Value error, is not a valid host name (a host name needs"),
    ({**DIMSE, "host": "-pacs"}, "source_connector.dimse.host: Value error, is not a valid host name"),
    ({**DIMSE, "host": "pacs..local"}, "source_connector.dimse.host: Value error, is not a valid host name"),
    ({**DIMSE, "host": "a" * 64 + ".local"}, "source_connector.dimse.host: Value error, is not a valid host name"),
    ({**DIMSE, "host": "pacs local"}, "source_connector.dimse.host: Value error, is not a valid host name"),
    ({**DIMSE, "host": "."}, "source_connector.dimse.host: Value error, is not a valid IPv4"),
    ({k: v for k, v in DIMSE.items() if k != "calling_ae"}, "source_connector.dimse.calling_ae: Field required"),
    ({**DIMSE, "port": True}, "source_connector.dimse.port: Input should be a valid integer"),
    ({**DIMSE, "retrieve": "MOVE"}, "source_connector.dimse.retrieve: Input should be 'get' or 'move'"),
    ({**DIMSE, "retrieve": "store"}, "source_connector.dimse.retrieve: Input should be 'get' or 'move'"),
    ({**DIMSE, "parallel": 0}, "source_connector.dimse.parallel: Input should be greater than or equal to 1"),
    ({**DIMSE, "parallel": 33}, "source_connector.dimse.parallel: Input should be less than or equal to 32"),
    ({**DIMSE, "parallel": True}, "source_connector.dimse.parallel: Input should be a valid integer"),
    ({**DIMSE, "parallel": "4"}, "source_connector.dimse.parallel: Input should be a valid integer"),
    ({**DIMSE, "result_cap": 0}, "source_connector.dimse.result_cap: Input should be greater than or equal to 1"),
    ({**DIMSE, "result_cap": False}, "source_connector.dimse.result_cap: Input should be a valid integer"),
    ({**DIMSE, "result_cap": 500.0}, "source_connector.dimse.result_cap: Input should be a valid integer"),
    ({**DIMSE, "study_date_from": "2020-1-5"}, "source_connector.dimse.study_date_from: Value error, must be a date written YYYY-MM-DD"),
    ({**DIMSE, "study_date_from": "20200105"}, "study_date_from: Value error, must be a date written YYYY-MM-DD"),
    ({**DIMSE, "study_date_to": "2020-02-30"}, "source_connector.dimse.study_date_to: Value error, is not a calendar date"),
    ({**DIMSE, "study_date_to": "1700-01-01"}, "study_date_to: Value error, must not be before 1850"),
    ({**DIMSE, "study_date_to": 20200101}, "source_connector.dimse.study_date_to: Input should be a valid string"),
    ({**DIMSE, "study_date_from": "2020-01-01\n"}, "study_date_from: Value error, must be a date written YYYY-MM-DD"),
    ({**DIMSE, "study_date_from": "2021-01-01", "study_date_to": "2020-12-31"},
     "source_connector.dimse: Value error, study_date_from must not be after study_date_to"),
    ({**DIMSE, "study_uids": ["1.2"], "modalities": ["CT"]},
     "source_connector.dimse: Value error, study_uids names the studies; it cannot be combined"),
    ({**DIMSE, "modalities": []}, "source_connector.dimse.modalities: Value error, must list at least one modality"),
    ({**DIMSE, "modalities": ["ct"]}, "source_connector.dimse.modalities.0: String should match pattern"),
    ({**DIMSE, "modalities": ["CT\\MR"]}, "source_connector.dimse.modalities.0: String should match pattern"),
    ({**DIMSE, "modalities": ["CT*"]}, "source_connector.dimse.modalities.0: String should match pattern"),
    ({**DIMSE, "modalities": ["A" * 17]}, "source_connector.dimse.modalities.0: String should match pattern"),
    ({**DIMSE, "modalities": "CT"}, "source_connector.dimse.modalities: Input should be a valid list"),
    ({**DIMSE, "modalities": ["CT"] * 33}, "source_connector.dimse.modalities: List should have at most 32 items"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "page_size": True}, "source_connector.dicomweb.page_size: Input should be a valid integer"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "result_cap": -1}, "source_connector.dicomweb.result_cap: Input should be greater"),
    ({"kind": "dicomweb", "url": "http://pacs/dw", "retrieve": "move"}, "source_connector.dicomweb.retrieve: Extra inputs"),
])
def test_hostile_connector_configs_name_the_field(connector: Any, needle: str) -> None:
    assert needle in _error(connector)


def test_study_search_fields_parse() -> None:
    ok = DimseSource.model_validate({**DIMSE, "study_date_from": "2020-01-01", "study_date_to": "2020-01-01",
                                     "modalities": ["CT", "MR", "CT"], "result_cap": 500, "retrieve": "move",
                                     "parallel": 4})
    assert (ok.modalities, ok.result_cap, ok.retrieve, ok.parallel) == (["CT", "MR"], 500, "move", 4)
    plain = DimseSource.model_validate(DIMSE)
    assert (plain.retrieve, plain.parallel, plain.result_cap, plain.modalities) == ("get", 1, None, None)
    # JSON (how workflow input arrives) is just as strict: no bool or string for a number.
    assert DimseSource.model_validate_json('{"kind":"dimse","host":"p","port":104,"called_ae":"A","calling_ae":"B",'
                                           '"result_cap":3}').result_cap == 3
    with pytest.raises(ValidationError, match="result_cap"):
        DimseSource.model_validate_json('{"kind":"dimse","host":"p","port":104,"called_ae":"A","calling_ae":"B",'
                                        '"result_cap":"3"}')


def test_connector_and_manifest_are_exclusive() -> None:
    message = _error({"kind": "local", "path": "/data"}, source_manifest_uri="s3://land/m.ndjson")
    assert "source_connector and source_manifest_uri are exclusive" in message


@pytest.mark.parametrize(("host", "stored"), [
    ("pacs", "pacs"), ("pacs-1.hospital.example", "pacs-1.hospital.example"), ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"), ("[::1]", "::1"), ("[fe80::1]", "fe80::1"), ("1e100.net", "1e100.net"), ("pacs.", "pacs."),
])
def test_valid_dimse_hosts(host: str, stored: str) -> None:
    assert DimseSource.model_validate({**DIMSE, "host": host}).host == stored


def test_sixteen_character_ae_titles_with_inner_spaces_are_valid() -> None:
    ok = DimseSource.model_validate({**DIMSE, "called_ae": "A" * 16, "calling_ae": "MY AE"})
    assert ok.called_ae == "A" * 16


@pytest.mark.parametrize(("value", "valid"), [
    ("1.2.840.10008.1.2", True), ("0", True), ("1.0.3", True), ("1.02", False), ("1..2", False), ("1.2.", False),
    ("", False), ("1.2a", False), ("1." * 32 + "1", False), ("1" * 64, True), ("1" * 65, False),
])
def test_uid_syntax(value: str, valid: bool) -> None:
    assert is_uid(value) is valid
