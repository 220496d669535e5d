"""``himig codec-server``: Temporal's codec contract, as the Temporal UI and the ``temporal`` CLI call it, behind OIDC.

A real OIDC issuer on 127.0.0.1 signs the tokens; the server runs for real (HTTP and HTTPS); the CLI tests run the
`temporal` binary against the dev server, where workflows' payloads were sealed by the project's converter.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle

from contracts.migration import MigrationInput, OperatorCommand
from tests.support.installation import PAYLOAD_KEYS
from tests.support.oidc_issuer import OidcIssuer
from tests.support.servers import free_port
from tests.support.temporal_cli import shown, temporal_cli
from tests.support.tls import Certificates
from worker.codec import EncryptionCodec, KeyRing, is_encrypted
from worker.codec_server import CodecServer
from worker.settings import CodecServerSettings, InvalidSettings
from workflows.migration import MigrationWorkflow

UI_ORIGIN = "http://127.0.0.1:8233"
AUDIENCE = "himig-codec-tests"
NAMESPACE = "default"
CANARY = "CANARY-MRN-552781"  # a folder named by an MRN: what a PACS export does


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer().start()
    yield issuer
    issuer.stop()


def _settings(issuer: OidcIssuer, **overrides: Any) -> CodecServerSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": free_port(), "ui_origins": UI_ORIGIN, "auth": "oidc",
                              "oidc_issuer": issuer.url, "oidc_audience": AUDIENCE,
                              "allowed_subjects": "alice@example.org,ops-robot", "allowed_groups": "phi-readers"}
    values.update(overrides)
    return CodecServerSettings.model_validate(values)


@pytest.fixture
def serve(issuer: OidcIssuer) -> Iterator[Callable[..., CodecServer]]:
    servers: list[CodecServer] = []

    def start(**overrides: Any) -> CodecServer:
        server = CodecServer(_settings(issuer, **overrides), EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS)),
                             NAMESPACE).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve: Callable[..., CodecServer]) -> CodecServer:
    return serve()


def _token(issuer: OidcIssuer, **claims: Any) -> str:
    return issuer.token(**{"aud": AUDIENCE, "sub": "alice-sub", "email": "alice@example.org", **claims})


def _sealed(*values: Any) -> dict[str, Any]:
    """A Payloads body as the UI sends it: protobuf JSON of payloads our workers sealed."""
    codec = EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS))
    plain = [Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(v).encode()) for v in values]
    return {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                          "data": base64.b64encode(p.data).decode()} for p in codec.encode_sync(plain)]}


def _values(body: dict[str, Any]) -> list[Any]:
    return [json.loads(base64.b64decode(p["data"])) for p in body["payloads"]]


def _ui_decode(server: CodecServer, body: Any, token: str | None, *, path: str = "/decode",
               namespace: str = NAMESPACE, **kwargs: Any) -> requests.Response:
    """The request the Temporal UI makes (src/lib/services/data-encoder.ts): POST <endpoint>/decode."""
    headers = {"Content-Type": "application/json", "X-Namespace": namespace, "Origin": UI_ORIGIN}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.url + path, data=data, headers=headers, timeout=10, **kwargs)


class TestUiRequests:
    def test_preflight_from_the_ui_origin_allows_the_headers_it_sends(self, server: CodecServer) -> None:
        resp = requests.options(server.url + "/decode", timeout=10, headers={
            "Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-namespace"})
        assert resp.status_code == 204
        assert resp.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")} >= {
            "authorization", "content-type", "x-namespace"}
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"  # the UI's includeCredentials option

    def test_preflight_from_another_origin_gets_no_cors_grant(self, server: CodecServer) -> None:
        resp = requests.options(server.url + "/decode", timeout=10,
                                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert resp.status_code == 403
        assert "Access-Control-Allow-Origin" not in resp.headers

    def test_an_allowed_person_sees_decoded_payloads(self, issuer: OidcIssuer, server: CodecServer) -> None:
        with capture_logs() as logs:
            resp = _ui_decode(server, _sealed({"source": f"s3://b/{CANARY}/"}, 3), _token(issuer))
        assert resp.status_code == 200, resp.text
        assert _values(resp.json()) == [{"source": f"s3://b/{CANARY}/"}, 3]
        assert resp.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
        assert resp.headers["Cache-Control"] == "no-store"
        # The audit line says who and how many, never what.
        [line] = [e for e in logs if e["event"] == "codec request"]
        assert line["subject"] == "alice-sub" and line["payloads"] == 2 and line["status"] == 200
        assert CANARY not in json.dumps(logs)

    def test_a_group_member_is_allowed_and_the_endpoint_may_sit_under_a_prefix(
            self, issuer: OidcIssuer, server: CodecServer) -> None:
        token = _token(issuer, sub="bob", email=None, groups=["radiology", "phi-readers"])
        resp = _ui_decode(server, _sealed("x"), token, path=f"/codec/{NAMESPACE}/decode")
        assert resp.status_code == 200 and _values(resp.json()) == ["x"]

    def test_encode_then_decode_round_trips(self, issuer: OidcIssuer, server: CodecServer) -> None:
        plain: dict[str, Any] = {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                               "data": base64.b64encode(json.dumps(CANARY).encode()).decode()}]}
        headers = {"Authorization": f"Bearer {_token(issuer)}", "Content-Type": "application/json"}
        sealed = requests.post(server.url + "/encode", json=plain, headers=headers, timeout=10)
        assert sealed.status_code == 200
        assert CANARY not in sealed.text
        assert base64.b64decode(sealed.json()["payloads"][0]["metadata"]["encoding"]) == b"binary/encrypted"
        opened = requests.post(server.url + "/decode", data=sealed.content, headers=headers, timeout=10)
        assert _values(opened.json()) == [CANARY]


class TestRefusals:
    @pytest.mark.parametrize("case", ["none", "basic", "garbage", "alg-none", "hs256-public-key", "tampered",
                                      "expired", "future", "foreign-key", "no-sub"])
    def test_no_or_bad_token_is_401(self, issuer: OidcIssuer, server: CodecServer, case: str) -> None:
        headers = {"Content-Type": "application/json", "X-Namespace": NAMESPACE}
        tokens = {
            "garbage": "not.a.jwt", "alg-none": issuer.unsigned_token(),
            "hs256-public-key": issuer.hs256_with_public_key(), "tampered": issuer.tampered_token(),
            "expired": _token(issuer, exp=1_000_000, iat=999_000, nbf=999_000),
            "future": _token(issuer, nbf=4_000_000_000), "no-sub": _token(issuer, sub=None),
            "foreign-key": issuer.token(key=RSAKey.generate_key(2048, parameters={"kid": "test-key-1"}),
                                        aud=AUDIENCE, sub="alice-sub", email="alice@example.org"),
        }
        if case == "basic":
            headers["Authorization"] = "Basic YWxpY2U6cGFzcw=="
        elif case in tokens:
            headers["Authorization"] = f"Bearer {tokens[case]}"
        resp = requests.post(server.url + "/decode", data=json.dumps(_sealed(CANARY)), headers=headers, timeout=10)
        assert resp.status_code == 401, (case, resp.text)
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="himig-codec"')
        assert CANARY not in resp.text

    @pytest.mark.parametrize(("claims", "why"), [
        ({"aud": "some-other-app"}, "another audience"),
        ({"iss": "https://impostor.example"}, "another issuer"),
        ({"sub": "mallory", "email": "mallory@example.org", "groups": ["radiology"]}, "may not see"),
    ])
    def test_a_genuine_token_without_the_right_is_403(self, issuer: OidcIssuer, server: CodecServer,
                                                      claims: dict[str, Any], why: str) -> None:
        resp = _ui_decode(server, _sealed(CANARY), _token(issuer, **claims))
        assert resp.status_code == 403 and why in resp.json()["error"]
        assert CANARY not in resp.text

    def test_another_namespace_is_403(self, issuer: OidcIssuer, server: CodecServer) -> None:
        resp = _ui_decode(server, _sealed(CANARY), _token(issuer), namespace="someone-elses")
        assert resp.status_code == 403 and "another namespace" in resp.json()["error"]

    @pytest.mark.parametrize(("body", "status", "why"), [
        (b"{not json", 400, "not a Payloads message"),
        (b'{"payloads": [{"data": 7}]}', 400, "not a Payloads message"),
        (b'{"payloads": "x"}', 400, "not a Payloads message"),
        (b"\xff\xfe", 400, "not a Payloads message"),
        (b"[" * 5000 + b"]" * 5000, 400, "not a Payloads message"),
    ])
    def test_a_bad_body_is_400(self, issuer: OidcIssuer, server: CodecServer, body: bytes, status: int,
                               why: str) -> None:
        resp = _ui_decode(server, body, _token(issuer))
        assert resp.status_code == status and why in resp.json()["error"]

    def test_a_payload_sealed_with_an_unknown_key_is_400_naming_the_key_id(
            self, issuer: OidcIssuer, server: CodecServer) -> None:
        foreign = EncryptionCodec(KeyRing.parse(KeyRing.generate_entry("retired-2024")))
        [sealed] = foreign.encode_sync([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
        body = {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()},
                              "data": base64.b64encode(sealed.data).decode()}]}
        resp = _ui_decode(server, body, _token(issuer))
        assert resp.status_code == 400 and "'retired-2024'" in resp.json()["error"]

    def test_unknown_paths_and_oversized_bodies(self, issuer: OidcIssuer, server: CodecServer) -> None:
        assert _ui_decode(server, _sealed(1), _token(issuer), path="/decrypt").status_code == 404
        assert requests.get(server.url + "/health", timeout=10).status_code == 200
        # A declared 64 MiB body is refused before it is read.
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("POST", "/decode")
        for name, value in (("Authorization", f"Bearer {_token(issuer)}"), ("Content-Length", str(64 << 20))):
            conn.putheader(name, value)
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()


class TestStartUp:
    @pytest.mark.parametrize(("overrides", "variable"), [
        ({"auth": "none", "host": "0.0.0.0"}, "HIMIG_CODEC_SERVER_AUTH"),
        ({"oidc_issuer": None}, "HIMIG_CODEC_SERVER_OIDC_ISSUER"),
        ({"oidc_audience": None}, "HIMIG_CODEC_SERVER_OIDC_AUDIENCE"),
        ({"allowed_subjects": "", "allowed_groups": " , "}, "HIMIG_CODEC_SERVER_ALLOWED_SUBJECTS"),
        ({"tls_cert_path": "/tmp/cert.pem"}, "HIMIG_CODEC_SERVER_TLS_CERT_PATH"),
    ])
    def test_an_unsafe_or_incomplete_configuration_does_not_start(
            self, issuer: OidcIssuer, overrides: dict[str, Any], variable: str) -> None:
        with pytest.raises(InvalidSettings) as err:
            CodecServer(_settings(issuer, **overrides), EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS)), NAMESPACE)
        assert variable in str(err.value)

    @pytest.mark.parametrize(("variable", "value", "reason"), [
        ("HIMIG_CODEC_SERVER_PORT", "70000", "less than or equal to 65535"),
        ("HIMIG_CODEC_SERVER_UI_ORIGINS", "javascript:alert(1)", ""),
        ("HIMIG_CODEC_SERVER_AUTH", "basic", "'oidc' or 'none'"),
        ("HIMIG_CODEC_SERVER_OIDC_ISSUER", "file:///etc/passwd", "http(s) URL"),
    ])
    def test_a_bad_variable_is_named_at_start(self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                              reason: str) -> None:
        from worker.settings import load_settings

        monkeypatch.setenv(variable, value)
        with pytest.raises(InvalidSettings) as err:
            load_settings()
        assert f"{variable}: " in str(err.value) and reason in str(err.value)

    def test_auth_none_serves_a_local_stack_on_loopback(self, serve: Callable[..., CodecServer]) -> None:
        server = serve(auth="none", oidc_issuer=None, allowed_subjects="", allowed_groups="")
        resp = requests.post(server.url + "/decode", json=_sealed(CANARY), timeout=10)
        assert resp.status_code == 200 and _values(resp.json()) == [CANARY]

    def test_https_with_the_operators_certificate(self, issuer: OidcIssuer, serve: Callable[..., CodecServer],
                                                   tmp_path: Path) -> None:
        certs = Certificates.make(tmp_path)
        server = serve(tls_cert_path=str(certs.server[0]), tls_key_path=str(certs.server[1]))
        assert server.url.startswith("https://")
        resp = _ui_decode(server, _sealed(CANARY), _token(issuer), verify=str(certs.ca))
        assert resp.status_code == 200 and _values(resp.json()) == [CANARY]
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to the TLS port gets nowhere
            requests.post(server.url.replace("https", "http"), data=b"{}", timeout=10)


# ---- the temporal CLI against workflows sealed by the project's converter

@pytest.fixture
async def parked(client: Client) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A migration nobody runs (no worker on its queue) whose input names a patient-named folder."""
    handle = await client.start_workflow(
        MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://src-b/{CANARY}/", datastore_id="d" * 32,
                                              work_s3_uri="s3://work-b/w/"),
        id=f"codec-{uuid.uuid4().hex[:8]}", task_queue=f"parked-{uuid.uuid4().hex[:8]}")
    yield handle
    await handle.terminate(reason="test done")


