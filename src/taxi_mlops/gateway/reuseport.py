"""The gateway's shared port: every instance listens on it, one of them takes the connections.

``gateway_instances`` processes bind the port with SO_REUSEPORT. Left to itself, the kernel
hashes each new connection to one of the listening sockets, so every instance serves a share.
On this 2-core machine that costs more than it gives (issue 11, measured at 300 requests/s
open loop): two busy gateways spent 2.7 ms of CPU per request against 1.8 ms for one, because
each shares fewer feature reads and model calls (coalesce.py) and both compete with the model
server for the cores. So by default (``gateway_standby``) a classic BPF program on the port's
reuseport group picks socket 0, the one that has listened longest, for every connection: the
first instance is active and the others are warm standbys. When the active one dies, the
kernel closes its socket and moves the next one into slot 0, so new connections reach a
standby at once, with its Feast client, model-server sessions and warm-up already done. No
proxy and no election: the kernel's own socket group is the switch.

Each instance also listens on a Unix socket of its own (``instance_socket``), so the
supervisor can ask a standby whether it is healthy without going through the shared port.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from pathlib import Path

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; Python's socket module lacks it
BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def steer_to_first(sock: socket.socket) -> None:
    """Send every new connection on ``sock``'s port to the group's socket 0.

    Called once ``sock`` listens: a TCP socket joins its port's reuseport group at listen(),
    and a program attached before that gives the socket a group of its own, so its listen()
    then fails with "address in use". The kernel keeps the program with the group (set by
    any member; the instances all set the same one). An index past the group's size falls
    back to the hash, so a group of one behaves as without it."""
    program = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", BPF_RET_K, 0, 0, 0))
    fprog = _SockFprog(1, ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def instance_socket(run_dir: Path, pid: int) -> Path:
    """Where the gateway process ``pid`` answers on its own (its health, for the supervisor)."""
    return run_dir / f"gateway-{pid}.sock"


def bind_instance_socket(run_dir: Path, pid: int) -> socket.socket:
    """The instance's own Unix socket, bound (uvicorn listens on it with the shared port).
    Sockets left by killed instances are removed: their pids are gone."""
    from taxi_mlops.pids import pid_alive

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("gateway-*.sock"):
        other = stale.stem.removeprefix("gateway-")
        if other.isdigit() and int(other) != pid and not pid_alive(int(other)):
            stale.unlink(missing_ok=True)
    path = instance_socket(run_dir, pid)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.set_inheritable(True)
    return sock
