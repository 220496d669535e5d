"""Wiring: build the store, backend, job runner and HTTP server from :class:`~emulator.config.Settings`."""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass

import pydicom

from emulator.admin import AdminApi
from emulator.config import Settings
from emulator.dicomweb.routes import DicomWebApi
from emulator.healthlake.service import HealthLake
from emulator.medicalimaging.clock import JobClock
from emulator.medicalimaging.handlers import MedicalImagingHandlers
from emulator.medicalimaging.jobs import JobRunner
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.protocol import RestJsonService
from emulator.resilience import Resilience
from emulator.server import EmulatorHTTPServer
from emulator.store import Store

log = logging.getLogger("emulator")


@dataclass
class Emulator:
    settings: Settings
    store: Store
    backend: MedicalImagingBackend
    runner: JobRunner
    server: EmulatorHTTPServer
    resilience: Resilience | None = None  # throttling, faults, events
    healthlake: HealthLake | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.server.server_address[1]}"

    def start(self) -> threading.Thread:
        """Start the job runner and serve HTTP on a background thread."""
        if self.resilience is not None:
            self.resilience.start()
        self.runner.start()
        if self.healthlake is not None:
            self.healthlake.start()
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.runner.stop()
        if self.healthlake is not None:
            self.healthlake.stop()
        if self.resilience is not None:
            self.resilience.stop()  # after the runner: delivers the events of its last transitions
        self.store.close()


def build(settings: Settings) -> Emulator:
    # Import is about whether a file can be stored, not whether every value is pedantically valid; pydicom's
    # per-value validation warnings would also flood the log (and could echo patient data into it).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom\..*")
    logging.getLogger("pydicom").setLevel(logging.ERROR)

    store = Store(settings.data_dir)
    clock = JobClock(settings.clock, store)
    backend = MedicalImagingBackend(settings, store, clock)
    resilience = Resilience(settings, backend)  # also installs backend.events
    runner = JobRunner(backend, settings, store, faults=resilience.faults)
    api = RestJsonService("medical-imaging", MedicalImagingHandlers(backend, runner),
                          on_request=resilience.before_operation, on_response=resilience.after_operation)
    admin = AdminApi(backend, runner, settings)
    admin.on_reset.append(resilience.reset)
    # Order matters: admin first; DICOMweb (/datastore/{id}/studies...) and HealthLake (json protocol keyed on
    # X-Amz-Target) go before the rest-json API so its looser patterns never shadow them.
    # HealthLake claims only X-Amz-Target: HealthLake.* on POST / and /datastore/{id}/r4/...
    healthlake = HealthLake(settings, store, clock)
    # DICOMweb WADO-RS draws on the same token buckets as the rest-json API (AWS publishes rates for four actions).
    dicomweb = DicomWebApi(backend, settings, throttle=resilience.throttler.check)
    server = EmulatorHTTPServer((settings.host, settings.port),
                                [resilience.admin, admin, healthlake.dispatcher, dicomweb, api],
                                settings.max_body_bytes, idle_timeout=settings.idle_timeout_seconds,
                                max_connections=settings.max_connections)
    return Emulator(settings, store, backend, runner, server, resilience, healthlake=healthlake)
