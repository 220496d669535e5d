"""Where and how to reach Temporal: address, namespace, TLS / mTLS and API key, resolved before connecting.

The settings follow the SDK's environment configuration (`temporalio.envconfig`), so the worker, ``himig`` and
the ``temporal`` CLI read the same names: ``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
``TEMPORAL_TLS``, ``TEMPORAL_TLS_CLIENT_CERT_PATH``, ``TEMPORAL_TLS_CLIENT_KEY_PATH``,
``TEMPORAL_TLS_SERVER_CA_CERT_PATH``, ``TEMPORAL_TLS_SERVER_NAME``, and a profile of a TOML file
(``TEMPORAL_CONFIG_FILE``, ``TEMPORAL_PROFILE``). ``HIMIG_TEMPORAL_ADDRESS`` / ``HIMIG_TEMPORAL_NAMESPACE`` win
when set (the local stack and older deployments use them).

Everything that can be checked without the network is checked here, so a wrong path or a certificate without
its key stops the process with exit code 2 and a line naming the variable, before anything connects. Secrets
(the API key, the private key) are never part of a message or a repr.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.envconfig import ClientConfigProfile, DataSource
from temporalio.service import TLSConfig

DEFAULT_ADDRESS = "127.0.0.1:7233"
DEFAULT_NAMESPACE = "default"

# What an operator sets for each TLS source (environment variable, or the key in a config-file profile).
_TLS_SOURCES = {
    "server_root_ca_cert": ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "tls.server_ca_cert_path"),
    "client_cert": ("TEMPORAL_TLS_CLIENT_CERT_PATH", "tls.client_cert_path"),
    "client_private_key": ("TEMPORAL_TLS_CLIENT_KEY_PATH", "tls.client_key_path"),
}


class TemporalConfigError(ValueError):
    """Temporal connection settings that cannot work; ``problems`` has one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class TemporalConnection:
    """The resolved arguments of `Client.connect` (certificates already read and checked)."""

    address: str
    namespace: str
    tls: TLSConfig | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)

    def mode(self) -> str:
        """How the connection is secured, in words for messages and logs (no secret in it)."""
        if self.tls is None:
            transport = "plaintext"
        elif self.tls.client_cert:
            transport = "mTLS with a client certificate"
        else:
            transport = "TLS"
        return transport + (", API key" if self.api_key else "")

    def hint(self) -> str:
        """What to check when the connection fails, for this mode."""
        if self.tls is None:
            return ("set TEMPORAL_ADDRESS (or HIMIG_TEMPORAL_ADDRESS), or start the local stack with "
                    "`himig stack up`; a server that requires TLS needs TEMPORAL_TLS=true or TLS settings")
        return ("check the address, the server CA (TEMPORAL_TLS_SERVER_CA_CERT_PATH) and server name "
                "(TEMPORAL_TLS_SERVER_NAME), and for mTLS the client certificate and key "
                "(TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH) the server trusts")


def host_port_problem(address: str) -> str | None:
    """Why ``address`` is not ``host:port`` (None when it is): the one check for every way it is set."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be host:port, got {address!r}"
    return None


def _read(source: DataSource | None, what: str, problems: list[str]) -> bytes | None:
    """The bytes of a TLS source (a path, or inline PEM data), checked to look like PEM."""
    if source is None:
        return None
    env_name, profile_key = _TLS_SOURCES[what]
    where = f"{env_name} (or {profile_key} in the config profile)"
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as err:
            problems.append(f"{where}: cannot read {source}: {err.strerror or type(err).__name__}")
            return None
    else:
        data = source.encode() if isinstance(source, str) else source
    if b"-----BEGIN " not in data:
        problems.append(f"{where}: not PEM data (expected a -----BEGIN ...----- block)")
        return None
    return data


def resolve(address_override: str | None = None, namespace_override: str | None = None,
            env: Mapping[str, str] | None = None) -> TemporalConnection:
    """Load the environment configuration (profile file + ``TEMPORAL_*``) and apply our overrides.

    Raises `TemporalConfigError` naming each variable that is wrong.
    """
    environ = dict(os.environ if env is None else env)
    try:
        profile = ClientConfigProfile.load(override_env_vars=environ)
    except Exception as err:  # the SDK's core raises RuntimeError/ValueError for a bad file or profile
        raise TemporalConfigError([f"TEMPORAL_CONFIG_FILE / TEMPORAL_PROFILE: {' '.join(str(err).split())}"]) from None
    problems: list[str] = []
    tls: TLSConfig | None = None
    api_key = profile.api_key or None
    tls_settings = profile.tls
    if tls_settings is not None and tls_settings.disabled is not True:
        ca = _read(tls_settings.server_root_ca_cert, "server_root_ca_cert", problems)
        cert = _read(tls_settings.client_cert, "client_cert", problems)
        key = _read(tls_settings.client_private_key, "client_private_key", problems)
        if (tls_settings.client_cert is None) != (tls_settings.client_private_key is None):
            problems.append("TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH: mTLS needs both the "
                            "client certificate and its private key")
        tls = TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key,
                        domain=tls_settings.server_name or None)
    elif api_key and (tls_settings is None or tls_settings.disabled is not True):
        tls = TLSConfig()  # an API key is only ever sent over TLS (the SDK's own default)
    if problems:
        raise TemporalConfigError(problems)
    address = address_override or profile.address or DEFAULT_ADDRESS
    namespace = namespace_override or profile.namespace or DEFAULT_NAMESPACE
    if problem := host_port_problem(address):
        raise TemporalConfigError([f"TEMPORAL_ADDRESS: {problem}"])
    return TemporalConnection(address=address, namespace=namespace, tls=tls, api_key=api_key,
                              rpc_metadata=dict(profile.grpc_meta))
