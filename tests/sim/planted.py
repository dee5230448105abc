"""Planted bugs: copies of the core with one rule of Raft broken, for the simulator to find.

A bug is a list of source edits, each replacing one exact snippet of a core module
(``raft``, ``log`` or ``progress``) that must occur exactly once: if the core changes under a
snippet, building the mutant fails loudly instead of silently testing nothing. ``raft`` stands
for ``core/raft.py`` and the mixins ``Raft`` is assembled from (``_RAFT_PARTS``): the snippet
must occur once among them. The mutated
modules are compiled afresh; the real core is untouched. Bugs outside the core (a driver or
storage that breaks the ``Ready`` contract) are planted through the simulator's store flags.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import phalanx_aio.core._elections
import phalanx_aio.core._proposals
import phalanx_aio.core._reads
import phalanx_aio.core._replication
import phalanx_aio.core.log
import phalanx_aio.core.progress
import phalanx_aio.core.raft
from phalanx_aio.core.raft import Raft
from phalanx_aio.sim import Cluster

_MODULES = {
    "log": phalanx_aio.core.log,
    "progress": phalanx_aio.core.progress,
    "raft": phalanx_aio.core.raft,
    "_elections": phalanx_aio.core._elections,
    "_proposals": phalanx_aio.core._proposals,
    "_reads": phalanx_aio.core._reads,
    "_replication": phalanx_aio.core._replication,
}
_MIXINS = ("_elections", "_proposals", "_reads", "_replication")
_RAFT_PARTS = ("raft", *_MIXINS)
"""Where a ``raft`` snippet is looked for: ``Raft`` and its mixins (``_raft_base`` holds only
declarations and constants, and stays the real one, so ``Role`` is shared)."""
_SHARED = ("Role", "InitialState", "ProgressInfo", "Status", "bootstrap_state")
"""Names the mutant takes from the real core, so that the simulator's checks (``core.role is
Role.LEADER``) and the states it builds work with it."""

Edit = tuple[str, str, str]
"""(module, exact snippet, replacement)."""


@dataclass(frozen=True)
class Bug:
    """One planted bug: core source edits and/or a setup that plants a driver bug."""

    what: str
    """The rule it breaks, as a reader would name it."""
    edits: tuple[Edit, ...] = ()
    setup: Callable[[Cluster], None] | None = None


def _load(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__file__ = f"<planted {name}>"
    sys.modules[name] = mod  # dataclasses look their module up while building the class
    try:
        exec(compile(source, mod.__file__, "exec"), mod.__dict__)
    finally:
        del sys.modules[name]
    return mod


@functools.cache
def mutant(edits: tuple[Edit, ...]) -> type[Raft]:
    """The core's :class:`Raft` built from sources with ``edits`` applied."""
    sources = {name: inspect.getsource(mod) for name, mod in _MODULES.items()}
    for module, old, new in edits:
        parts = _RAFT_PARTS if module == "raft" else (module,)
        counts = {part: sources[part].count(old) for part in parts}
        count = sum(counts.values())
        assert count == 1, f"planted bug: snippet found {count} times in core/{module}.py: {old!r}"
        part = next(part for part, n in counts.items() if n)
        sources[part] = sources[part].replace(old, new)
    log = _load("phalanx_planted_log", sources["log"])
    progress = _load("phalanx_planted_progress", sources["progress"])
    mixins = {name: _load(f"phalanx_planted{name}", sources[name]) for name in _MIXINS}
    for mod in mixins.values():
        # A snippet may use any name raft.py or a sibling mixin has (the bugs were written
        # against raft.py when it held them all).
        for real_mod in (phalanx_aio.core.raft, *(_MODULES[name] for name in _MIXINS)):
            for name, value in vars(real_mod).items():
                mod.__dict__.setdefault(name, value)
        _use_mutants(mod, log, progress)
    # raft.py imports its mixins by name: let it find the mutants while it is built.
    real = {name: sys.modules[f"phalanx_aio.core.{name}"] for name in _MIXINS}
    sys.modules.update({f"phalanx_aio.core.{name}": mod for name, mod in mixins.items()})
    try:
        raft = _load("phalanx_planted_raft", sources["raft"])
    finally:
        sys.modules.update({f"phalanx_aio.core.{name}": mod for name, mod in real.items()})
    _use_mutants(raft, log, progress)
    for name in _SHARED:
        setattr(raft, name, getattr(phalanx_aio.core.raft, name))
    cls: type[Raft] = raft.Raft
    return cls


