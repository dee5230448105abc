"""Shared helpers of the chaos tests: no member process may outlive a test."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest


def serve_children() -> list[int]:
    """Pids of live ``_serve_shim`` processes whose parent is this process."""
    me = str(os.getpid())
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == me and fields[0] != "Z" and b"_serve_shim" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_orphans() -> Iterator[None]:
    """Fail the test if a member process it started is still alive when it ends."""
    yield
    if pathlib.Path("/proc/self/stat").exists():
        left = serve_children()
        assert not left, f"member processes left running: {left}"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``chaos`` marker (long fault-injection runs)."""
    config.addinivalue_line("markers", "chaos: long fault-injection runs of real processes (-m chaos)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``chaos`` tests unless the ``-m`` expression names the marker."""
    if "chaos" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="long chaos run: select it with -m chaos")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)