def _cli(client: Client, *args: str) -> subprocess.CompletedProcess[str]:
    return temporal_cli(client, *args)


class TestTemporalCli:
    async def test_history_is_sealed_and_shows_only_through_the_codec_server(
            self, client: Client, parked: WorkflowHandle[Any, Any], issuer: OidcIssuer, server: CodecServer) -> None:
        show = ["workflow", "show", "-w", parked.id, "--output", "json"]
        plain = await asyncio.to_thread(_cli, client, *show)
        assert plain.returncode == 0, plain.stderr
        assert CANARY not in shown(plain.stdout) and "src-b" not in shown(plain.stdout)
        decoded = await asyncio.to_thread(_cli, client, *show, "--codec-endpoint", server.url,
                                          "--codec-auth", f"Bearer {_token(issuer)}")
        assert decoded.returncode == 0, decoded.stderr
        assert f"s3://src-b/{CANARY}/" in shown(decoded.stdout)

        refused = await asyncio.to_thread(_cli, client, *show, "--codec-endpoint", server.url,
                                          "--codec-auth", f"Bearer {issuer.tampered_token()}")
        assert CANARY not in shown(refused.stdout) + refused.stderr

    async def test_a_signal_sent_through_the_codec_server_is_sealed_in_history(
            self, client: Client, parked: WorkflowHandle[Any, Any], issuer: OidcIssuer, server: CodecServer) -> None:
        sent = await asyncio.to_thread(
            _cli, client, "workflow", "signal", "-w", parked.id, "--name", "pause",
            "--input", json.dumps(OperatorCommand(by="alice", reason=f"folder {CANARY} is wrong").model_dump()),
            "--codec-endpoint", server.url, "--codec-auth", f"Bearer {_token(issuer)}")
        assert sent.returncode == 0, sent.stderr
        history = await parked.fetch_history()
        [signalled] = [e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")]
        [payload] = signalled.workflow_execution_signaled_event_attributes.input.payloads
        assert is_encrypted(payload) and CANARY.encode() not in payload.data
        [opened] = EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS)).decode_sync([payload])
        assert CANARY in opened.data.decode()


