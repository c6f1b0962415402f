"""Several threads of one process share its ring through try_write's lock."""

from __future__ import annotations

import struct
import sys
import threading
import time
from pathlib import Path

import pytest

import ringbuf

from ._rings import write_path  # noqa: F401 (both paths)

ID = struct.Struct("<II")


@pytest.mark.parametrize("checksum", [False, True])
def test_threads_share_a_ring_without_loss_or_tearing(rings_dir: Path, checksum: bool) -> None:
    threads, per_thread = 4, 20_000
    w = ringbuf.RingWriter.create(rings_dir, capacity_bytes=1 << 16, max_record_bytes=128,
                                  checksum=checksum, count_full_drops=False)
    r = ringbuf.RingReader.open(w.path)
    retries = [0] * threads

    def produce(t: int) -> None:
        for seq in range(per_thread):
            p = ID.pack(t, seq) + bytes([t + 1]) * (seq % 50)
            while not w.try_write(p):
                retries[t] += 1
                time.sleep(0)  # give up the GIL: the reader is a thread of this process

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    try:
        workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        for th in workers:
            th.start()
        expected = [0] * threads
        torn = lost_or_dup = got = 0
        ring_seq = 0
        while got < threads * per_thread:
            batch = r.read_batch(512)
            assert batch.first_seq == ring_seq or not batch
            for rec in batch:
                t, seq = ID.unpack_from(rec)
                if rec[8:] != bytes([t + 1]) * (seq % 50):
                    torn += 1
                if seq != expected[t]:
                    lost_or_dup += 1
                expected[t] = seq + 1
            got += len(batch)
            ring_seq += len(batch)
            r.commit()
            if not batch and not any(th.is_alive() for th in workers) and r.is_empty():
                break
        for th in workers:
            th.join()
    finally:
        sys.setswitchinterval(old)
    print(f"\n{threads} threads x {per_thread}: got={got} torn={torn} "
          f"lost_or_duplicated={lost_or_dup} retries={sum(retries)}")
    assert (got, torn, lost_or_dup) == (threads * per_thread, 0, 0)
    assert expected == [per_thread] * threads
    assert r.stats().written == threads * per_thread
    r.close()
    w.close()
