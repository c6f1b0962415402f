"""collector.Analytics against real rings: round trips, drops, conversions, stop, config.

Forks and threads are in ``test_analytics_processes.py``.

Records are read back from the ring files with ringbuf.RingReader (the
daemon's side) and decoded with plain ``msgpack.unpackb``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import logging
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgpack
import pytest

import ringbuf
from collector import Analytics, ConfigError, RecordTooLarge
from collector.testing import wait_until

from ._rings import (
    AUTHZ,
    check_sequence,
    drain,
    rings,
    small,
    write_path,  # noqa: F401 (both paths)
)


def test_round_trip_decodes_to_what_was_sent(rings_dir: Path) -> None:
    with Analytics(small(rings_dir)) as a:
        sent = [dict(AUTHZ, seq=i) for i in range(300)]
        got: list[Any] = []
        for i, rec in enumerate(sent):
            assert a.record_hit(rec) is True
            if i % 100 == 99:  # keep the small ring from filling
                got.extend(drain(a.ring_path))  # type: ignore[arg-type]
        path = a.ring_path
        assert path is not None and Path(path).name.startswith(f"{os.getpid()}-")
        assert oct(Path(path).stat().st_mode & 0o777) == "0o600"
        assert got == sent
        check_sequence([r["seq"] for r in got], 300)
        st = a.stats()
        assert st.written == 300 and st.dropped_in_ring == 0 and st.state == "running"
    assert a.state == "stopped"
    with ringbuf.RingReader.open(path) as r:
        assert r.stats().closed


def test_the_active_path_is_named(rings_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In a log line at start and in stats(); ring_checksum keeps to the pure path."""
    active = ringbuf.ring_path()  # the param of this run (tests/_rings.py)
    with caplog.at_level(logging.INFO, logger="collector.analytics"):
        a = Analytics(small(rings_dir))
        c = Analytics(small(rings_dir, ring_checksum=True))
    assert f"analytics client path={active}" in caplog.text
    assert "why='ring_checksum'" in caplog.text
    if active == "pure":
        assert f"why='{ringbuf._native.PURE_ENV}=1'" in caplog.text
    for client, path in ((a, active), (c, "pure")):
        with client:
            assert client.record_hit(dict(AUTHZ)) and client.record_hit(dict(AUTHZ))
            assert client.stats().path == path and client.stats().written == 2
            got = drain(client.ring_path)  # type: ignore[arg-type]
            assert [r["username"] for r in got] == ["alice"] * 2


@pytest.mark.parametrize("encoder", ["ormsgpack", "msgpack"])
def test_both_encoders_write_the_same_bytes(rings_dir: Path, encoder: str) -> None:
    rec = dict(AUTHZ, blob=b"\x00\xff", nested={"a": [1, 2.5, None, True]},
               when=datetime.datetime(2026, 11, 26, 20, 37, 5, 123456, tzinfo=datetime.UTC))
    with Analytics(small(rings_dir, encoder=encoder)) as a:
        assert a.record_hit(rec)
        with ringbuf.RingReader.open(a.ring_path) as r:  # type: ignore[arg-type]
            raw = r.read_batch(1)[0]
    expected = dict(rec, when="2026-11-26T20:37:05.123456+00:00")
    assert raw == msgpack.packb(expected)
    assert msgpack.unpackb(raw) == expected


def test_disabled_is_a_no_op(rings_dir: Path) -> None:
    a = Analytics(small(rings_dir, enabled=False))
    assert a.enabled is False
    assert a.record_hit(AUTHZ) is False
    assert a.record_hit({"anything": object()}) is False  # never an error
    a.start()
    assert a.stop() is True
    assert rings(rings_dir) == []
    assert a.stats().written == 0


