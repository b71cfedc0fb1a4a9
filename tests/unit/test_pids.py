"""Liveness of real processes, and serving markers: a multi-worker master counts only its own
live workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from taxi_mlops.pids import forget_serving, mark_serving, pid_alive, serving_children, stat_fields
from taxi_mlops.stack.process import wait_for

CHILD = ("import sys; from taxi_mlops.pids import mark_serving; "
         "mark_serving(sys.argv[1]); print('marked', flush=True); sys.stdin.read()")


def start_child(folder):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "marked"  # waits for the marker, no sleep
    return child


def test_counts_live_children_only(tmp_path):
    assert serving_children(tmp_path, os.getpid()) == 0  # no folder yet
    first, second = start_child(tmp_path), start_child(tmp_path)
    try:
        assert serving_children(tmp_path, os.getpid()) == 2
        first.kill()
        first.wait(10)
        assert serving_children(tmp_path, os.getpid()) == 1  # its marker stays, it does not count
    finally:
        second.kill()
        second.wait(10)
    assert serving_children(tmp_path, os.getpid()) == 0


def test_a_live_process_that_is_not_a_child_does_not_count(tmp_path):
    marker = mark_serving(tmp_path)  # this process, under its own parent's folder
    assert marker.parent.name == str(os.getppid())
    stranger = tmp_path / str(os.getpid()) / str(os.getppid())  # alive, but our parent, not our child
    stranger.parent.mkdir()
    stranger.touch()
    assert serving_children(tmp_path, os.getpid()) == 0
    assert serving_children(tmp_path, os.getppid()) == 1


def test_a_master_forgets_its_workers_markers_on_exit(tmp_path):
    child = start_child(tmp_path)
    try:
        assert serving_children(tmp_path, os.getpid()) == 1
        forget_serving(tmp_path)  # this process is the child's master
        assert not (tmp_path / str(os.getpid())).exists()
        assert serving_children(tmp_path, os.getpid()) == 0
    finally:
        child.kill()
        child.wait(10)


# The main thread leaves (pthread_exit, GIL released by ctypes) and turns zombie; another thread
# keeps the process, and its listening socket, alive: what a SIGKILL shows for a moment.
MAIN_THREAD_GONE = """
import ctypes, socket, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
threading.Thread(target=__import__("sys").stdin.read).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_zombie_main_thread_with_a_live_thread_is_alive():
    child = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_GONE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        assert wait_for(lambda: stat_fields(f"/proc/{child.pid}/stat")[0] == "Z", 10, 0.02)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it still takes connections
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait(10)
    assert not pid_alive(child.pid)
