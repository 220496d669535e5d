"""Storage tiers: a set not touched for 30 days (job clock) is in Archive Instant Access; the documented "touch"
calls bring it back, the reads that are not touches (GetImageSet, SearchImageSets) leave it where it is."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from tests.conftest import emulator_admin
from tests.emulator.conftest import Importer, client_for, create_datastore, dicom_bytes

DAY = 86400


def _tier(mi: Any, ds: str, image_set: str) -> tuple[str, Any]:
    got = mi.get_image_set(datastoreId=ds, imageSetId=image_set)
    return got["storageTier"], got["lastAccessedAt"]


def _search_tier(mi: Any, ds: str, image_set: str) -> str:
    sets = mi.search_image_sets(datastoreId=ds, searchCriteria={})["imageSetsMetadataSummaries"]
    return next(s["storageTier"] for s in sets if s["imageSetId"] == image_set)


def test_idle_sets_archive_and_touches_bring_them_back(s3: Any, private_emulator: Any, bucket: str,
                                                        tmp_path: Path) -> None:
    server = private_emulator(data_dir=tmp_path / "tiers")
    mi = client_for(server)
    ds = create_datastore(mi)
    study = generate_uid()
    props = Importer(s3, mi, bucket, ds).run("tiers/", {"a.dcm": dicom_bytes(study, generate_uid(), generate_uid())})
    image_set = Importer(s3, mi, bucket, ds).results(props)["success"][0]["importResponse"]["imageSetId"]
    tier, created_access = _tier(mi, ds, image_set)
    assert tier == "FREQUENT_ACCESS" and created_access is not None

    emulator_admin(server.url, "clock/advance", {"seconds": 31 * DAY})
    assert _tier(mi, ds, image_set)[0] == "ARCHIVE_INSTANT_ACCESS"
    assert _search_tier(mi, ds, image_set) == "ARCHIVE_INSTANT_ACCESS"
    mi.list_image_set_versions(datastoreId=ds, imageSetId=image_set)
    tier, still = _tier(mi, ds, image_set)  # none of those reads was a touch
    assert tier == "ARCHIVE_INSTANT_ACCESS" and still == created_access

    mi.get_image_set_metadata(datastoreId=ds, imageSetId=image_set)["imageSetMetadataBlob"].read()
    tier, touched = _tier(mi, ds, image_set)
    assert tier == "FREQUENT_ACCESS" and touched > created_access
    assert _search_tier(mi, ds, image_set) == "FREQUENT_ACCESS"

    emulator_admin(server.url, "clock/advance", {"seconds": 29 * DAY})
    assert _tier(mi, ds, image_set)[0] == "FREQUENT_ACCESS"
    emulator_admin(server.url, "clock/advance", {"seconds": 2 * DAY})
    assert _tier(mi, ds, image_set)[0] == "ARCHIVE_INSTANT_ACCESS"

    # GetImageFrame is a touch too, and the last access survives a restart on the same data.
    doc = json.loads(gzip.decompress(
        mi.get_image_set_metadata(datastoreId=ds, imageSetId=image_set)["imageSetMetadataBlob"].read()))
    emulator_admin(server.url, "clock/advance", {"seconds": 31 * DAY})
    frame = next(f["ID"] for s_ in doc["Study"]["Series"].values() for i in s_["Instances"].values()
                 for f in i["ImageFrames"])
    mi.get_image_frame(datastoreId=ds, imageSetId=image_set, imageFrameInformation={"imageFrameId": frame})
    tier, framed = _tier(mi, ds, image_set)
    assert tier == "FREQUENT_ACCESS"
    server.stop()
    again = client_for(private_emulator(data_dir=tmp_path / "tiers", port=server.port))
    assert _tier(again, ds, image_set) == ("FREQUENT_ACCESS", framed)


def test_archive_after_days_must_be_a_positive_number() -> None:
    for bad in ("0", "-1", "nan", "inf", "x"):
        proc = subprocess.run([sys.executable, "-m", "emulator", "--archive-after-days", bad, "--port", "1"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "--archive-after-days" in proc.stderr, (bad, proc.stderr)