def test_drop_policy_counts_in_the_ring_header(rings_dir: Path) -> None:
    with Analytics(small(rings_dir, ring_capacity_bytes=4096, max_record_bytes=512)) as a:
        results = [a.record_hit(dict(AUTHZ, seq=i)) for i in range(100)]
        accepted = results.count(True)
        assert 0 < accepted < 100
        assert results == [True] * accepted + [False] * (100 - accepted)
        st = a.stats()
        assert st.written == accepted and st.dropped_in_ring == 100 - accepted
        with ringbuf.RingReader.open(a.ring_path) as r:  # type: ignore[arg-type]
            assert r.stats().dropped_full == 100 - accepted  # what the daemon exports
        assert [rec["seq"] for rec in drain(a.ring_path)] == list(range(accepted))  # type: ignore[arg-type]
        assert a.record_hit(AUTHZ) is True  # room again


def test_block_policy_waits_then_drops_and_counts(rings_dir: Path) -> None:
    cfg = small(rings_dir, ring_capacity_bytes=4096, max_record_bytes=512,
                full_policy="block", block_timeout_ms=20)
    with Analytics(cfg) as a:
        while a.record_hit(AUTHZ):
            pass
        st = a.stats()
        # the failed attempts while waiting were not counted, only the final drop
        assert st.dropped_block_timeout == 1 and st.dropped_in_ring == 1
        with ringbuf.RingReader.open(a.ring_path) as r:  # type: ignore[arg-type]
            assert r.stats().dropped_full == 1


def test_block_policy_succeeds_when_a_reader_frees_room(rings_dir: Path) -> None:
    cfg = small(rings_dir, ring_capacity_bytes=4096, max_record_bytes=512,
                full_policy="block", block_timeout_ms=30_000)
    n = 200  # the ring holds about 10 of them
    with Analytics(cfg) as a:
        reader = ringbuf.RingReader.open(a.ring_path)  # type: ignore[arg-type]
        got: list[int] = []
        done = threading.Event()

        def consume() -> None:
            # start reading only once the producer really waits for room
            wait_until(lambda: a.stats().block_waits >= 1, 30, "the producer to block")
            while True:
                finished = done.is_set()
                batch = reader.read_batch(1000)
                got.extend(msgpack.unpackb(b)["seq"] for b in batch)
                reader.commit()
                if finished and not batch:
                    return
                if not batch:
                    done.wait(0.001)

        t = threading.Thread(target=consume)
        t.start()
        results = [a.record_hit(dict(AUTHZ, seq=i)) for i in range(n)]
        done.set()
        t.join(30)
        reader.close()
        assert results == [True] * n
        check_sequence(got, n)
        st = a.stats()
        assert st.block_waits >= 1
        assert st.dropped_block_timeout == 0 and st.dropped_in_ring == 0


def test_block_policy_waiter_returns_false_when_stopped(rings_dir: Path) -> None:
    cfg = small(rings_dir, ring_capacity_bytes=4096, max_record_bytes=512,
                full_policy="block", block_timeout_ms=60_000)
    a = Analytics(cfg).start()
    result: list[int] = []

    def produce() -> None:  # nobody reads the ring: the first full one blocks
        n = 0
        while a.record_hit(dict(AUTHZ, seq=n)):
            n += 1
        result.append(n)

    t = threading.Thread(target=produce)
    t.start()
    wait_until(lambda: a.stats().block_waits >= 1, 30, "the producer to block")
    path = a.ring_path
    a.stop()
    t.join(30)  # far less than the 60 s bound: stop() ends the wait
    assert not t.is_alive() and len(result) == 1  # the blocked call returned False
    assert a.stats().dropped_after_stop == 1
    assert [r["seq"] for r in drain(path)] == list(range(result[0]))


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_documented_conversions(rings_dir: Path) -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    rec = {
        "dt": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "aware": datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
        "d": datetime.date(2026, 1, 2),
        "t": datetime.time(3, 4, 5),
        "set": {3, 1, 2},
        "frozen": frozenset({"b", "a"}),
        "tuple": (1, "x"),
        "bytes": b"\x01",
        "bytearray": bytearray(b"\x02"),
        "dec": decimal.Decimal("1.10"),
        "uuid": u,
        "enum": Color.RED,
        "dc": Point(1, 2),
        "nested": {"when": datetime.date(2026, 1, 1), "ids": {u}},
    }
    expected = {
        "dt": "2026-01-02T03:04:05", "aware": "2026-01-02T03:04:05.000006+00:00",
        "d": "2026-01-02", "t": "03:04:05", "set": [1, 2, 3], "frozen": ["a", "b"],
        "tuple": [1, "x"], "bytes": b"\x01", "bytearray": b"\x02", "dec": "1.10",
        "uuid": str(u), "enum": "red", "dc": {"x": 1, "y": 2},
        "nested": {"when": "2026-01-01", "ids": [str(u)]},
    }
    for encoder in ("ormsgpack", "msgpack"):
        with Analytics(small(rings_dir, encoder=encoder)) as a:
            assert a.record_hit(rec)
            assert a.record_hit(OrderedDict(a=1))
            assert a.record_hit(MappingProxyType({"b": 2}))
            assert drain(a.ring_path) == [expected, {"a": 1}, {"b": 2}]  # type: ignore[arg-type]


