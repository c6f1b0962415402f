"""Pieces shared by the daemon's and the pump's structured logs.

``quote`` renders one ``key=value`` value; :class:`RateLimited` lets one
event per interval and key through on hot error paths and counts the rest.
"""

from __future__ import annotations

import time
from typing import Any


def quote(value: Any) -> str:
    """``value`` as the right-hand side of ``key=value``: quoted when needed."""
    s = str(value)
    if not s or any(c in s for c in ' "=\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class RateLimited:
    """Let one event per ``interval_s`` and key through; count the rest.

    ``hit(key)`` returns ``None`` while the event is suppressed, or the
    number of events suppressed since the last line (0 the first time).
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def hit(self, key: str) -> int | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def reset(self, key: str) -> int:
        """Forget ``key`` (the condition ended); return what was still held back."""
        self._last.pop(key, None)
        return self._held.pop(key, 0)
