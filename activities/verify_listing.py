"""Verify of a PACS by its listing alone (no file pulled): what QIDO-RS or C-FIND says each study holds.

The studies are enumerated as a pull enumerates them (``units()``: the study filter, or the date-split study search
with its findings), and each study's instances are listed by the connector's own instance search (QIDO-RS
``/studies/{uid}/instances``, or ``/series`` then per series; C-FIND at IMAGE level, per series when cut off).
Each instance becomes a `SourceInstance` keyed ``<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` (the key a pull would
give it under its landing prefix), so the checks of a bare source apply unchanged. What a listing cannot show
(a study the PACS does not have, rows without UIDs, an instance search the PACS cut off, the study search's own
findings) comes back as ``not_pulled`` differences with the pull's codes; an instance row without a series is
``unreadable``. A study the PACS refuses (403) is a ``Forbidden`` row, like a pull's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.sources.common import Landing, SourceForbidden, UnitOutcome, instance_key
from activities.sources.dicomweb import DicomwebConnector
from activities.sources.dimse import DimseConnector
from activities.verify_source import SourceInstance, SourceInventory
from contracts.s3uri import S3Location
from contracts.verify import DifferenceKind

# Keys relative to nothing: ``<study>/<series>/<sop>.dcm``, as a pull would name them under its landing prefix.
_NOWHERE = Landing(s3=None, prefix=S3Location("", ""))


def list_source(connector: DicomwebConnector | DimseConnector, progress: Callable[[], None]) -> tuple[SourceInventory,
                                                                                  list[dict[str, Any]]]:
    """The inventory every listed study gives, and the differences found while listing (kind ``not_pulled``)."""
    inv = SourceInventory()
    found: list[dict[str, Any]] = []
    for unit in connector.units():
        try:
            instances, outcome = connector.list_unit(unit, _NOWHERE)
        except SourceForbidden as err:
            outcome = UnitOutcome()
            outcome.fail(connector.unit_key(unit, _NOWHERE), "Forbidden", str(err))
            instances = {}
        for row in outcome.failures:
            found.append({"kind": DifferenceKind.NOT_PULLED.value, "count": 1, "key": row.key, "code": row.code,
                          "note": row.reason})
        for sop, series in sorted(instances.items()):
            inv.files += 1
            if not series:
                inv.unreadable.append(instance_key(_NOWHERE.prefix, unit, None, sop))
                continue
            key = instance_key(_NOWHERE.prefix, unit, series, sop)
            inv.studies.setdefault(unit, {}).setdefault(series, {})[sop] = SourceInstance(key)
        progress()
    return inv, found
