"""phalanx_aio.run picks uvloop when available and returns the coroutine's result."""

from __future__ import annotations

import asyncio

import phalanx_aio
from phalanx_aio.node import uvloop_available


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_uses_uvloop_when_installed() -> None:
    module = phalanx_aio.run(_loop_type())
    assert module.startswith("uvloop") == uvloop_available()


def test_run_can_force_the_standard_loop() -> None:
    assert phalanx_aio.run(_loop_type(), use_uvloop=False).startswith("asyncio")
