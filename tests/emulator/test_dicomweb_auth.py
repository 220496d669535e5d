"""DICOMweb authentication: SigV4 verified against the emulator's credentials table, OIDC bearer tokens from a real local issuer, and the off switch.

The emulator under test fetches the issuer's JWKS over HTTP like a real deployment would; every hostile token
must end in 401/403 in the AWS shape, never in a crash, and must leave the data untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from dicomweb_client.api import DICOMwebClient
from joserfc.jwk import RSAKey
from pydicom.uid import generate_uid

from tests.conftest import emulator_admin, make_medical_imaging
from tests.emulator.conftest import create_datastore, dicom_bytes
from tests.support.oidc_issuer import AUDIENCE, BearerAuth, OidcIssuer, SigV4RequestsAuth
from tests.support.servers import ServerProcess, start_emulator


@pytest.fixture(scope="module")
def stored(oidc_emulator: ServerProcess) -> dict[str, str]:
    """A data store with one instance, stored with SigV4 before any token is tried."""
    ds_id = create_datastore(make_medical_imaging(oidc_emulator.url))
    study, series, sop = (str(generate_uid()) for _ in range(3))
    client = DICOMwebClient(url=f"{oidc_emulator.url}/datastore/{ds_id}", session=_session(SigV4RequestsAuth()))
    client.store_instances([pydicom.dcmread(io.BytesIO(dicom_bytes(study, series, sop)))])
    return {"ds": ds_id, "study": study, "series": series, "sop": sop,
            "studies": f"{oidc_emulator.url}/datastore/{ds_id}/studies"}


def _session(auth: requests.auth.AuthBase | None) -> requests.Session:
    s = requests.Session()
    s.auth = auth
    return s


def _get(url: str, auth: requests.auth.AuthBase | None = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    return _session(auth).get(url, headers=headers or {}, timeout=30)


def test_valid_bearer_token_searches_and_stores(oidc_emulator: ServerProcess, stored: dict[str, str],
                                                issuer: OidcIssuer) -> None:
    client = DICOMwebClient(url=f"{oidc_emulator.url}/datastore/{stored['ds']}",
                            session=_session(BearerAuth(issuer.token())))
    studies = client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [stored["study"]]
    sop = str(generate_uid())
    result = client.store_instances([pydicom.dcmread(io.BytesIO(dicom_bytes(stored["study"], stored["series"],
                                                                            sop)))])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
    assert len(client.search_for_instances(stored["study"], stored["series"])) == 2
    # A list audience containing ours is fine too; tokens are verified with the cached JWKS.
    assert _get(stored["studies"], BearerAuth(issuer.token(aud=["other", AUDIENCE]))).status_code == 200
    assert _get(stored["studies"], BearerAuth(issuer.es256_token())).status_code == 200
    assert sum(1 for p in issuer.requests if p == "/keys") == 1


def test_sigv4_from_the_test_credentials_is_accepted(stored: dict[str, str]) -> None:
    assert _get(stored["studies"], SigV4RequestsAuth()).status_code == 200


def _wrong_key_token(issuer: OidcIssuer) -> str:
    other = RSAKey.generate_key(2048, parameters={"kid": "test-key-1"})
    return issuer.token(key=other)


TWELVE_HOURS = 12 * 3600
HOSTILE: list[tuple[str, Callable[[OidcIssuer], str], int]] = [
    ("alg-none", lambda i: i.unsigned_token(), 401),
    ("hs256-with-public-key", lambda i: i.hs256_with_public_key(), 401),
    ("tampered-payload", lambda i: i.tampered_token(), 401),
    ("signed-by-another-key", _wrong_key_token, 401),
    ("unknown-kid", lambda i: i.token(header={"alg": "RS256", "kid": "nope"}), 401),
    ("rs256-header-on-ec-key", lambda i: i.token(header={"alg": "RS256", "kid": "test-key-ec"}), 401),
    ("expired", lambda i: i.token(exp=int(time.time()) - 600, iat=int(time.time()) - 1200,
                                  nbf=int(time.time()) - 1200), 401),
    ("nbf-in-future", lambda i: i.token(nbf=int(time.time()) + 3600), 401),
    ("iat-older-than-12h", lambda i: i.token(iat=int(time.time()) - TWELVE_HOURS - 120,
                                             nbf=int(time.time()) - TWELVE_HOURS - 120), 401),
    ("iat-in-future", lambda i: i.token(iat=int(time.time()) + 3600), 401),
    ("no-exp", lambda i: i.token(exp=None), 401),
    ("no-iat", lambda i: i.token(iat=None), 401),
    ("exp-not-a-number", lambda i: i.token(exp="tomorrow"), 401),
    ("garbage", lambda i: "not.a.jwt", 401),
    ("garbage-no-dots", lambda i: "xyz", 401),
    ("huge", lambda i: "a." + "b" * 20000 + ".c", 401),
    ("empty", lambda i: "", 401),
    ("wrong-audience", lambda i: i.token(aud="someone-else"), 403),
    ("no-audience", lambda i: i.token(aud=None), 403),
    ("wrong-issuer", lambda i: i.token(iss="https://evil.example"), 403),
]


@pytest.mark.parametrize(("build", "status"), [pytest.param(b, s, id=n) for n, b, s in HOSTILE])
def test_hostile_tokens_are_refused(oidc_emulator: ServerProcess, stored: dict[str, str], issuer: OidcIssuer,
                                    build: Callable[[OidcIssuer], str], status: int) -> None:
    token = build(issuer)
    before = {k: v for k, v in emulator_admin(oidc_emulator.url, "state").items() if k != "clock"}
    body = dicom_bytes(stored["study"], stored["series"], str(generate_uid()))
    boundary = "b0undary"
    multipart = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
                 + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Authorization": f"Bearer {token}"}
    search = requests.get(stored["studies"], headers=headers, timeout=30)
    store = requests.post(stored["studies"], data=multipart, timeout=30, headers={
        **headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    for resp in (search, store):
        assert resp.status_code == status
        expected = "UnauthorizedException" if status == 401 else "AccessDeniedException"
        assert resp.headers["x-amzn-ErrorType"] == expected
        assert set(resp.json()) == {"message"}
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        if token:
            assert token not in resp.text
    assert {k: v for k, v in emulator_admin(oidc_emulator.url, "state").items() if k != "clock"} == before
    assert emulator_admin(oidc_emulator.url, "health") == {"status": "ok"}


@pytest.mark.parametrize(("headers", "status"), [
    pytest.param({}, 401, id="no-credentials"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, 401, id="basic"),
    pytest.param({"Authorization": "AWS4-HMAC-SHA256 garbage"}, 401, id="sigv4-malformed"),
    pytest.param({"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, "
                                   "SignedHeaders=host, Signature=abc"}, 403, id="sigv4-wrong-service"),
])
def test_missing_or_unusable_credentials(stored: dict[str, str], headers: dict[str, str], status: int) -> None:
    resp = _get(stored["studies"], headers=headers)
    assert resp.status_code == status
    assert resp.headers["x-amzn-ErrorType"] == ("UnauthorizedException" if status == 401 else
                                                "AccessDeniedException")
    if status == 401:
        assert "WWW-Authenticate" in resp.headers


def test_rest_json_api_is_not_affected(oidc_emulator: ServerProcess, stored: dict[str, str]) -> None:
    mi = make_medical_imaging(oidc_emulator.url)
    assert mi.get_datastore(datastoreId=stored["ds"])["datastoreProperties"]["datastoreStatus"] == "ACTIVE"


def test_without_issuer_bearer_is_refused_and_sigv4_accepted(emulator_url: str, issuer: OidcIssuer) -> None:
    """The shared session emulator has no OIDC issuer configured (and auth required by default)."""
    ds_id = create_datastore(make_medical_imaging(emulator_url))
    url = f"{emulator_url}/datastore/{ds_id}/studies"
    resp = _get(url, BearerAuth(issuer.token()))
    assert resp.status_code == 401 and resp.headers["x-amzn-ErrorType"] == "UnauthorizedException"
    ok = _get(url, SigV4RequestsAuth())
    assert ok.status_code == 200 and ok.json() == []


def test_auth_off_switch(moto_url: str, log_dir: Path, tmp_path: Path) -> None:
    server = start_emulator(tmp_path / "data", moto_url, log_dir, extra_args=["--dicomweb-auth", "off"])
    try:
        ds_id = create_datastore(make_medical_imaging(server.url))
        client: Any = DICOMwebClient(url=f"{server.url}/datastore/{ds_id}")
        assert client.search_for_studies() == []
        assert emulator_admin(server.url, "config")["dicomweb_auth"] == "off"
    finally:
        server.stop()


# ---- SigV4 is verified: the signature is recomputed with the secret key the emulator knows for the access key

def _signed_headers(method: str, url: str, *, secret: str = "testing", key: str = "testing", body: bytes = b"",
                    headers: dict[str, str] | None = None, at: float | None = None) -> dict[str, str]:
    """SigV4 headers from botocore's signer, at time ``at`` (default now)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))
    aws = AWSRequest(method=method, url=url, data=body, headers={**(headers or {}), "X-Amz-Date": stamp})
    aws.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key, secret), "medical-imaging", "us-east-1")
    signature = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    signer._inject_signature_to_request(aws, signature)
    return {k: v for k, v in aws.headers.items() if k != "Host"}