def _use_mutants(mod: types.ModuleType, log: types.ModuleType, progress: types.ModuleType) -> None:
    """Point ``mod`` at the mutant log and progress modules' classes."""
    mod.RaftLog = log.RaftLog
    mod.Progress = progress.Progress
    mod.ProgressState = progress.ProgressState


def _drop_votes(c: Cluster) -> None:
    for node in c.nodes.values():
        node.store.drop_vote = True


def _early_hard_state(c: Cluster) -> None:
    for node in c.nodes.values():
        node.store.early_hard_state = True


_UP_TO_DATE = "return last_term > my_term or (last_term == my_term and last_index >= self.last_index())"
_NO_5_4_2 = (
    "raft",
    "if idx <= self.log.committed or self.log.term(idx) != self.term:",
    "if idx <= self.log.committed:",
)
_NO_NOOP = ("raft", '        self._append(EntryType.NOOP, [b""])\n', "")
_UP_TO_DATE_CALL = "self.log.is_up_to_date(m.index, m.log_term)"
_VOTE_CHECK = f"if can_vote and {_UP_TO_DATE_CALL}:"
_STEP_DOWN = "                else:\n                    self._become_follower(m.term, None)\n"
_TAKE_OVER = "        last = self.log.last_index()\n        for nid in sorted(self.confs.current.members()):"
_TRUNCATE = "        del self.entries[first - self.snap_index - 1 :]\n        self.entries.extend(entries)\n"


def _bug(what: str, *edits: Edit, setup: Callable[[Cluster], None] | None = None) -> Bug:
    return Bug(what, edits, setup)


