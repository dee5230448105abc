"""Crash test: a child process writing under load is SIGKILLed at random moments, many times.

After every kill the store must open cleanly and hold exactly the state after the last write
the child saw return, or after the one it was making when it died; never less (an
acknowledged write lost), never anything else (a torn write), and the hard state never goes
backwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx_aio import HardState, InitialState
from phalanx_aio.storage import SQLiteStorage
from tests.storage import storage_crash_workload as workload

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

KILLS = 55
SEED = 20250611
SCRIPT = Path(workload.__file__).resolve()


def read_acks(proc: subprocess.Popen[bytes], want: int, buf: bytearray) -> list[int]:
    """Block until the child has acknowledged ``want`` steps (60 s deadline, not a timing test)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    acks: list[int] = []
    while len(acks) < want:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, "the child acknowledged nothing for 60 s"
        chunk = os.read(fd, 65536)
        if not chunk:
            _, err = proc.communicate()
            pytest.fail(f"the child exited early ({proc.returncode}): {err.decode(errors='replace')}")
        buf += chunk
        *lines, rest = bytes(buf).split(b"\n")
        buf[:] = rest
        acks += [int(x) for x in lines]
    return acks


async def load(path: Path) -> InitialState:
    """Open the store as a restarting node would (verifying everything), and close it."""
    store = SQLiteStorage(path)
    st = await store.open(node_id=workload.NODE, cluster_id=workload.CLUSTER)
    await store.aclose()
    return st.state


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(SEED)
    model = InitialState()  # the state after step k
    k = 0
    in_flight_survived = 0
    seen = HardState()  # the hard state found after the previous kill
    for kill in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(path), str(SEED), str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        buf = bytearray()
        try:
            acks = read_acks(proc, rng.randint(1, 12), buf)
            for _ in range(rng.choice((0, rng.randrange(40_000)))):
                pass  # spin a seeded while so that the kill lands anywhere in the child's cycle
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
        buf += out
        acks += [int(x) for x in bytes(buf).split(b"\n") if x]
        assert acks == list(range(k + 1, k + 1 + len(acks))), "steps acknowledged out of order"
        for step_k in acks:
            model = workload.apply(model, workload.make_step(SEED, step_k, model))
        k = acks[-1]
        # the step the child may have been writing when it died
        following = workload.apply(model, workload.make_step(SEED, k + 1, model))

        stored = asyncio.run(load(path))

        if stored == following:
            in_flight_survived += 1
            model, k = following, k + 1
        else:
            assert stored.hard_state == model.hard_state, f"kill {kill}: hard state after step {k} lost"
            assert stored.snapshot == model.snapshot, f"kill {kill}: snapshot after step {k} differs"
            assert stored.entries == model.entries, f"kill {kill}: entries after step {k} differ"
        hs = stored.hard_state
        assert hs.term >= seen.term and hs.commit >= seen.commit, f"kill {kill}: hard state went backwards"
        seen = hs
    assert k > KILLS
    # not a timing assertion: only reports how often the write in flight had already committed
    print(f"{KILLS} kills, {k} steps, write in flight found committed {in_flight_survived} times")