def _stow_body(stored: dict[str, str]) -> tuple[bytes, str]:
    body = dicom_bytes(stored["study"], stored["series"], str(generate_uid()))
    return (b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n--b0--\r\n",
            'multipart/related; type="application/dicom"; boundary=b0')


def test_a_correct_signature_made_by_hand_is_accepted(stored: dict[str, str]) -> None:
    url = stored["studies"] + "?limit=5&includefield=0020000D"
    assert requests.get(url, headers=_signed_headers("GET", url), timeout=30).status_code == 200


SIGV4_HOSTILE: list[tuple[str, Callable[[str], dict[str, str]], str]] = [
    ("wrong-secret", lambda url: _signed_headers("GET", url, secret="not-the-secret"), "InvalidSignatureException"),
    ("unknown-access-key", lambda url: _signed_headers("GET", url, key="AKIANOBODYKNOWS"),
     "UnrecognizedClientException"),
    ("signed-20-minutes-ago", lambda url: _signed_headers("GET", url, at=time.time() - 1200),
     "InvalidSignatureException"),
    ("signed-20-minutes-ahead", lambda url: _signed_headers("GET", url, at=time.time() + 1200),
     "InvalidSignatureException"),
    ("query-changed-after-signing", lambda url: _signed_headers("GET", url.replace("limit=5", "limit=6")),
     "InvalidSignatureException"),
    ("path-changed-after-signing", lambda url: _signed_headers("GET", url.replace("/studies", "/series")),
     "InvalidSignatureException"),
    ("signature-of-another-request", lambda url: _signed_headers("POST", url), "InvalidSignatureException"),
    ("scope-date-not-the-request-date", lambda url: {
        **_signed_headers("GET", url), "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 86400 * 2))},
     "InvalidSignatureException"),
]


@pytest.mark.parametrize(("build", "code"), [pytest.param(b, c, id=n) for n, b, c in SIGV4_HOSTILE])
def test_hostile_signatures_are_refused(stored: dict[str, str], build: Callable[[str], dict[str, str]],
                                        code: str) -> None:
    url = stored["studies"] + "?limit=5&includefield=0020000D"
    resp = requests.get(url, headers=build(url), timeout=30)
    assert (resp.status_code, resp.headers["x-amzn-ErrorType"]) == (403, code)
    assert set(resp.json()) == {"message"} and "testing" not in resp.text


def test_a_stow_body_changed_after_signing_is_refused_and_stores_nothing(
        oidc_emulator: ServerProcess, stored: dict[str, str]) -> None:
    before = {k: v for k, v in emulator_admin(oidc_emulator.url, "state").items() if k != "clock"}
    body, ctype = _stow_body(stored)
    signed = _signed_headers("POST", stored["studies"], body=body, headers={"Content-Type": ctype})
    other, _ = _stow_body(stored)
    refused = requests.post(stored["studies"], data=other, headers={**signed, "Content-Type": ctype}, timeout=30)
    assert (refused.status_code, refused.headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    # A declared payload hash that the body does not match is refused as well (checked once the body is in).
    declared = _signed_headers("POST", stored["studies"], body=body, headers={
        "Content-Type": ctype, "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    lied = requests.post(stored["studies"], data=other, headers={**declared, "Content-Type": ctype}, timeout=30)
    assert (lied.status_code, lied.headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert {k: v for k, v in emulator_admin(oidc_emulator.url, "state").items() if k != "clock"} == before
    # The same body as signed is stored.
    ok = requests.post(stored["studies"], data=body, headers={**signed, "Content-Type": ctype}, timeout=30)
    assert ok.status_code == 200


def test_presigned_urls_are_verified(stored: dict[str, str]) -> None:
    def presign(expires: int, secret: str = "testing") -> str:
        aws = AWSRequest(method="GET", url=stored["studies"] + "?limit=3")
        SigV4QueryAuth(Credentials("testing", secret), "medical-imaging", "us-east-1", expires=expires).add_auth(aws)
        return str(aws.url)

    assert requests.get(presign(60), timeout=30).status_code == 200
    # Signed an hour ago for 10 minutes: expired.
    aws = AWSRequest(method="GET", url=stored["studies"] + "?limit=3")
    old = SigV4QueryAuth(Credentials("testing", "testing"), "medical-imaging", "us-east-1", expires=600)
    aws.context["timestamp"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3600))
    old._modify_request_before_signing(aws)
    old._inject_signature_to_request(aws, old.signature(old.string_to_sign(aws, old.canonical_request(aws)), aws))
    expired = requests.get(str(aws.url), timeout=30)
    assert (expired.status_code, expired.headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert "expired" in expired.json()["message"]
    wrong = requests.get(presign(60, secret="nope"), timeout=30)
    assert (wrong.status_code, wrong.headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    tampered = requests.get(presign(60).replace("limit=3", "limit=4"), timeout=30)
    assert tampered.status_code == 403
    too_long = requests.get(presign(8 * 24 * 3600), timeout=30)
    assert too_long.status_code == 403


def test_the_credentials_table_and_the_presence_switch(moto_url: str, log_dir: Path, tmp_path: Path) -> None:
    """Keys come from --sigv4-credentials (plus testing/testing and the emulator's own); --sigv4 presence
    checks only the shape, for clients whose real AWS keys the emulator cannot know."""
    table = tmp_path / "keys.json"
    table.write_text(json.dumps({"AKIAOPERATOR": "operator-secret"}))
    verify = start_emulator(tmp_path / "v", moto_url, log_dir, extra_args=["--sigv4-credentials", f"@{table}"],
                            extra_env={"AWS_ACCESS_KEY_ID": "AKIAOWN", "AWS_SECRET_ACCESS_KEY": "own-secret"})
    presence = start_emulator(tmp_path / "p", moto_url, log_dir, extra_args=["--sigv4", "presence"])
    try:
        for server, cases in ((verify, [("AKIAOPERATOR", "operator-secret", 200), ("AKIAOWN", "own-secret", 200),
                                        ("testing", "testing", 200), ("AKIAOPERATOR", "testing", 403),
                                        ("AKIASTRANGER", "x", 403)]),
                              (presence, [("AKIASTRANGER", "x", 200), ("testing", "wrong", 200)])):
            url = f"{server.url}/datastore/{create_datastore(make_medical_imaging(server.url))}/studies"
            for key, secret, status in cases:
                assert requests.get(url, headers=_signed_headers("GET", url, key=key, secret=secret),
                                    timeout=30).status_code == status, (key, status)
        shown = emulator_admin(verify.url, "config")
        assert shown["sigv4"] == "verify" and "operator-secret" not in json.dumps(shown)
        assert set(shown["sigv4_credentials"]) == {"AKIAOPERATOR", "AKIAOWN", "testing"}
    finally:
        verify.stop()
        presence.stop()


@pytest.mark.parametrize("value", ["[1]", '{"k": ""}', '{"k": 1}', "not json"])
def test_a_bad_credentials_table_stops_the_emulator_naming_the_flag(value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "emulator", "--data-dir", "/nonexistent", "--sigv4-credentials",
                           value], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--sigv4-credentials" in done.stderr
