"""`himig approve` end to end: a promote that first corrects the metadata (`--update`, the workflow's
`update_first`), a second decision on the finished reconciliation, and hostile `--update` entries.

A real conflict on the emulator (two imports of one series with different PatientIDs), a real
ReconciliationWorkflow on the dev server and an in-process worker (fixtures of test_reconciliation).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.workflows.test_reconciliation import _get, bus, mi, recon_worker, start  # noqa: F401 (fixtures)

CORRECTED = "SYNTH-FIXED-3"  # synthetic, like every identifier in the test corpus


def _metadata(mi: Any, datastore_id: str, set_id: str) -> dict[str, Any]:  # noqa: F811
    body = mi.get_image_set_metadata(datastoreId=datastore_id, imageSetId=set_id)["imageSetMetadataBlob"]
    doc: dict[str, Any] = json.loads(gzip.decompress(body.read()))
    return doc


async def _himig(client: Any, *args: str) -> Any:
    env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host}
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    assert isinstance(result.exception, SystemExit | None), result.exception
    return result


async def test_promote_with_a_metadata_correction_then_a_late_second_decision(
        client: Any, start: Any, mi: Any, datastore_id: str) -> None:  # noqa: F811
    recon = await start()
    await recon.wait_state("awaiting_decision")

    result = await _himig(client, "approve", recon.handle.id, "--action", "promote", "--reason", "id corrected",
                          "--update", f"Patient.PatientID={CORRECTED}")
    assert result.exit_code == 0, result.output
    assert CORRECTED not in result.output  # the value is sent, sealed, and never printed back
    outcome = await recon.handle.result()
    assert outcome.state == "promoted" and outcome.promoted_image_set_id
    promoted = await asyncio.to_thread(_get, mi, datastore_id, outcome.promoted_image_set_id, "ACTIVE")
    assert promoted["isPrimary"] is True
    doc = await asyncio.to_thread(_metadata, mi, datastore_id, outcome.promoted_image_set_id)
    assert doc["Patient"]["DICOM"]["PatientID"] == CORRECTED
    [record] = (await recon.status()).decisions
    assert record.accepted and record.updated_attributes == ["Patient.PatientID"]
    assert CORRECTED not in (await recon.status()).model_dump_json()  # names only in the query answer

    shown = await _himig(client, "status", recon.handle.id)
    assert shown.exit_code == 0, shown.output
    flat = " ".join(shown.output.split())
    assert f"reconciliation {recon.handle.id} — promoted" in flat and "Patient.PatientID *" in flat
    assert outcome.promoted_image_set_id in flat
    assert CORRECTED not in shown.output and "SYNTH-OLD-7" not in shown.output and "SYNTH-NEW-9" not in shown.output

    late = await _himig(client, "approve", recon.handle.id, "--action", "keep")
    assert late.exit_code == 1
    flat = " ".join(late.output.split())
    assert f"reconciliation '{recon.handle.id}' has finished (it is COMPLETED, state promoted)" in flat
    assert "nothing left to decide" in flat and "no reconciliation with id" not in flat


@pytest.mark.parametrize("args,needle", [
    (["--action", "keep", "--update", "Patient.PatientID=X"], "update_first is only allowed with action 'promote'"),
    (["--action", "promote", "--update", "PatientID=SECRET-VALUE"], "--update #1: expected LEVEL.KEYWORD=VALUE"),
    (["--action", "promote", "--update", "Series.Modality=SECRET-VALUE"], "--update #1: the level must be one of"),
    (["--action", "promote", "--update", "Patient.Patient ID=SECRET-VALUE"], "must be a DICOM keyword"),
    (["--action", "promote", "--update", "Patient.PatientID=A", "--update", "Patient.PatientID=SECRET-VALUE"],
     "Patient.PatientID is given twice"),
    (["--action", "promote", "--update", "no-equals-sign"], "--update #1: expected"),
    (["--action", "PROMOTE!"], "--action"),
    (["--action", ""], "--action"),
])
def test_hostile_decisions_are_refused_before_anything_is_sent(args: list[str], needle: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing listens: nothing could be sent
    result = CliRunner().invoke(app, ["approve", "recon-x", *args])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert needle in flat and "cannot reach Temporal" not in flat
    assert "SECRET-VALUE" not in result.output  # a typed value (patient data) is never echoed
