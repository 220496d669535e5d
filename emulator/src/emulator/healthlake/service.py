"""Build and run the HealthLake subset: backend (SQLite tables), import-job runner and the route dispatcher."""

from __future__ import annotations

from emulator.config import Settings
from emulator.healthlake.handlers import FhirRest, HealthLakeHandlers
from emulator.healthlake.jobs import FhirImportRunner
from emulator.healthlake.models import HealthLakeBackend
from emulator.healthlake.routes import HealthLakeService
from emulator.medicalimaging.clock import JobClock
from emulator.store import Store


class HealthLake:
    """Everything HealthLake needs, sharing the emulator's store and job clock."""

    def __init__(self, settings: Settings, store: Store, clock: JobClock) -> None:
        self.backend = HealthLakeBackend(settings, store, clock)
        self.runner = FhirImportRunner(self.backend, settings)
        self.dispatcher = HealthLakeService(HealthLakeHandlers(self.backend, self.runner),
                                            FhirRest(self.backend, settings.healthlake_max_resource_bytes))

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()