# ---- reviewer attestation (contracts/attestation.py): what /encode adds for the verified token, and only that

ATTESTATION_KEY = b"k" * 40


def _encode_raw(server: CodecServer, payloads: list[Payload], token: str | None) -> list[Payload]:
    """POST /encode (as the temporal CLI does for --input), then open what came back with the payload keys."""
    body = {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                          "data": base64.b64encode(p.data).decode()} for p in payloads]}
    headers = {"Content-Type": "application/json", "X-Namespace": NAMESPACE}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = requests.post(server.url + "/encode", json=body, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    sealed = [Payload(metadata={k: base64.b64decode(v) for k, v in p["metadata"].items()},
                      data=base64.b64decode(p["data"])) for p in resp.json()["payloads"]]
    assert all(is_encrypted(p) for p in sealed)
    assert not any(k.startswith("himig-") for p in sealed for k in p.metadata)  # sealed inside, not beside
    return EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS)).decode_sync(sealed)


def _decision(**metadata: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain", **metadata}, data=b'{"action": "keep", "reviewer": "x"}')


class TestReviewerAttestation:
    @pytest.fixture
    def attesting(self, issuer: OidcIssuer) -> Iterator[Callable[..., CodecServer]]:
        servers: list[CodecServer] = []

        def start(key: bytes | None = ATTESTATION_KEY, **overrides: Any) -> CodecServer:
            server = CodecServer(_settings(issuer, **overrides), EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS)),
                                 NAMESPACE, key).start()
            servers.append(server)
            return server

        yield start
        for server in servers:
            server.stop()

    def test_encode_attests_the_tokens_subject_and_drops_a_callers_own(
            self, issuer: OidcIssuer, attesting: Callable[..., CodecServer]) -> None:
        from contracts.attestation import claimed, data_digest, verifies

        server = attesting()
        forged = _decision(**{"himig-attested-by": b"root", "himig-attestation": b"00" * 32})
        [opened, plain] = _encode_raw(server, [forged, _decision()], _token(issuer))
        for payload in (opened, plain):
            identity, mac = claimed(payload)
            # The subject, not the email: the issuer's stable name for the person.
            assert identity == "alice-sub" and mac is not None
            assert verifies(ATTESTATION_KEY, NAMESPACE, identity, data_digest(payload.data), mac)
            assert not verifies(ATTESTATION_KEY, "other-namespace", identity, data_digest(payload.data), mac)
            assert payload.data == forged.data and payload.metadata["encoding"] == b"json/plain"

    def test_without_a_key_or_a_verified_token_nothing_is_attested_and_a_callers_attestation_is_dropped(
            self, issuer: OidcIssuer, attesting: Callable[..., CodecServer]) -> None:
        forged = _decision(**{"himig-attested-by": b"alice-sub", "himig-attestation": b"ab" * 32})
        for server, token in ((attesting(key=None), _token(issuer)),
                              (attesting(auth="none", oidc_issuer=None, allowed_subjects="", allowed_groups=""),
                               None)):
            [opened] = _encode_raw(server, [forged], token)
            assert dict(opened.metadata) == {"encoding": b"json/plain"}
