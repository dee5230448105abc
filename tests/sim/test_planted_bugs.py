"""Teeth: deliberately planted bugs must be caught by the simulator within a bounded number of
seeds. Each bug is a small subclass (or a storage fault) that breaks one rule of Raft."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from phalanx_aio.core.log import RaftLog
from phalanx_aio.core.raft import Raft
from phalanx_aio.core.types import Entry
from phalanx_aio.sim import Cluster, LivenessFailure, SafetyViolation, SimOptions, run

MAX_SEEDS = 10


class _KeepSuffixLog(RaftLog):
    """Bug: on a conflicting append, keep our suffix and only add entries past our end."""

    __slots__ = ()

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        last = self.last_index()
        self.entries.extend(e for e in entries if e.index > last)


class _BlindVoterLog(RaftLog):
    """Bug: ignore §5.4.1, every candidate's log counts as up to date."""

    __slots__ = ()

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        return True


def _with_log(cls: type[RaftLog]) -> type[Raft]:
    class Buggy(Raft):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.log.__class__ = cls

    return Buggy


def _drop_votes(c: Cluster) -> None:
    for node in c.nodes.values():
        node.store.drop_vote = True


BUGS = {
    "keeps a conflicting log suffix": {"raft_factory": _with_log(_KeepSuffixLog)},
    "grants votes to out-of-date candidates": {"raft_factory": _with_log(_BlindVoterLog)},
    "does not persist its vote": {"setup": _drop_votes},
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_is_caught(bug: str) -> None:
    for seed in range(1, MAX_SEEDS + 1):
        try:
            run(SimOptions(seed=seed, steps=20_000, **BUGS[bug]))  # type: ignore[arg-type]
        except (SafetyViolation, LivenessFailure) as exc:
            assert "replay with: phalanx-aio sim --seed" in "".join(
                getattr(exc, "__notes__", [])
            ) or isinstance(exc, LivenessFailure)
            return
    pytest.fail(f"planted bug {bug!r} survived {MAX_SEEDS} seeds")


def test_correct_core_passes_the_same_seeds() -> None:
    for seed in range(1, MAX_SEEDS + 1):
        run(SimOptions(seed=seed, steps=20_000))
