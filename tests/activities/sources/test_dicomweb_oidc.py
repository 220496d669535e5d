"""OIDC on both DICOMweb sides: the worker's client-credentials tokens (RFC 6749 §4.4) from a real local issuer.

The PACS is the emulator's DICOMweb with an OIDC issuer configured and no clock leeway, so a token that expired is
refused at once (401), as a strict PACS would. The same token source serves HealthImaging's DICOMweb (the review's
spot check) when the data store is configured for OIDC. Hostile token endpoints (down, refusing, answering
garbage) and tokens the resource server refuses (expired, wrong audience, another issuer) are all cases here.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from temporalio.exceptions import ApplicationError

from activities.bearer_http import BearerHttp
from activities.client_credentials import (
    ClientCredentials,
    TokenRefused,
    TokenSource,
    TokenUnavailable,
)
from activities.sources.dicomweb import DicomwebAuth, DicomwebConnector
from activities.sources.registry import SourceSettings
from activities.spotcheck import Imported, SpotChecker
from contracts.records import InstanceRecord
from contracts.sources import DicomwebSource, parse_origins
from tests.activities.sources.support import buckets, landed, landing, receive_input, run_receive
from tests.conftest import make_medical_imaging
from tests.emulator.conftest import create_datastore, dicom_bytes
from tests.support.dicom import uid
from tests.support.oidc_issuer import OidcIssuer, SigV4RequestsAuth
from tests.support.servers import ServerProcess, start_emulator

CLIENT, SECRET = "himig-worker", "s3cret-" + "x" * 24
AUDIENCE = "himig-pacs"


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    server = OidcIssuer().start()
    server.register(CLIENT, SECRET, AUDIENCE)
    server.register("other-audience", "other-secret", "someone-else")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _honest_issuer(issuer: OidcIssuer) -> None:
    issuer.lifetime, issuer.announced_lifetime, issuer.down, issuer.token_response = 600, None, False, None
    issuer.stall_seconds = 0.0


@pytest.fixture(scope="module")
def pacs(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory,
         issuer: OidcIssuer) -> Iterator[ServerProcess]:
    """The emulator's DICOMweb as an OIDC-protected PACS: our issuer, our audience, no clock leeway."""
    server = start_emulator(tmp_path_factory.mktemp("oidc-pacs"), moto_url, log_dir, extra_args=[
        "--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE, "--oidc-leeway-seconds", "0"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def seeded(pacs: ServerProcess) -> dict[str, Any]:
    """Two studies of two instances each, stored with SigV4."""
    ds = create_datastore(make_medical_imaging(pacs.url))
    session = requests.Session()
    session.auth = SigV4RequestsAuth()
    client = DICOMwebClient(url=f"{pacs.url}/datastore/{ds}", session=session)
    studies: dict[str, list[tuple[str, str]]] = {}
    for _ in range(2):
        study, series = uid(), uid()
        sops = [uid(), uid()]
        client.store_instances([pydicom.dcmread(io.BytesIO(dicom_bytes(study, series, sop))) for sop in sops])
        studies[study] = [(series, sop) for sop in sops]
    return {"ds": ds, "url": f"{pacs.url}/datastore/{ds}", "studies": studies, "origin": pacs.url}


def tokens(issuer: OidcIssuer, client: str = CLIENT, secret: str = SECRET, **kw: Any) -> TokenSource:
    return TokenSource(ClientCredentials(issuer.token_url, client, secret), **kw)


def settings_with(source: TokenSource, seeded: dict[str, Any]) -> SourceSettings:
    return SourceSettings(dicomweb_auth=DicomwebAuth(tokens=source), unit_backoff_seconds=0.0,
                          dicomweb_allowed_origins=parse_origins(seeded["origin"]))


class TestPull:
    def test_a_whole_pull_lands_every_instance_with_one_token(self, s3: Any, issuer: OidcIssuer,
                                                              seeded: dict[str, Any]) -> None:
        land, work = buckets(s3)
        source = tokens(issuer)
        inp = receive_input(land, work, DicomwebSource(kind="dicomweb", url=seeded["url"]))
        result, beats = run_receive(s3, inp, settings=settings_with(source, seeded))
        from tests.activities.sources.support import failures
        assert result is not None and result.files == 4 and result.source_failures == 0, failures(s3, inp)
        assert {k.split("/")[1] for k in landed(s3, land)} == set(seeded["studies"])
        assert source.fetches == 1  # every request of the pull shared the cached token
        assert SECRET not in repr(source) and SECRET not in str(beats)

    def test_a_token_that_expires_during_a_pull_is_replaced_and_the_pull_goes_on(
            self, s3: Any, issuer: OidcIssuer, seeded: dict[str, Any]) -> None:
        # The issuer announces an hour but the token dies in 2 s (a revoked key, a drifting clock): the refresh
        # schedule cannot see it coming, only the PACS's 401 can.
        issuer.lifetime, issuer.announced_lifetime = 2, 3600
        source = tokens(issuer)
        land, _ = buckets(s3)
        connector = DicomwebConnector(DicomwebSource(kind="dicomweb", url=seeded["url"]),
                                      DicomwebAuth(tokens=source), allowed_origins=parse_origins(seeded["origin"]))
        connector.probe()
        first = source.token()
        time.sleep(3)  # past the first token's real exp (the PACS allows no leeway)
        issuer.lifetime = 600
        study = sorted(seeded["studies"])[0]
        outcome = connector.pull(study, landing(s3, land))
        assert outcome.pulled == 2 and not outcome.failures
        assert source.fetches == 2 and source.token() != first

    def test_tokens_are_refreshed_before_they_expire(self, issuer: OidcIssuer) -> None:
        now = [1000.0]
        source = tokens(issuer, clock=lambda: now[0], margin_seconds=60)
        first = source.token()
        now[0] += 539  # 600 s announced, refreshed 60 s before
        assert source.token() == first and source.fetches == 1
        now[0] += 2
        assert source.token() != first and source.fetches == 2
        # A lifetime shorter than twice the margin: refreshed at half of it.
        issuer.lifetime = 20
        now[0] += 1000
        short = source.token()
        now[0] += 9
        assert source.token() == short
        now[0] += 2
        assert source.token() != short and source.fetches == 4

    def test_a_token_is_fetched_once_for_many_threads(self, issuer: OidcIssuer) -> None:
        source = tokens(issuer)
        seen: list[str] = []
        threads = [threading.Thread(target=lambda: seen.append(source.token())) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(seen)) == 1 and source.fetches == 1
        # A 401 reported with an old token does not throw away a newer one.
        source.rejected("an-older-token")
        assert source.token() == seen[0] and source.fetches == 1


class TestHostileTokenEndpoints:
    @pytest.mark.parametrize(("response", "error", "needle"), [
        pytest.param((200, b"<html>login</html>"), TokenUnavailable, "without a JSON token response", id="html"),
        pytest.param((200, {"token_type": "Bearer", "expires_in": 60}), TokenUnavailable, "no usable access_token",
                     id="no-access-token"),
        pytest.param((200, {"access_token": "a b", "token_type": "Bearer"}), TokenUnavailable,
                     "no usable access_token", id="access-token-with-space"),
        pytest.param((200, {"access_token": "abc", "token_type": "mac", "expires_in": 60}), TokenRefused,
                     "token_type must be Bearer", id="mac-token"),
        pytest.param((200, {"access_token": "abc", "token_type": "Bearer", "expires_in": "3600"}), TokenUnavailable,
                     "expires_in must be a positive whole number", id="expires-in-string"),
        pytest.param((200, {"access_token": "abc", "token_type": "Bearer", "expires_in": True}), TokenUnavailable,
                     "expires_in must be a positive whole number", id="expires-in-bool"),
        pytest.param((200, {"access_token": "abc", "token_type": "Bearer", "expires_in": -5}), TokenUnavailable,
                     "expires_in must be a positive whole number", id="expires-in-negative"),
        pytest.param((200, {"access_token": "abc", "token_type": "Bearer", "expires_in": 1.5}), TokenUnavailable,
                     "expires_in must be a positive whole number", id="expires-in-fraction"),
        pytest.param((200, b"[" * 70000), TokenUnavailable, "without a JSON token response", id="huge-body"),
        pytest.param((400, {"error": "invalid_scope"}), TokenRefused, "(invalid_scope)", id="invalid-scope"),
        pytest.param((401, {"error": "evil\ncode\u2028" + SECRET}), TokenRefused, "(no error code)",
                     id="error-code-not-rfc"),
        pytest.param((302, {}), TokenUnavailable, "HTTP 302", id="redirect-not-followed"),
        pytest.param((429, {}), TokenUnavailable, "HTTP 429", id="rate-limited"),
        pytest.param((500, {"error": "server_error"}), TokenUnavailable, "HTTP 500", id="server-error"),
    ])
    def test_bad_answers(self, issuer: OidcIssuer, response: tuple[int, Any], error: type[Exception],
                         needle: str) -> None:
        issuer.token_response = response
        with pytest.raises(error) as info:
            tokens(issuer).token()
        assert needle in str(info.value) and SECRET not in str(info.value)
        assert "HIMIG_DICOMWEB_OIDC_TOKEN_URL" in str(info.value)

    def test_wrong_secret_is_refused_naming_the_settings_never_the_secret(self, issuer: OidcIssuer) -> None:
        with pytest.raises(TokenRefused) as info:
            tokens(issuer, secret="wrong-" + SECRET).token()
        message = str(info.value)
        assert "invalid_client" in message and "HIMIG_DICOMWEB_OIDC_CLIENT_SECRET" in message
        assert SECRET not in message

    def test_the_scope_is_asked_for_only_when_configured(self, issuer: OidcIssuer) -> None:
        tokens(issuer).token()
        assert issuer.last_form == {"grant_type": ["client_credentials"]}
        TokenSource(ClientCredentials(issuer.token_url, CLIENT, SECRET, scope="dicomweb.read pacs/qido")).token()
        assert issuer.last_form == {"grant_type": ["client_credentials"], "scope": ["dicomweb.read pacs/qido"]}
        assert SECRET not in str(issuer.last_form)  # the secret travels in the Authorization header only

    def test_a_secret_with_reserved_characters_is_form_encoded(self, issuer: OidcIssuer) -> None:
        issuer.register("odd:client id", "p@ss:w%rd+/=")
        assert tokens(issuer, client="odd:client id", secret="p@ss:w%rd+/=").token()

    def test_an_issuer_that_is_down_or_gone(self, issuer: OidcIssuer) -> None:
        issuer.down = True
        with pytest.raises(TokenUnavailable, match="HTTP 503"):
            tokens(issuer).token()
        gone = OidcIssuer().start()
        url = gone.token_url
        gone.stop()
        with pytest.raises(TokenUnavailable, match="did not answer"):
            TokenSource(ClientCredentials(url, CLIENT, SECRET), timeout=2).token()

    def test_an_issuer_that_answers_too_late(self, issuer: OidcIssuer) -> None:
        issuer.stall_seconds = 3
        with pytest.raises(TokenUnavailable, match=r"did not answer \(ReadTimeout\)"):
            tokens(issuer, timeout=1).token()

    @pytest.mark.parametrize(("url", "client", "secret", "needle"), [
        ("ftp://issuer/token", "c", "s", "_TOKEN_URL"),
        ("http://user:pw@issuer/token", "c", "s", "_TOKEN_URL"),
        ("http://issuer/token", "", "s", "_CLIENT_ID"),
        ("http://issuer/token", "c", "", "_CLIENT_SECRET"),
    ])
    def test_client_configuration_is_checked(self, url: str, client: str, secret: str, needle: str) -> None:
        with pytest.raises(ValueError, match=needle):
            ClientCredentials(url, client, secret)
        assert "s3cret" not in repr(ClientCredentials("http://issuer/token", "c", SECRET))


class TestRefusedByThePacs:
    def _run(self, s3: Any, source: TokenSource, seeded: dict[str, Any]) -> ApplicationError:
        land, work = buckets(s3)
        inp = receive_input(land, work, DicomwebSource(kind="dicomweb", url=seeded["url"]))
        with pytest.raises(ApplicationError) as info:
            run_receive(s3, inp, settings=settings_with(source, seeded))
        assert landed(s3, land) == {}
        return info.value

    def test_an_issuer_that_is_down_is_retried_later(self, s3: Any, issuer: OidcIssuer,
                                                     seeded: dict[str, Any]) -> None:
        issuer.down = True
        err = self._run(s3, tokens(issuer), seeded)
        assert err.type == "SourceUnavailable" and not err.non_retryable
        assert "no bearer token" in str(err)

    def test_refused_client_credentials_fail_at_once(self, s3: Any, issuer: OidcIssuer,
                                                     seeded: dict[str, Any]) -> None:
        err = self._run(s3, tokens(issuer, secret="nope"), seeded)
        assert err.type == "InvalidSourceConnector" and err.non_retryable
        assert "HIMIG_DICOMWEB_OIDC_CLIENT_SECRET" in str(err) and "nope" not in str(err)

    def test_a_token_for_another_audience_is_forbidden(self, s3: Any, issuer: OidcIssuer,
                                                       seeded: dict[str, Any]) -> None:
        source = tokens(issuer, client="other-audience", secret="other-secret")
        err = self._run(s3, source, seeded)
        assert err.type == "InvalidSourceConnector" and err.non_retryable
        assert "HTTP 403" in str(err) and "HIMIG_DICOMWEB_OIDC_" in str(err)

    def test_a_token_from_another_issuer_is_refused_after_one_fresh_try(self, s3: Any, seeded: dict[str, Any]) -> None:
        stranger = OidcIssuer().start()
        try:
            stranger.register(CLIENT, SECRET, AUDIENCE)
            source = tokens(stranger)
            err = self._run(s3, source, seeded)
            assert err.type == "InvalidSourceConnector" and "HTTP 401" in str(err)
            assert source.fetches == 2  # the 401 earned exactly one new token, then the refusal stands
        finally:
            stranger.stop()

    def test_tokens_that_are_always_expired_fail_without_looping(self, s3: Any, issuer: OidcIssuer,
                                                                 seeded: dict[str, Any]) -> None:
        issuer.lifetime, issuer.announced_lifetime = -30, 3600
        source = tokens(issuer)
        err = self._run(s3, source, seeded)
        assert err.type == "InvalidSourceConnector" and "HTTP 401" in str(err)
        assert source.fetches == 2


class TestHealthImagingBearer:
    """The review's spot check reads HealthImaging's DICOMweb with a bearer token when so configured."""

    def _imported(self, seeded: dict[str, Any], pacs: ServerProcess) -> list[Imported]:
        mi = make_medical_imaging(pacs.url)
        sets = mi.search_image_sets(datastoreId=seeded["ds"])["imageSetsMetadataSummaries"]
        by_study = {s["DICOMTags"]["DICOMStudyInstanceUID"]: s["imageSetId"] for s in sets}
        out: list[Imported] = []
        for study, members in sorted(seeded["studies"].items()):
            for series, sop in members:
                record = InstanceRecord(key=f"{study}/{sop}.dcm", size=1, etag="e", sop_instance_uid=sop,
                                        study_instance_uid=study, series_instance_uid=series,
                                        transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                        patient_fingerprint="p", study_fingerprint="s", series_fingerprint="se",
                                        content_id=sop)
                out.append(Imported(line=len(out) + 1, record=record, image_set_id=by_study[study]))
        return out

    def test_spot_check_with_bearer_tokens(self, issuer: OidcIssuer, seeded: dict[str, Any],
                                           pacs: ServerProcess) -> None:
        imported = self._imported(seeded, pacs)
        source = tokens(issuer)
        checker = SpotChecker(make_medical_imaging(pacs.url), BearerHttp(source), pacs.url, retry_delays=())
        assert checker.check_dicomweb(seeded["ds"], imported) == []
        assert source.fetches == 1
        # An expired token is replaced once, transparently.
        issuer.lifetime, issuer.announced_lifetime = 1, 3600
        expiring = tokens(issuer)
        expiring.token()
        time.sleep(2)
        issuer.lifetime = 600
        checker = SpotChecker(make_medical_imaging(pacs.url), BearerHttp(expiring), pacs.url, retry_delays=())
        assert checker.check_dicomweb(seeded["ds"], imported) == []
        assert expiring.fetches == 2

    def test_spot_check_when_no_token_can_be_had(self, issuer: OidcIssuer, seeded: dict[str, Any],
                                                 pacs: ServerProcess) -> None:
        imported = self._imported(seeded, pacs)
        mi = make_medical_imaging(pacs.url)
        issuer.down = True
        down = SpotChecker(mi, BearerHttp(tokens(issuer)), pacs.url, retry_delays=())
        with pytest.raises(ApplicationError) as info:
            down.check_dicomweb(seeded["ds"], imported)
        assert info.value.type == "DicomWebUnavailable" and not info.value.non_retryable
        issuer.down = False
        refused = SpotChecker(mi, BearerHttp(tokens(issuer, secret="nope")), pacs.url, retry_delays=())
        [problem] = refused.check_dicomweb(seeded["ds"], imported)
        assert "invalid_client" in problem and "nope" not in problem
        wrong_audience = SpotChecker(mi, BearerHttp(tokens(issuer, client="other-audience", secret="other-secret")),
                                     pacs.url, retry_delays=())
        problems = wrong_audience.check_dicomweb(seeded["ds"], imported)
        assert len(problems) == len(imported) and all("HTTP 403 AccessDeniedException" in p for p in problems)
