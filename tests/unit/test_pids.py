"""Serving markers: a multi-worker master counts only its own live workers."""

from __future__ import annotations

import os
import subprocess
import sys

from taxi_mlops.pids import forget_serving, mark_serving, serving_children

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
