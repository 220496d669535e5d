"""Build the connector an operator named in `MigrationInput.source_connector`, with the worker's secrets."""

from __future__ import annotations

from dataclasses import dataclass

from activities.sources.common import UNIT_ATTEMPTS, UNIT_BACKOFF_SECONDS, Connector
from activities.sources.dicomweb import DicomwebAuth, DicomwebConnector
from activities.sources.dimse import DimseConnector
from activities.sources.local import LocalConnector
from contracts.sources import DicomwebSource, DimseSource, LocalSource


@dataclass(frozen=True)
class SourceSettings:
    """Worker-side settings of the connectors (from `worker.settings.Settings`; never from workflow input)."""

    dicomweb_auth: DicomwebAuth | None = None
    # Normalised scheme://host:port origins a `dicomweb` source may name; required once credentials are set.
    dicomweb_allowed_origins: tuple[str, ...] = ()
    timeout_seconds: float = 60.0
    # Directories a `local` source may be under; empty refuses every `local` source.
    local_roots: tuple[str, ...] = ()
    # Tries of one unit (a study, a file) before it becomes a failed row, and the first pause between them.
    unit_attempts: int = UNIT_ATTEMPTS
    unit_backoff_seconds: float = UNIT_BACKOFF_SECONDS


def connector_for(config: LocalSource | DicomwebSource | DimseSource, settings: SourceSettings) -> Connector:
    if isinstance(config, LocalSource):
        return LocalConnector(config, settings.local_roots)
    if isinstance(config, DicomwebSource):
        return DicomwebConnector(config, settings.dicomweb_auth, settings.timeout_seconds,
                                 settings.dicomweb_allowed_origins)
    return DimseConnector(config, settings.timeout_seconds)
