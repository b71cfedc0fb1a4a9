"""The prediction log's write-ahead spool (``streaming/spool.py``): files only, no Kafka."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from taxi_mlops.streaming import spool


def test_acknowledged_segments_are_deleted_and_the_rest_kept(tmp_path):
    s = spool.Spool(tmp_path, segment_records=3)
    seqs = [s.append(b'{"n": %d}' % i) for i in range(7)]  # segments 0-2, 3-5, 6
    assert seqs == list(range(7)) and s.pending() == 7
    for seq in (0, 1, 2, 4):
        s.acknowledged(seq)
    assert sorted(p.name for p in s.dir.glob("*.log")) == ["3.log", "6.log"]  # 0-2 all acked: gone
    assert spool.unacknowledged(s.dir) == [b'{"n": 3}', b'{"n": 5}', b'{"n": 6}']
    assert s.close() == 3 and s.dir.exists()  # left for the next process
    s2 = spool.Spool(tmp_path / "other", segment_records=3)
    s2.acknowledged(s2.append(b"x"))
    assert s2.close() == 0 and not s2.dir.exists()


def test_a_torn_last_line_is_skipped(tmp_path):
    (tmp_path / "0.log").write_bytes(b'0 {"a": 1}\n1 {"b": 2}\n2')
    (tmp_path / "0.acks").write_bytes(b"0\n")
    assert spool.unacknowledged(tmp_path) == [b'{"b": 2}']


def test_what_a_killed_process_appended_is_on_disk(tmp_path):
    code = (f"import os, signal\nfrom taxi_mlops.streaming import spool\n"
            f"s = spool.Spool({str(tmp_path)!r}, segment_records=10)\n"
            "for i in range(25): s.append(b'v%d' % i)\n"
            "for i in range(0, 25, 2): s.acknowledged(i)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    [folder] = list(tmp_path.iterdir())
    assert spool.unacknowledged(folder) == [b"v%d" % i for i in range(1, 25, 2)]


def test_only_dead_processes_spools_are_claimed_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30)
    dead_pid = int(dead.stdout)
    (tmp_path / str(dead_pid)).mkdir()
    (tmp_path / str(os.getpid())).mkdir()                    # alive: ours
    (tmp_path / f"777{spool.CLAIMED}{dead_pid}").mkdir()     # a recovery that died: again
    claimed = sorted(p.name for p in spool.claim_orphans(tmp_path))
    assert claimed == sorted([f"{dead_pid}{spool.CLAIMED}{os.getpid()}", f"777{spool.CLAIMED}{os.getpid()}"])
    assert list(spool.claim_orphans(tmp_path)) == []         # claimed by a live process: left alone
