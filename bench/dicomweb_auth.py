"""What DICOMweb authentication costs: QIDO-RS requests/s against the emulator per way of authenticating.

Starts its own moto server, two emulators (``--sigv4 verify``, the default, and ``--sigv4 presence``, the old
shape-only check) and a local OIDC issuer, all on 127.0.0.1, then times ``BENCH_N`` (default 300) sequential
``GET /studies?limit=1`` on one keep-alive session for:

* SigV4, presence only (the baseline);
* SigV4, verified (the signature recomputed with botocore's signer);
* an OIDC bearer token from the client-credentials token source (cached: one token request in all).

Prints requests/s and the ratio to the baseline, and the token requests made.

    .venv/bin/python bench/dicomweb_auth.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from activities.client_credentials import ClientCredentials, TokenSource
from tests.conftest import make_medical_imaging
from tests.emulator.conftest import create_datastore
from tests.support.oidc_issuer import AUDIENCE, BearerAuth, OidcIssuer, SigV4RequestsAuth
from tests.support.servers import FAKE_AWS_ENV, start_emulator, start_moto

N = int(os.environ.get("BENCH_N", "300"))


def rate(session: requests.Session, url: str, before: Callable[[], None] = lambda: None) -> float:
    before()
    session.get(url, timeout=30).raise_for_status()  # warm the connection (and caches) first
    started = time.perf_counter()
    for _ in range(N):
        before()
        session.get(url, params={"limit": 1}, timeout=30).raise_for_status()
    return N / (time.perf_counter() - started)


def main() -> None:
    os.environ.update(FAKE_AWS_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicomweb-auth-"))
    issuer = OidcIssuer().start()
    issuer.register("bench", "bench-secret", AUDIENCE)
    moto = start_moto(tmp)
    oidc = ["--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE]
    verify = start_emulator(tmp / "verify", moto.url, tmp, extra_args=oidc)
    presence = start_emulator(tmp / "presence", moto.url, tmp, extra_args=[*oidc, "--sigv4", "presence"])
    try:
        results: dict[str, float] = {}
        for name, server in (("sigv4-presence", presence), ("sigv4-verify", verify)):
            url = f"{server.url}/datastore/{create_datastore(make_medical_imaging(server.url))}/studies"
            s = requests.Session()
            s.auth = SigV4RequestsAuth()
            results[name] = rate(s, url)
        tokens = TokenSource(ClientCredentials(issuer.token_url, "bench", "bench-secret"))
        url = f"{verify.url}/datastore/{create_datastore(make_medical_imaging(verify.url))}/studies"
        s = requests.Session()

        def fresh_header() -> None:
            s.auth = BearerAuth(tokens.token())  # asked per request, as the connector does

        results["oidc-bearer"] = rate(s, url, fresh_header)
        base = results["sigv4-presence"]
        print(f"DICOMweb QIDO-RS, {N} sequential requests each")
        for name, value in results.items():
            print(f"  {name:16s} {value:8.1f} req/s   x{value / base:.2f} of sigv4-presence")
        print(f"  token requests for {N + 1} bearer requests: {tokens.fetches}")
    finally:
        verify.stop()
        presence.stop()
        moto.stop()
        issuer.stop()


if __name__ == "__main__":
    main()
