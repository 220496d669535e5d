"""``python -m emulator --host 127.0.0.1 --port 8789 --data-dir .local/emulator``.

Every flag can also be set with an environment variable ``HIMIG_EMULATOR_<FLAG>`` (dashes as underscores,
e.g. ``HIMIG_EMULATOR_CLOCK=manual``); an explicit flag wins.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from emulator.app import build
from emulator.config import Settings
from emulator.faults import parse_fault_specs
from emulator.throttling import parse_rates


def _env(name: str, default: Any) -> Any:
    return os.environ.get("HIMIG_EMULATOR_" + name.upper().replace("-", "_"), default)


def _bool(text: Any) -> bool:
    return str(text).lower() in ("1", "true", "yes", "on")


def parse_credentials(text: str) -> dict[str, str]:
    """``--sigv4-credentials``: a JSON object of access key id -> secret key, or ``@file`` holding one."""
    if not text:
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--sigv4-credentials: not JSON (an object of access key id -> secret "
                                         "access key)") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                            for k, v in doc.items()):
        raise argparse.ArgumentTypeError("--sigv4-credentials: must be a JSON object of non-empty access key id "
                                         "-> non-empty secret access key strings")
    return doc


def _own_credentials() -> dict[str, str]:
    # The emulator's own keys (it signs its S3 calls with them) are the ones its local clients share.
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return {key: secret} if key and secret else {}


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str]:
    d = Settings(data_dir=Path("."))
    p = argparse.ArgumentParser(prog="python -m emulator", description="Local AWS HealthImaging emulator")
    p.add_argument("--host", default=_env("host", d.host))
    p.add_argument("--port", type=int, default=int(_env("port", d.port)))
    p.add_argument("--data-dir", type=Path, default=Path(_env("data-dir", ".local/emulator")))
    p.add_argument("--clock", choices=("auto", "manual"), default=_env("clock", d.clock),
                   help="auto: jobs progress on their own; manual: only via /_emulator/clock/advance or job advance")
    p.add_argument("--submitted-seconds", type=float, default=_opt_float(_env("submitted-seconds", None)),
                   help="minimum time a job stays SUBMITTED (default 0 auto, 1 manual)")
    p.add_argument("--in-progress-seconds", type=float, default=_opt_float(_env("in-progress-seconds", None)),
                   help="minimum time a job stays IN_PROGRESS (default 0 auto, 1 manual)")
    p.add_argument("--datastore-create-seconds", type=float,
                   default=float(_env("datastore-create-seconds", d.datastore_create_seconds)))
    p.add_argument("--threads", type=int, default=int(_env("threads", d.threads)),
                   help="S3 GET + parse worker threads shared by all jobs")
    p.add_argument("--max-running-jobs", type=int, default=int(_env("max-running-jobs", d.max_running_jobs)))
    p.add_argument("--max-files-per-job", type=int, default=int(_env("max-files-per-job", d.max_files_per_job)))
    p.add_argument("--max-bytes-per-job", type=int, default=int(_env("max-bytes-per-job", d.max_bytes_per_job)))
    p.add_argument("--max-file-bytes", type=int, default=int(_env("max-file-bytes", d.max_file_bytes)))
    p.add_argument("--max-nested-folders", type=int, default=int(_env("max-nested-folders", d.max_nested_folders)))
    p.add_argument("--max-concurrent-jobs", type=int,
                   default=int(_env("max-concurrent-jobs", d.max_concurrent_jobs)),
                   help="SUBMITTED + IN_PROGRESS jobs per data store before ServiceQuotaExceededException")
    p.add_argument("--max-body-bytes", type=int, default=int(_env("max-body-bytes", d.max_body_bytes)))
    p.add_argument("--idle-timeout-seconds", type=_positive_float,
                   default=_positive_float(_env("idle-timeout-seconds", d.idle_timeout_seconds)),
                   help="close a connection idle this long, or whose request's headers or body stall (default 60)")
    p.add_argument("--max-connections", type=int, default=int(_env("max-connections", d.max_connections)),
                   help="open connections (one thread each) beyond which a new one gets 503 (default 256)")
    p.add_argument("--region", default=_env("region", d.region))
    p.add_argument("--account-id", default=_env("account-id", d.account_id))
    p.add_argument("--store-instances", type=_bool, default=_bool(_env("store-instances", d.store_instances)),
                   help="keep imported P10 files content-addressed under DATA_DIR/blobs (true/false)")
    p.add_argument("--log-level", default=_env("log-level", "INFO"))
    p.add_argument("--mutation-seconds", type=float, default=float(_env("mutation-seconds", d.mutation_seconds)),
                   help="how long image-set mutations keep their image sets LOCKED, on the job clock")
    p.add_argument("--archive-after-days", type=_positive_float,
                   default=_positive_float(_env("archive-after-days", d.archive_after_days)),
                   help="days without a touch before an image set moves to ARCHIVE_INSTANT_ACCESS (job clock)")
    p.add_argument("--throttling", type=_on_off, default=str(_env("throttling", "on")),
                   help="per-operation token buckets with AWS's rates, answering 429 ThrottlingException (on/off)")
    p.add_argument("--throttle-rates", type=parse_rates, default=str(_env("throttle-rates", "")),
                   help='overrides: "Op=RATE:BURST,Op2=RATE:BURST" or JSON {"Op": {"rate": R, "burst": B}}')
    p.add_argument("--events", choices=("auto", "on", "off"), default=_env("events", d.events),
                   help="EventBridge PutEvents: auto = when AWS_ENDPOINT_URL_EVENTBRIDGE (or AWS_ENDPOINT_URL) is set")
    p.add_argument("--event-bus-name", default=_env("event-bus-name", d.event_bus_name))
    p.add_argument("--events-webhook-url", default=_env("events-webhook-url", None) or None,
                   help="also POST each event envelope (JSON) to this URL")
    p.add_argument("--events-max-attempts", type=int, default=int(_env("events-max-attempts", d.events_max_attempts)))
    p.add_argument("--events-image-set-id-key", choices=("imageSetId", "imagesetId", "both"),
                   default=_env("events-image-set-id-key", d.events_image_set_id_key))
    p.add_argument("--faults", type=parse_fault_specs, default=str(_env("faults", "")),
                   help="start-up faults: a JSON object or list, or @file.json (see emulator/README.md)")
    p.add_argument("--healthlake-datastore-create-seconds", type=float,
                   default=float(_env("healthlake-datastore-create-seconds", d.healthlake_datastore_create_seconds)),
                   help="how long a new HealthLake FHIR data store stays CREATING")
    p.add_argument("--healthlake-max-resource-bytes", type=int,
                   default=int(_env("healthlake-max-resource-bytes", d.healthlake_max_resource_bytes)),
                   help="largest FHIR resource (one NDJSON line, one $validate body) HealthLake accepts")
    p.add_argument("--dicomweb-auth", choices=("required", "off"), default=_env("dicomweb-auth", d.dicomweb_auth),
                   help="DICOMweb requests need SigV4 or an OIDC bearer token (required) or nothing (off)")
    p.add_argument("--oidc-issuer", default=_env("oidc-issuer", None) or None,
                   help="OIDC issuer URL whose RS256/ES256 bearer tokens DICOMweb accepts")
    p.add_argument("--oidc-audience", default=_env("oidc-audience", None) or None,
                   help="required 'aud' of bearer tokens (unchecked when unset)")
    p.add_argument("--oidc-jwks-url", default=_env("oidc-jwks-url", None) or None,
                   help="JWKS URL (default: jwks_uri of ISSUER/.well-known/openid-configuration, "
                        "else ISSUER/.well-known/jwks.json)")
    p.add_argument("--oidc-leeway-seconds", type=float,
                   default=float(_env("oidc-leeway-seconds", d.oidc_leeway_seconds)),
                   help="how far a bearer token's exp/nbf/iat may be off the emulator's clock (default 60)")
    p.add_argument("--sigv4", choices=("verify", "presence"), default=_env("sigv4", d.sigv4),
                   help="DICOMweb SigV4: recompute the signature (verify) or check its shape only (presence)")
    p.add_argument("--sigv4-credentials", type=parse_credentials, default=str(_env("sigv4-credentials", "")),
                   help="JSON object (or @file.json) of access key id -> secret access key that --sigv4 verify "
                        "knows, in addition to testing/testing and this process's AWS_ACCESS_KEY_ID")
    p.add_argument("--dicomweb-max-body-bytes", type=int,
                   default=int(_env("dicomweb-max-body-bytes", d.dicomweb_max_body_bytes)),
                   help="largest STOW-RS request body (default 1 GiB)")
    a = p.parse_args(argv)
    settings = Settings(
        data_dir=a.data_dir, host=a.host, port=a.port, clock=a.clock, submitted_seconds=a.submitted_seconds,
        in_progress_seconds=a.in_progress_seconds, datastore_create_seconds=a.datastore_create_seconds,
        threads=a.threads, max_running_jobs=a.max_running_jobs, max_files_per_job=a.max_files_per_job,
        max_bytes_per_job=a.max_bytes_per_job, max_file_bytes=a.max_file_bytes,
        max_nested_folders=a.max_nested_folders, max_concurrent_jobs=a.max_concurrent_jobs,
        max_body_bytes=a.max_body_bytes, idle_timeout_seconds=a.idle_timeout_seconds,
        max_connections=a.max_connections, region=a.region, account_id=a.account_id,
        store_instances=a.store_instances, mutation_seconds=a.mutation_seconds,
        archive_after_days=a.archive_after_days,
        throttling=a.throttling, throttle_rates=a.throttle_rates, events=a.events, event_bus_name=a.event_bus_name,
        events_webhook_url=a.events_webhook_url, events_max_attempts=a.events_max_attempts,
        events_image_set_id_key=a.events_image_set_id_key, faults=a.faults,
        healthlake_datastore_create_seconds=a.healthlake_datastore_create_seconds,
        healthlake_max_resource_bytes=a.healthlake_max_resource_bytes,
        dicomweb_auth=a.dicomweb_auth, oidc_issuer=a.oidc_issuer, oidc_audience=a.oidc_audience,
        oidc_jwks_url=a.oidc_jwks_url, dicomweb_max_body_bytes=a.dicomweb_max_body_bytes,
        oidc_leeway_seconds=a.oidc_leeway_seconds, sigv4=a.sigv4,
        sigv4_credentials={**d.sigv4_credentials, **_own_credentials(), **a.sigv4_credentials},
    )
    return settings, a.log_level


def _on_off(text: Any) -> bool:
    value = str(text).strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected on or off, not {text!r}")
    return value in ("on", "true", "1", "yes")


def _positive_float(text: Any) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, not {text!r}")
    return value


def _opt_float(text: Any) -> float | None:
    return None if text in (None, "") else float(text)


def main(argv: list[str] | None = None) -> int:
    settings, level = parse_args(argv)
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("emulator")
    emulator = build(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    emulator.start()
    log.info("HealthImaging emulator listening on %s (data dir %s, clock %s)", emulator.url, settings.data_dir,
             settings.clock)
    stop.wait()
    log.info("shutting down")
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
