"""A TLS-terminating proxy that requires a client certificate (Debian's haproxy), and certificates made here.

Stands in front of the plaintext Temporal dev server the way a Temporal Cloud endpoint or an mTLS ingress does:
the client must trust the server's CA, name the server right and present a certificate the proxy's CA signed.
haproxy rather than stunnel4: gRPC clients require ALPN ``h2`` on a TLS connection (tonic fails with
``H2NotNegotiated`` otherwise) and stunnel cannot offer it; haproxy terminates TLS with ``alpn h2`` and passes the
HTTP/2 stream on to the dev server's plaintext port unchanged (TCP mode).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port, wait_tcp

HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert), cwd=directory)
    return cert, key


def issue(directory: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca``: for a server (SAN localhost and 127.0.0.1) or a client."""
    cert, key, csr, ext = (directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr",
                           directory / f"{name}.ext")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
             cwd=directory)
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=directory)
    return cert, key


@dataclass
class Certificates:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from a CA the proxy does not trust

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        ca = make_ca(directory, "himig-test-ca")
        other = make_ca(directory, "other-ca")
        return cls(ca=ca[0], server=issue(directory, "server", ca, server=True),
                   client=issue(directory, "client", ca, server=False),
                   stranger=issue(directory, "stranger", other, server=False))


@dataclass
class TlsProxy:
    address: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_proxy(certs: Certificates, backend: str, directory: Path) -> TlsProxy:
    """haproxy on 127.0.0.1 forwarding to ``backend`` (host:port); only clients with a certificate of our CA."""
    assert HAPROXY, "haproxy is not installed"
    port = free_port()
    combined = directory / "server-combined.pem"
    combined.write_bytes(certs.server[0].read_bytes() + certs.server[1].read_bytes())
    log = directory / "haproxy.log"
    conf = directory / "haproxy.cfg"
    conf.write_text(
        "global\n  log stderr format raw local0 info\n"
        "defaults\n  mode tcp\n  log global\n  option tcplog\n"
        "  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
        "frontend temporal_tls\n"
        f"  bind 127.0.0.1:{port} ssl crt {combined} ca-file {certs.ca} verify required alpn h2\n"
        "  default_backend temporal\n"
        f"backend temporal\n  server dev {backend}\n")
    out = open(log, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT)

    try:
        wait_tcp(port, proc, timeout=15)
    except RuntimeError as err:
        raise RuntimeError(f"{err}: {log.read_text()}") from None
    return TlsProxy(address=f"127.0.0.1:{port}", proc=proc, log=log)
