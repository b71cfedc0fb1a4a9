"""Free-port choice for tests and benches: blocks of ports, never promised twice."""

from __future__ import annotations

import socket

import pytest

from taxi_mlops.stack import process, redis_cluster


def test_a_block_is_free_at_every_offset_and_not_handed_out_again():
    offsets = redis_cluster.port_offsets(3)
    base = process.free_port_block(offsets)
    ports = [base + o for o in offsets]
    with socket.socket() as s:  # still free: nothing was left bound
        s.bind(("127.0.0.1", ports[-1]))
    assert set(ports) <= process._handed_out
    for _ in range(50):
        assert process.free_port() not in ports
        assert not set(ports) & {process.free_port_block((0, 1)) + o for o in (0, 1)}


def test_a_taken_port_inside_the_block_moves_the_block(monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    busy = taken.getsockname()[1]
    try:
        # Only bases whose block covers the busy port, then anything: the busy one is skipped.
        candidates = iter([busy - 1, busy - 2, busy + 100])
        monkeypatch.setattr(process._port_rng, "randrange", lambda a, b: next(candidates))
        monkeypatch.setattr(process, "_ephemeral_range", lambda: (busy + 2000, 60999))
        assert process.free_port_block((0, 1, 2)) == busy + 100
    finally:
        taken.close()


def test_no_room_below_the_ephemeral_range_says_so(monkeypatch):
    monkeypatch.setattr(process, "_ephemeral_range", lambda: (10500, 60999))
    with pytest.raises(RuntimeError, match="ip_local_port_range"):
        process.free_port_block((0, 10000))
    assert process.free_port() > 0  # a single port falls back to the kernel's choice
