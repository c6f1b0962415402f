"""``python -m bench <name> [options]``: run one benchmark script of this package.

Each ``bench/<name>.py`` has ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)])
        if not m.name.startswith(("_", "test_", "conftest"))
    )


def main() -> int:
    names = _available()
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print("usage: python -m bench NAME [options]\n\nbenchmarks: " + ", ".join(names))
        return 0 if len(sys.argv) >= 2 else 2
    name = sys.argv[1]
    if name not in names:
        print(f"unknown benchmark {name!r}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(sys.argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
