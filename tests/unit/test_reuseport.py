"""The gateway's shared port on the real kernel: with the steering program every connection
reaches the first listener, the next one takes over when it closes, and a newcomer waits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from taxi_mlops.gateway import reuseport


def _bound(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _listening(port: int, steer: bool = True) -> socket.socket:
    sock = _bound(port)
    sock.listen(512)
    if steer:
        reuseport.steer_to_first(sock)
    sock.setblocking(False)
    return sock


def _accepted(sock: socket.socket) -> int:
    """Connections waiting in ``sock``'s accept queue (accepted and closed here)."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


@pytest.fixture
def group():
    first = _listening(0)
    port = first.getsockname()[1]
    second = _listening(port)
    opened = [first, second]
    yield port, opened
    for sock in opened:
        sock.close()


def test_every_connection_reaches_the_first_listener(group):
    port, (first, second) = group
    clients = _connect(port, 30)
    assert (_accepted(first), _accepted(second)) == (30, 0)
    for c in clients:
        c.close()


def test_the_standby_takes_the_connections_once_the_active_socket_closes(group):
    port, (first, second) = group
    first.close()
    clients = _connect(port, 30)
    assert _accepted(second) == 30
    for c in clients:
        c.close()


def test_a_late_listener_waits_even_without_setting_the_program_itself(group):
    port, opened = group
    late = _listening(port, steer=False)  # the group keeps the program its members set
    opened.append(late)
    clients = _connect(port, 30)
    assert [_accepted(s) for s in opened] == [30, 0, 0]
    for c in clients:
        c.close()


def test_without_the_program_the_kernel_spreads_connections():
    """The contrast the steering is for: hashed, both listeners get a share."""
    first = _listening(0, steer=False)
    port = first.getsockname()[1]
    second = _listening(port, steer=False)
    try:
        clients = _connect(port, 200)
        counts = _accepted(first), _accepted(second)
        assert sum(counts) == 200 and min(counts) > 0, counts
        for c in clients:
            c.close()
    finally:
        first.close()
        second.close()


def test_the_instance_socket_is_private_and_stale_ones_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = reuseport.instance_socket(tmp_path, dead.pid)
    stale.touch()
    alive = reuseport.instance_socket(tmp_path, os.getppid())  # a live process's: kept
    alive.touch()
    sock = reuseport.bind_instance_socket(tmp_path, os.getpid())
    try:
        path = reuseport.instance_socket(tmp_path, os.getpid())
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
        assert not stale.exists() and alive.exists()
    finally:
        sock.close()