BUGS: dict[str, Bug] = {
    b.what: b
    for b in [
        _bug("commits an earlier term's entry by counting replicas (§5.4.2)", _NO_5_4_2),
        _bug("Figure 8: §5.4.2 broken and no §8 no-op", _NO_5_4_2, _NO_NOOP),
        _bug("no §8 no-op on election", _NO_NOOP),
        _bug(
            "heartbeat commit index not bounded by the follower's match",
            ("raft", "commit=min(pr.match, committed),", "commit=committed,"),
        ),
        _bug(
            "leader ignores a higher term in responses",
            (
                "raft",
                _STEP_DOWN,
                "                elif self.role is Role.LEADER and m.type in (_APP_RESP, _HEARTBEAT_RESP):\n"
                "                    return\n" + _STEP_DOWN,
            ),
        ),
        _bug(
            "vote (behind pre-vote) ignores the candidate's log",
            (
                "raft",
                _VOTE_CHECK,
                _VOTE_CHECK.replace(_UP_TO_DATE_CALL, f"(m.type is _VOTE or {_UP_TO_DATE_CALL})"),
            ),
        ),
        _bug(
            "pre-vote ignores the candidate's log",
            (
                "raft",
                _VOTE_CHECK,
                _VOTE_CHECK.replace(_UP_TO_DATE_CALL, f"(m.type is _PRE_VOTE or {_UP_TO_DATE_CALL})"),
            ),
        ),
        _bug(
            "up-to-date check compares log lengths only (§5.4.1)",
            ("log", _UP_TO_DATE, "return last_index >= self.last_index()"),
        ),
        _bug("grants votes to out-of-date candidates (§5.4.1)", ("log", _UP_TO_DATE, "return True")),
        _bug("does not persist its vote", setup=_drop_votes),
        _bug(
            "candidate counts refusals as votes",
            ("raft", "self._votes.setdefault(m.frm, not m.reject)", "self._votes.setdefault(m.frm, True)"),
        ),
        _bug(
            "keeps a conflicting log suffix",
            (
                "log",
                _TRUNCATE,
                "        last = self.last_index()\n"
                "        self.entries.extend(e for e in entries if e.index > last)\n",
            ),
        ),
        _bug(
            "follower appends without matching the previous entry",
            ("raft", "if log.match_term(m.index, m.log_term):", "if log.term(m.index) is not None:"),
        ),
        _bug(
            "new leader overwrites its own uncommitted entries",
            (
                "raft",
                _TAKE_OVER,
                "        if self.log.last_index() > self.log.committed:\n"
                "            self.log.truncate_and_append("
                "[Entry(self.term, self.log.committed + 1, EntryType.NOOP, b'')])\n" + _TAKE_OVER,
            ),
        ),
        _bug(
            "commit index may move backwards",
            ("log", "        if index > self.committed:\n", "        if index != self.committed:\n"),
        ),
        _bug(
            "leader counts its own entries before they are durable",
            ("raft", "            if entries_durable:\n", "            if True:\n"),
        ),
        _bug(
            "driver saves a commit index before its background write is durable",
            setup=_early_hard_state,
        ),
        _bug(
            "ReadIndex served without confirming leadership",
            (
                "raft",
                "        if conf.voters == {self.id} and not conf.joint:\n            self._answer_read(",
                "        if True:\n            self._answer_read(",
            ),
        ),
        _bug(
            # Shown by a leader's legal re-sent slices (NetworkOptions.reslice): a slice that
            # ends before a follower's stale suffix, with the leader's commit index beyond it.
            "follower commits past the last entry the append verified",
            (
                "raft",
                "log.commit_to(min(m.commit, last_new))",
                "log.commit_to(min(m.commit, log.last_index()))",
            ),
        ),
        _bug(
            # Shown by the split trigger before a membership change (two changes at once, the
            # cluster cut into sides that each hold a majority of a different configuration).
            "second membership change before the first commits",
            (
                "raft",
                "        if self.confs.last_index > self.log.committed:\n            raise",
                "        if False:\n            raise",
            ),
        ),
        _bug(
            "lease read without a quorum's recent acknowledgement",
            (
                "raft",
                "        return self._now() - sent < timeout - cfg.lease_margin_ticks",
                "        return True",
            ),
        ),
    ]
}
"""Bugs the swarm seeds of CI catch (``tests/sim/test_planted_bugs.py``)."""

JOINT_BUGS: dict[str, Bug] = {
    b.what: b
    for b in [
        _bug(
            "joint configuration commits on the new majority alone",
            (
                "raft",
                "            voters, conf.voters_outgoing, {nid: pr.match for nid, pr in prs.items()",
                "            voters, frozenset(), {nid: pr.match for nid, pr in prs.items()",
            ),
        ),
        _bug(
            "several voters changed without the joint step",
            (
                "raft",
                "self._append_conf(changes, enter_joint(self.confs.current, changes))",
                "self._append_conf(changes, _no_joint(enter_joint(self.confs.current, changes)))",
            ),
            (
                "raft",
                "class Proposals(RaftState):",
                "def _no_joint(conf):\n    return leave_joint(conf) if conf.joint else conf\n\n\n"
                "class Proposals(RaftState):",
            ),
        ),
    ]
}
"""Joint-consensus bugs, caught by swarm seeds with ``joint_changes`` on."""

JOINT_UNCAUGHT: dict[str, tuple[Bug, str]] = {
    "joint configuration elects on the new majority alone": (
        _bug(
            "joint configuration elects on the new majority alone",
            (
                "raft",
                "result = joint_vote_result(conf.voters, conf.voters_outgoing, self._votes)",
                "result = joint_vote_result(conf.voters, frozenset(), self._votes)",
            ),
        ),
        "400 joint swarm seeds pass. Harmful only while C_old,new is appended but not committed "
        "and the two halves' majorities can be disjoint (two of three voters replaced), so that a "
        "candidate holding C_old,new and one holding C_old win the same term; once it is "
        "committed, the new majority it still needs holds every committed entry.",
    ),
}
"""Joint-consensus bugs planted but not caught within the CI bound, with the reason."""

UNCAUGHT: dict[str, tuple[Bug, str]] = {}
"""Bugs planted but not caught within the CI bound, with the reason."""
