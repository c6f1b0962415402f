"""A network namespace of the test's own, joined to this one by a veth pair.

For partition tests: a server runs inside the namespace (:attr:`NetnsLink.prefix`
before its command), the processes under test reach it at :attr:`inner` from
this namespace, and :meth:`cut` / :meth:`heal` take the link down and up.
The addresses are a random link-local /30 (169.254.X.Y, never routed off the
machine); the namespace and the veth pair are the test's own, named
``coll<hex>`` and removed by :meth:`close`. Needs root (``ip netns``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid

__all__ = ["NetnsLink"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class NetnsLink:
    """``ip netns add``, a veth pair, a /30 of link-local addresses; :meth:`close` undoes it."""

    def __init__(self) -> None:
        if shutil.which("ip") is None:
            raise RuntimeError("ip (iproute2) is not on PATH: run `sh .ci/setup` first")
        tag = uuid.uuid4().hex[:8]
        self.ns = f"coll{tag}"
        self.outer_dev, self.inner_dev = f"co{tag}", f"ci{tag}"  # at most 15 characters
        block = random.randrange(1, 254) * 256 + random.randrange(0, 64) * 4
        self.outer = f"169.254.{block // 256}.{block % 256 + 1}"
        self.inner = f"169.254.{block // 256}.{block % 256 + 2}"
        self.made = False

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def start(self) -> NetnsLink:
        _ip("netns", "add", self.ns)
        self.made = True
        _ip("link", "add", self.outer_dev, "type", "veth", "peer", "name", self.inner_dev)
        _ip("link", "set", self.inner_dev, "netns", self.ns)
        _ip("addr", "add", f"{self.outer}/30", "dev", self.outer_dev)
        _ip("link", "set", self.outer_dev, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.inner}/30", "dev", self.inner_dev)
        _ip("-n", self.ns, "link", "set", self.inner_dev, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        """Take the link down: nothing passes between the namespaces."""
        _ip("link", "set", self.outer_dev, "down")

    def heal(self) -> None:
        _ip("link", "set", self.outer_dev, "up")

    def close(self) -> None:
        if self.made:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "del", self.outer_dev], capture_output=True,
                           timeout=30)
            self.made = False

    def __enter__(self) -> NetnsLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
