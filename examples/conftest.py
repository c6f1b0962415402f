"""Prints the load test's overhead ratio at the end of the run (``test_load.py``)."""

from __future__ import annotations

import sys

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    load = sys.modules.get("examples.test_load") or sys.modules.get("test_load")
    line = load.overhead_line() if load is not None else None
    if line:
        terminalreporter.write_sep("-", "collector load test")
        terminalreporter.write_line(line)