class Foo:
    pass


@pytest.mark.parametrize("encoder", ["ormsgpack", "msgpack"])
def test_unencodable_value_names_the_field(rings_dir: Path, encoder: str) -> None:
    with Analytics(small(rings_dir, encoder=encoder)) as a:
        with pytest.raises(TypeError, match=r"record field 'when' has a value of type Foo"):
            a.record_hit({"ok": 1, "when": Foo()})
        with pytest.raises(TypeError,
                           match=r"record field 'ctx\.ids\[1\]' has a value of type int"):
            a.record_hit({"ctx": {"ids": [1, 2**70]}})
        with pytest.raises(TypeError, match="must be a mapping"):
            a.record_hit([1, 2])  # type: ignore[arg-type]
        assert a.stats().written == 0


def test_non_str_field_name_is_refused(rings_dir: Path) -> None:
    with Analytics(small(rings_dir)) as a:
        with pytest.raises(TypeError, match="field names must be str"):
            a.record_hit({1: "x"})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="record field 'ctx' has a key 2 of type int"):
            a.record_hit({"ctx": {2: "x"}})


def test_oversize_record_names_size_and_limit(rings_dir: Path) -> None:
    with Analytics(small(rings_dir)) as a:
        with pytest.raises(RecordTooLarge,
                           match=r"record of \d+ bytes exceeds max_record_bytes=1024"):
            a.record_hit({"x": "a" * 2000})
        assert a.stats().dropped_in_ring == 1
        with ringbuf.RingReader.open(a.ring_path) as r:  # type: ignore[arg-type]
            assert r.stats().dropped_oversize == 1
        assert a.record_hit(AUTHZ)  # still usable


def test_after_stop_returns_false_and_counts(rings_dir: Path) -> None:
    a = Analytics(small(rings_dir)).start()
    assert a.record_hit(AUTHZ)
    path = a.ring_path
    assert a.stop() is False  # one record still in the ring, nobody drained it
    assert a.stop() is True  # idempotent
    assert a.record_hit(AUTHZ) is False
    assert a.record_hit(AUTHZ) is False
    assert a.stats().dropped_after_stop == 2
    assert drain(path) == [AUTHZ]  # type: ignore[arg-type]
    with ringbuf.RingReader.open(path) as r:  # type: ignore[arg-type]
        assert r.stats().closed and r.stats().written == 1
    a.start()  # a new ring
    assert a.record_hit(AUTHZ) and a.ring_path != path
    a.stop()


