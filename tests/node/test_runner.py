"""phalanx_aio.run picks uvloop when available, tunes the garbage collector while the program
runs, and returns the coroutine's result."""

from __future__ import annotations

import asyncio
import gc

import phalanx_aio
from phalanx_aio.node import GC_THRESHOLDS, uvloop_available


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_uvloop_when_installed() -> None:
    module = phalanx_aio.run(_loop_type())
    assert module.startswith("uvloop") == uvloop_available()


def test_run_can_force_the_standard_loop() -> None:
    assert phalanx_aio.run(_loop_type(), use_uvloop=False).startswith("asyncio")


async def _thresholds() -> tuple[int, int, int]:
    return gc.get_threshold()


def test_run_tunes_the_garbage_collector_while_main_runs_then_restores_it() -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS  # CPython's own (700, 10, 10) in the test process
    assert phalanx_aio.run(_thresholds()) == GC_THRESHOLDS
    assert gc.get_threshold() == before
    assert phalanx_aio.run(_thresholds(), gc_thresholds=(5000, 5, 5)) == (5000, 5, 5)
    assert phalanx_aio.run(_thresholds(), gc_thresholds=None) == before
    assert gc.get_threshold() == before


def test_tune_gc_returns_the_thresholds_it_replaced() -> None:
    before = gc.get_threshold()
    try:
        assert phalanx_aio.tune_gc() == before
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)
