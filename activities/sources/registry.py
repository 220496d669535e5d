"""Build the connector an operator named in `MigrationInput.source_connector`, with the worker's secrets."""

from __future__ import annotations

from dataclasses import dataclass

from activities.sources.common import UNIT_ATTEMPTS, UNIT_BACKOFF_SECONDS, Connector
from activities.sources.dicomweb import DicomwebAuth, DicomwebConnector
from activities.sources.dimse import RETRIEVALS_PER_SOURCE, DimseConnector
from activities.sources.local import LocalConnector
from activities.sources.move_receiver import MoveDestination
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
    # Where this worker receives C-MOVEs (None: a `dimse` source with retrieve "move" is refused).
    dimse_move: MoveDestination | None = None
    # Concurrent C-GETs/C-MOVEs against one PACS from this process, whatever the number of pulls.
    dimse_retrievals_per_source: int = RETRIEVALS_PER_SOURCE


def connector_for(config: LocalSource | DicomwebSource | DimseSource, settings: SourceSettings) -> Connector:
    if isinstance(config, LocalSource):
        return LocalConnector(config, settings.local_roots)
    if isinstance(config, DicomwebSource):
        return DicomwebConnector(config, settings.dicomweb_auth, settings.timeout_seconds,
                                 settings.dicomweb_allowed_origins)
    return DimseConnector(config, settings.timeout_seconds, settings.dimse_move, settings.dimse_retrievals_per_source,
                          settings.unit_attempts, settings.unit_backoff_seconds)