def test_stop_waits_for_the_consumer_within_the_bound(rings_dir: Path) -> None:
    a = Analytics(small(rings_dir)).start()
    for i in range(10):
        a.record_hit(dict(AUTHZ, seq=i))
    reader = ringbuf.RingReader.open(a.ring_path)  # type: ignore[arg-type]
    got: list[int] = []

    def consume() -> None:
        wait_until(lambda: a.state == "stopped", 10)
        got.extend(msgpack.unpackb(b)["seq"] for b in reader.read_batch(100))
        reader.commit()

    t = threading.Thread(target=consume)
    t.start()
    assert a.stop(timeout_s=30) is True
    t.join(10)
    reader.close()
    check_sequence(got, 10)


def test_a_dropped_client_closes_its_ring(rings_dir: Path) -> None:
    import gc

    a = Analytics(small(rings_dir))
    assert a.record_hit(AUTHZ)
    path = a.ring_path
    del a
    gc.collect()
    with ringbuf.RingReader.open(path) as r:  # type: ignore[arg-type]
        assert r.stats().closed and r.stats().written == 1


def test_lazy_open_and_context_manager(rings_dir: Path) -> None:
    a = Analytics(small(rings_dir))
    assert a.state == "new" and rings(rings_dir) == []
    assert a.record_hit(AUTHZ)  # opens the ring
    assert a.state == "running" and len(rings(rings_dir)) == 1
    a.stop()
    with Analytics(small(rings_dir)) as b:
        assert b.state == "running"
    assert b.state == "stopped"


def test_unusable_rings_dir_drops_and_counts(tmp_path: Path) -> None:
    bad = tmp_path / "open-rings"
    bad.mkdir(mode=0o777)
    bad.chmod(0o777)  # world-writable: refused
    a = Analytics(small(bad))
    assert a.record_hit(AUTHZ) is False  # never raises on the hot path
    assert a.record_hit(AUTHZ) is False
    assert a.stats().dropped_no_ring == 2
    with pytest.raises(ringbuf.RingPermissionError, match="0777"):
        a.start()  # an explicit start reports it
    a.stop()


# -- config --------------------------------------------------------------------

def test_from_config_yaml_file_and_env_override(tmp_path: Path, rings_dir: Path) -> None:
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(f"rings_dir: {rings_dir}\nring_capacity_bytes: 65536\n"
                   "max_record_bytes: 2048\nfull_policy: block\n")
    a = Analytics.from_config(cfg, environ={})
    assert a.config.full_policy == "block" and a.config.max_record_bytes == 2048
    b = Analytics.from_config(cfg, environ={"COLLECTOR_MAX_RECORD_BYTES": "4096",
                                            "COLLECTOR_ENABLED": "false"})
    assert b.config.max_record_bytes == 4096 and b.enabled is False
    assert b.record_hit(AUTHZ) is False
    with a:
        assert a.record_hit(AUTHZ)
        assert Path(a.ring_path).parent == rings_dir  # type: ignore[arg-type]
    c = Analytics.from_config(environ={"COLLECTOR_CONFIG": str(cfg)})  # as the daemon reads it
    assert c.config == a.config


def test_mapping_options_ignore_the_environment(rings_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_ENABLED", "false")
    assert Analytics(small(rings_dir)).enabled is True
    assert Analytics.from_config(small(rings_dir)).enabled is False


def test_bad_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("full_policy: sometimes\nring_capacity_bytes: 5000\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        Analytics.from_config(cfg, environ={})
    text = str(err.value)
    assert str(cfg) in text
    assert "full_policy" in text and "ring_capacity_bytes" in text and "power of two" in text
    assert "bogus: unknown key" in text
    with pytest.raises(ConfigError,
                       match=r"environment COLLECTOR_BLOCK_TIMEOUT_MS \(block_timeout_ms\)"):
        Analytics.from_config({}, environ={"COLLECTOR_BLOCK_TIMEOUT_MS": "-1"})
    with pytest.raises(ConfigError, match="too small for max_record_bytes"):
        Analytics({"ring_capacity_bytes": 4096, "max_record_bytes": 4096})
    with pytest.raises(TypeError, match="options must be"):
        Analytics("collector.yaml")  # type: ignore[arg-type]
