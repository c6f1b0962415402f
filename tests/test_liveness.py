"""Producer liveness by lock, across PID namespaces and forks; a ring removed under
its producer (issue 10, finding 1).

The daemon decides "producer gone" from the lock the producer holds on its
ring file (``ringbuf._layout``), never from the header's pid alone: a
producer in another PID namespace has another pid here, and pids get reused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ringbuf
from collector import Analytics
from collector.testing import Daemon, RedisServer, account, producer_ids, tally_stream, wait_until
from tests._rings import drain, small

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_ring_gone_under_a_live_producer_is_replaced_and_its_loss_counted(
        rings_dir: Path, how: str) -> None:
    """``rm`` (or a move, as into quarantine/) of a live producer's ring: within about a
    second the client opens a new ring, counts what the old one held unread, and every
    record after that is readable again."""
    a = Analytics(small(rings_dir)).start()
    for i in range(3):
        assert a.record_hit({"seq": i})
    first = a.ring_path
    assert first is not None
    if how == "removed":
        os.unlink(first)
    else:
        (rings_dir / "elsewhere").mkdir()
        os.rename(first, rings_dir / "elsewhere" / Path(first).name)
    into_old = 3
    seq = 3
    deadline = time.monotonic() + 10
    while a.ring_path == first:
        assert time.monotonic() < deadline, "the client never noticed its ring was gone"
        assert a.record_hit({"seq": seq})
        seq += 1
        if a.ring_path == first:
            into_old += 1
        time.sleep(0.01)
    for _ in range(5):
        assert a.record_hit({"seq": seq})
        seq += 1
    st = a.stats()
    print(f"\nring {how}: {into_old} records went into the gone ring, "
          f"lost_ring_gone={st.lost_ring_gone}, rings_opened={st.rings_opened}")
    assert st.lost_ring_gone == into_old  # nothing committed them: all counted lost
    assert st.rings_opened == 2
    new = a.ring_path
    assert new is not None and Path(new).exists()
    assert [r["seq"] for r in drain(new)] == list(range(into_old, seq))
    a.stop()


PARENT_THAT_FORKS = """
import os, sys, time
from collector import Analytics
a = Analytics({"rings_dir": sys.argv[1], "ring_capacity_bytes": 65536,
               "max_record_bytes": 1024}).start()
a.record_hit({"seq": 0})
pid = os.fork()
if pid == 0:  # the child lives on after its parent and never records
    time.sleep(120)
    os._exit(0)
print(a.ring_path, pid, flush=True)
time.sleep(120)
"""


def test_a_forked_child_does_not_keep_its_parents_ring_alive(rings_dir: Path) -> None:
    """The child inherits the ring's descriptor (and so the lock); the client's at-fork
    hook closes it, so once the parent is killed its ring reads as dead although the
    child still runs."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT_THAT_FORKS, str(rings_dir)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    path, child = parent.stdout.readline().split()  # type: ignore[union-attr]
    try:
        with ringbuf.RingProbe.open(path) as probe:
            assert probe.stats().producer_alive
            parent.kill()
            parent.wait(30)
            wait_until(lambda: not probe.stats().producer_alive, 10,
                       "the killed parent's ring to read as dead")
            os.kill(int(child), 0)  # the child is still running
    finally:
        parent.kill()
        parent.wait(30)
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


PRODUCER_IN_NAMESPACE = """
import os, sys, time
from collector import Analytics
from collector.testing import authz_record
a = Analytics({"rings_dir": sys.argv[1], "ring_capacity_bytes": 65536,
               "max_record_bytes": 1024}).start()
print(os.getpid(), a.ring_path, flush=True)
for seq in range(20):
    assert a.record_hit(authz_record(0, seq))
    time.sleep(0.2)
open(sys.argv[2], "w").close()  # alive until after this: the test knows it is done
sys.stdout.flush()
os._exit(0)  # no stop(): the ring is left unclosed, its lock dies with the process
"""


def test_producer_in_its_own_pid_namespace(tmp_path: Path, rings_dir: Path,
                                           redis_server: RedisServer) -> None:
    """Needs root (``unshare --pid``); CI runs as root.

    A producer under ``unshare --pid --fork --mount-proc`` (pid 1 there; pid 1 here is
    init, with another start time) writes 20 records over 4 s: all are delivered, and
    its ring is removed only after it exits.
    """
    client = redis_server.client()
    done = tmp_path / "producer-done"
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
             PRODUCER_IN_NAMESPACE, str(rings_dir), str(done)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        pid_there, ring = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert pid_there == "1"
        while not done.exists():  # the producer is alive until after ``done`` appears
            there = Path(ring).exists()
            assert there or done.exists(), "the ring of a live producer was removed"
            time.sleep(0.05)
        assert proc.wait(30) == 0
        wait_until(lambda: not Path(ring).exists(), 30, "the ring removed after its producer")
        got = account(tally_stream(client), producer_ids(1, 20))
        print(f"\nproducer in its own PID namespace: {got}")
        assert got.ok
        assert "Removed the drained ring of a finished producer." in daemon.log_text()
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_the_supervisor_never_maps_a_ring(tmp_path: Path, rings_dir: Path,
                                          redis_server: RedisServer) -> None:
    """The supervisor reads ring headers with pread: none of its mappings is a ring."""
    daemon = Daemon.write(tmp_path, redis_server.url).start()
    try:
        w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=1024)
        assert w.try_write(b"\x80")
        wait_until(lambda: daemon.readyz()[1]["rings"] == 1, 30, "the ring served")
        assert daemon.proc is not None
        maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
        assert str(rings_dir) not in maps
        flusher_maps = "".join(Path(f"/proc/{pid}/maps").read_text()
                               for pid in daemon.flusher_pids())
        assert w.path in flusher_maps  # the flusher that serves it does map it
        w.close()
        assert daemon.stop() == 0
    finally:
        daemon.close()
