"""The search attributes are declared once (contracts/search.py); every place that registers them agrees."""

from __future__ import annotations

from pathlib import Path

from contracts import search
from devstack.stack import Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]


def test_names_are_keywords_without_patient_data_in_their_names() -> None:
    assert [k.name for k in search.ALL] == ["HimigMigrationId", "HimigState", "HimigDatastoreId"]
    assert search.dev_server_args() == ["--search-attribute", "HimigMigrationId=Keyword",
                                        "--search-attribute", "HimigState=Keyword",
                                        "--search-attribute", "HimigDatastoreId=Keyword"]


def test_the_local_stack_registers_every_attribute(tmp_path: Path) -> None:
    argv = Stack(StackConfig(), cwd=tmp_path).spec("temporal").argv
    for key in search.ALL:
        assert f"{key.name}=Keyword" in argv


def test_production_docs_and_compose_register_every_attribute() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in search.operator_commands():
        assert command in readme
    compose = (ROOT / "docker-compose.yml").read_text()
    for key in search.ALL:
        assert key.name in compose
