"""The private server: ports that survive a restart, and a restart on the same port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sidecar.server.embedded import EmbeddedServer, _ephemeral_low, free_port


def test_free_port_is_outside_the_ephemeral_range() -> None:
    """No outgoing connection can be given the port, so none can self-connect and hold it."""
    low = _ephemeral_low()
    if low == 0:
        pytest.fail("this Linux machine must expose /proc/sys/net/ipv4/ip_local_port_range")
    ports = {free_port() for _ in range(50)}
    assert all(20000 <= p < low for p in ports), sorted(ports)
    assert len(ports) > 1  # random, so two fixtures started together do not collide
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_server_restarts_on_its_port_after_sigkill(server_binary: str, tmp_path: Path) -> None:
    server = EmbeddedServer(binary=server_binary, data_dir=tmp_path)
    with server:
        port = server.port
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        for _ in range(200):  # clients reconnecting to the dead port meanwhile
            with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
                sock.connect(("127.0.0.1", port))
        server.start()
        assert server.port == port and server.ping()
