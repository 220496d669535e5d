"""A real Orthanc PACS (Debian packages ``orthanc`` + ``orthanc-dicomweb``) for the source-connector tests.

Orthanc 1.10 has no bind-address option and listens on 0.0.0.0, so it is only ever started inside a private
network namespace that has nothing but ``lo`` (``make test`` runs pytest under ``unshare --net``). Started and
stopped by pid; a system Orthanc, if any, is left alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ServerProcess, free_port, wait_http

ORTHANC_AET = "ORTHANC"
OUR_AET = "MIGRATOR"
CAP_STUDIES, CAP_INSTANCES = 3, 4  # capped_orthanc's LimitFindResults / LimitFindInstances
INSTALL_HINT = "install with `apt-get install orthanc orthanc-dicomweb`; `make test` does this"


def network_interfaces() -> list[str]:
    """Interfaces of this process's network namespace (/proc/self/net is per namespace; /sys/class/net is not)."""
    with open("/proc/self/net/dev") as f:
        return sorted(line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line)


def dicomweb_plugin() -> str | None:
    try:
        out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    found = [line for line in out.splitlines() if line.endswith("libOrthancDicomWeb.so")]
    return found[0] if found else None


def skip_reason() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if not shutil.which("Orthanc"):
        return f"Orthanc is not installed: {INSTALL_HINT}"
    if not dicomweb_plugin():
        return f"the Orthanc DICOMweb plugin is not installed: {INSTALL_HINT}"
    if network_interfaces() != ["lo"]:
        return ("Orthanc listens on 0.0.0.0, so it only runs in a private network namespace with just `lo`: "
                "run the tests with `make test` (pytest under `unshare --net`)")
    return None


@dataclass
class Orthanc:
    server: ServerProcess
    dicom_port: int
    storage: Path | None = None  # Orthanc's StorageDirectory (attachments named by their UUID)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def dicomweb(self) -> str:
        return self.server.url + "/dicom-web"

    def upload(self, body: bytes) -> dict[str, Any]:
        req = urllib.request.Request(self.url + "/instances", data=body, method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.loads(resp.read()))

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def delete(self, path: str) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + path, method="DELETE"), timeout=30).close()

    def break_storage(self, sop_instance_uid: str) -> None:
        """Delete the stored file of one instance behind Orthanc's back: its index still lists the instance
        (QIDO-RS, C-FIND) but every retrieval of it fails, as with a PACS's damaged disk."""
        assert self.storage is not None
        uuid = self.get(f"/instances/{self._lookup(sop_instance_uid)}/attachments/dicom/info")["Uuid"]
        (self.storage / uuid[:2] / uuid[2:4] / uuid).unlink()

    def _lookup(self, sop_instance_uid: str) -> str:
        req = urllib.request.Request(self.url + "/tools/lookup", data=sop_instance_uid.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            [hit] = [h for h in json.loads(resp.read()) if h["Type"] == "Instance"]
        return str(hit["ID"])

    def put_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        """Declare (or redeclare) a DICOM peer, e.g. our C-MOVE destination: Orthanc maps its AE title to host:port."""
        body = json.dumps({"AET": ae_title, "Host": host, "Port": port}).encode()
        urllib.request.urlopen(urllib.request.Request(self.url + f"/modalities/{name}", data=body, method="PUT"),
                               timeout=30).close()

    def clear(self) -> None:
        for patient in self.get("/patients"):
            self.delete(f"/patients/{patient}")


def start_orthanc(work: Path, log_dir: Path, **overrides: Any) -> Orthanc:
    """An Orthanc on free ports; ``overrides`` are configuration options (e.g. ``LimitFindResults=3``)."""
    http_port, dicom_port = free_port(), free_port()
    db = work / "db"
    db.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "HIMIGTEST", "StorageDirectory": str(db), "IndexDirectory": str(db), "Plugins": [dicomweb_plugin()],
        "ConcurrentJobs": 2, "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "OrthancExplorerEnabled": False, "WebDavEnabled": False,
        "HttpCompressionEnabled": False, "DicomServerEnabled": True, "DicomAet": ORTHANC_AET, "DicomPort": dicom_port,
        # Checked, so a wrong called AE title is rejected as a real PACS would.
        "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
        "DicomCheckModalityHost": False, "UnknownSopClassAccepted": True,
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
        "DicomModalities": {"migrator": [OUR_AET, "127.0.0.1", free_port()]},
        "OverwriteInstances": False, "StableAge": 2, "SaveJobs": False, "DeidentifyLogs": False,
        # No storage cache: break_storage() must make retrievals fail at once.
        "MaximumStorageCacheSize": 0,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Host": "127.0.0.1", "Ssl": False},
        **overrides,
    }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log_path = log_dir / f"orthanc-{http_port}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns the handle for its lifetime
    proc = subprocess.Popen(["Orthanc", f"--logdir={work}", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    server = ServerProcess(url, http_port, proc, log_path)
    try:
        wait_http(url + "/system", proc)
    except Exception:
        server.stop()
        raise RuntimeError(f"Orthanc failed to start:\n{server.log_tail()}") from None
    return Orthanc(server, dicom_port, db)


@pytest.fixture(scope="session")
def capped_orthanc(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Orthanc]:
    """An Orthanc that cuts answers off as many PACS do: at most 3 studies per C-FIND/QIDO-RS search
    (``LimitFindResults``) and 4 instances per instance search (``LimitFindInstances``)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-capped"), log_dir, LimitFindResults=CAP_STUDIES,
                           LimitFindInstances=CAP_INSTANCES)
    yield server
    server.server.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Orthanc]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), log_dir)
    yield server
    server.server.stop()
