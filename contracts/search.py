"""Temporal search attributes: the one list used by the workflows (upserts), the CLI (`himig list`) and every
place that starts a Temporal server (the local stack, the test fixture, the benchmark) or documents how to
register them on a production namespace.

Values are workflow ids, data store ids, import job ids and state names only: search attributes are stored
unencrypted (no payload codec applies), so they must never carry patient data.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

MIGRATION_ID = SearchAttributeKey.for_keyword("HimigMigrationId")
STATE = SearchAttributeKey.for_keyword("HimigState")
DATASTORE_ID = SearchAttributeKey.for_keyword("HimigDatastoreId")

ALL = (MIGRATION_ID, STATE, DATASTORE_ID)


def dev_server_args() -> list[str]:
    """``--search-attribute NAME=Keyword`` for ``temporal server start-dev``."""
    args: list[str] = []
    for key in ALL:
        args += ["--search-attribute", f"{key.name}=Keyword"]
    return args


def operator_commands(namespace: str = "default") -> list[str]:
    """The ``temporal operator search-attribute create`` commands for a production namespace."""
    return [f"temporal operator search-attribute create --namespace {namespace} --name {key.name} --type Keyword"
            for key in ALL]
