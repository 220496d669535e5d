from __future__ import annotations

from worker.logs import REDACTED, redact_phi


def test_phi_keys_are_redacted_at_any_depth() -> None:
    event = {"event": "parsed", "PatientName": "DOE^JANE", "nested": {"patient_id": "123", "ok": 1},
             "rows": [{"PatientBirthDate": "19700101"}], "study_uid": "1.2.3"}
    out = redact_phi(None, "info", event)
    assert out["PatientName"] == REDACTED
    assert out["nested"] == {"patient_id": REDACTED, "ok": 1}
    assert out["rows"][0]["PatientBirthDate"] == REDACTED
    assert out["study_uid"] == "1.2.3"
