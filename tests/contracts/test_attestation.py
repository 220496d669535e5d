"""The reviewer attestation (contracts/attestation.py) and its check (the `verify_reviewer` activity), without
servers: what the MAC binds, and every verdict with its reason."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.testing import ActivityEnvironment

from activities.reconcile import ReconcileActivities
from contracts import attestation
from contracts.reconciliation import ReviewerClaim, ReviewerVerdict

KEY = b"k" * 40
DATA = b'{"action": "keep", "reviewer": "alice-sub"}'


def _payload() -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=DATA)


def test_the_mac_binds_key_namespace_identity_and_data() -> None:
    digest = attestation.data_digest(DATA)
    mac = attestation.attestation(KEY, "default", "alice-sub", digest)
    assert attestation.verifies(KEY, "default", "alice-sub", digest, mac)
    assert mac == attestation.attestation(KEY, "default", "alice-sub", hashlib.sha256(DATA).digest())
    for key, namespace, identity, data in ((b"x" * 40, "default", "alice-sub", DATA),
                                           (KEY, "other", "alice-sub", DATA),
                                           (KEY, "default", "bob-sub", DATA),
                                           (KEY, "default", "alice-sub", DATA + b" "),
                                           # the separator keeps fields apart: "de" + "fault..." is not "default"
                                           (KEY, "de", "faultalice-sub", DATA)):
        assert not attestation.verifies(key, namespace, identity, attestation.data_digest(data), mac)


def test_attest_replaces_what_a_caller_brought_and_claimed_reads_it_back() -> None:
    payload = _payload()
    payload.metadata[attestation.META_ATTESTED_BY] = b"root"
    payload.metadata[attestation.META_ATTESTATION] = b"00" * 32
    attestation.attest(payload, KEY, "default", "alice-sub")
    identity, mac = attestation.claimed(payload)
    assert identity == "alice-sub" and mac is not None
    assert attestation.verifies(KEY, "default", identity, attestation.data_digest(payload.data), mac)
    attestation.strip(payload)
    assert attestation.claimed(payload) == (None, None) and dict(payload.metadata) == {"encoding": b"json/plain"}
    payload.metadata[attestation.META_ATTESTED_BY] = b"\xff\xfe"  # not text: no claim
    assert attestation.claimed(payload)[0] is None


def test_reviewer_lists_are_trimmed_and_deduplicated() -> None:
    assert attestation.parse_reviewers(" alice-sub, ,bob,alice-sub ,") == ("alice-sub", "bob")
    assert attestation.parse_reviewers("") == ()


def _verify(claim: ReviewerClaim, **kwargs: object) -> ReviewerVerdict:
    acts = ReconcileActivities(None, None, None, fingerprint_key=b"f" * 16, **kwargs)  # type: ignore[arg-type]
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, namespace="default")
    return env.run(acts.verify_reviewer, claim)


def _claim(identity: str = "alice-sub", key: bytes = KEY, namespace: str = "default") -> ReviewerClaim:
    digest = attestation.data_digest(DATA)
    return ReviewerClaim(identity=identity, attestation=attestation.attestation(key, namespace, identity, digest),
                         payload_sha256=digest.hex())


@pytest.mark.parametrize(("claim", "settings", "verdict"), [
    (_claim(), {"attestation_key": KEY, "reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=True, reviewer="alice-sub")),
    (ReviewerClaim(payload_sha256="00"), {"attestation_key": KEY, "reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=False, error="not attested: decide through the codec server (Temporal UI / temporal "
                                           "CLI with --codec-endpoint)")),
    (_claim(), {"reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=False, error="the worker has no HIMIG_REVIEWER_ATTESTATION_KEY: no decision can be "
                                           "verified")),
    (_claim(key=b"y" * 40), {"attestation_key": KEY, "reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=False, error="attestation does not verify")),
    (_claim(namespace="elsewhere"), {"attestation_key": KEY, "reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=False, error="attestation does not verify")),
    (_claim().model_copy(update={"payload_sha256": "not hex"}), {"attestation_key": KEY, "reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=False, error="attestation does not verify")),
    (_claim(), {"attestation_key": KEY},
     ReviewerVerdict(accepted=False, reviewer="alice-sub",
                     error="HIMIG_RECONCILIATION_REVIEWERS is empty: nobody may decide reconciliations")),
    (_claim("mallory"), {"attestation_key": KEY, "reviewers": ("alice-sub",)},
     ReviewerVerdict(accepted=False, reviewer="mallory", error="'mallory' is not in HIMIG_RECONCILIATION_REVIEWERS")),
], ids=["accepted", "not-attested", "no-key-on-the-worker", "another-key", "another-namespace", "bad-digest",
        "empty-list", "not-listed"])
def test_verify_reviewer_verdicts(claim: ReviewerClaim, settings: dict[str, object],
                                  verdict: ReviewerVerdict) -> None:
    assert _verify(claim, **settings) == verdict
