"""Golden-output scenario scripts (tests/core/scripts/*.txt).

A script is a list of commands, each on a line starting with ``> ``, followed by the output
it must produce: every message the network carried while running it (``harness.fmt``, dropped
ones prefixed ``DROP``), then any reads answered or failed and errors raised. ``status``
prints one line per node. Lines starting with ``#`` are comments and are kept as they are.

Commands (ids are node ids; every command that acts runs the network until it is quiet):

    bootstrap N [lan|paper|mesh] [field=value ...]   a fresh cluster of voters 1..N
    campaign ID | tick ID [N] | tick-all [N]
    propose ID DATA... | read ID CTX | transfer ID TARGET | compact ID INDEX
    conf ID add-learner|add-voter|remove NODE [CONTEXT]
    isolate ID | partition A,B C,D | heal | crash ID | restart ID | add ID
    status

To regenerate the expected output after a deliberate change, run with
``PHALANX_REWRITE_SCRIPTS=1`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phalanx_aio.core import ConfChange, ConfChangeType, Config
from phalanx_aio.errors import PhalanxError
from tests.core.harness import PAPER, Network

SCRIPTS = Path(__file__).parent / "scripts"
# The scripts show etcd's eager commit broadcast; lazy_commit.txt switches it off as the
# presets do (bootstrap ... eager_commit=false).
PRESETS = {
    "lan": Config.lan(eager_commit=True),
    "paper": PAPER,
    "mesh": Config.global_mesh(eager_commit=True),
}
CONF_KINDS = {
    "add-learner": ConfChangeType.ADD_LEARNER,
    "add-voter": ConfChangeType.ADD_VOTER,
    "remove": ConfChangeType.REMOVE,
}


def _value(text: str) -> object:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


class Runner:
    def __init__(self) -> None:
        self.net: Network | None = None
        self.seen_reads: dict[str, int] = {}
        self.seen_dropped: dict[str, int] = {}

    def run(self, line: str) -> list[str]:
        cmd, *args = line.split()
        if cmd == "bootstrap":
            preset = PRESETS[args[1]] if len(args) > 1 and "=" not in args[1] else PRESETS["lan"]
            fields = dict(a.split("=", 1) for a in args[1:] if "=" in a)
            cfg = preset.replace(**{k: _value(v) for k, v in fields.items()})
            self.net = Network.bootstrap(int(args[0]), cfg)
            self.net.take_trace()
            return []
        net = self.net
        assert net is not None, "bootstrap first"
        out: list[str] = []
        try:
            self._act(net, cmd, args, out)
        except PhalanxError as exc:
            out.append(f"error: {type(exc).__name__}: {exc}")
        if cmd != "status":
            net.stabilize()
        return net.take_trace() + self._reads(net) + out

    def _act(self, net: Network, cmd: str, args: list[str], out: list[str]) -> None:
        if cmd == "campaign":
            net[args[0]].campaign()
        elif cmd == "tick":
            net.tick(args[0], int(args[1]) if len(args) > 1 else 1)
        elif cmd == "tick-all":
            net.tick_all(int(args[0]) if args else 1)
        elif cmd == "propose":
            net[args[0]].propose_many([a.encode() for a in args[1:]])
        elif cmd == "read":
            net.read(args[0], args[1].encode())
        elif cmd == "transfer":
            net[args[0]].transfer_leadership(args[1])
        elif cmd == "compact":
            net.compact(args[0], int(args[1]))
        elif cmd == "conf":
            ctx = args[3].encode() if len(args) > 3 else b""
            net[args[0]].propose_conf_change(ConfChange(CONF_KINDS[args[1]], args[2], ctx))
        elif cmd == "isolate":
            net.isolate(args[0])
        elif cmd == "partition":
            net.partition(*(a.split(",") for a in args))
        elif cmd == "heal":
            net.heal()
        elif cmd == "crash":
            net.crash(args[0])
        elif cmd == "restart":
            net.restart(args[0])
            self.seen_reads[args[0]] = self.seen_dropped[args[0]] = 0
        elif cmd == "add":
            net.add(args[0])
        elif cmd == "status":
            for nid in sorted(net.nodes):
                out.append(self._status(net, nid))
        else:
            raise AssertionError(f"unknown command {cmd!r}")

    def _status(self, net: Network, nid: str) -> str:
        if nid in net.down:
            return f"{nid}: down"
        st = net[nid].status()
        applied = ",".join(d.decode() for d in net.applied(nid))
        conf = ",".join(sorted(st.conf.voters))
        if st.conf.learners:
            conf += " learners=" + ",".join(sorted(st.conf.learners))
        return (
            f"{nid}: {st.role.value} term={st.term} lead={st.leader} log={st.first_index}..{st.last_index}"
            f" commit={st.commit} applied=[{applied}] voters={conf}"
        )

    def _reads(self, net: Network) -> list[str]:
        out = []
        for nid in sorted(net.nodes):
            node = net.nodes[nid]
            for rs in node.read_states[self.seen_reads.get(nid, 0) :]:
                out.append(f"{nid}: read {rs.context.decode()} at index {rs.index}")
            for ctx in node.dropped_reads[self.seen_dropped.get(nid, 0) :]:
                out.append(f"{nid}: read {ctx.decode()} dropped")
            self.seen_reads[nid] = len(node.read_states)
            self.seen_dropped[nid] = len(node.dropped_reads)
        return out


def render(script: str) -> str:
    """Run a script; return it with every command's output replaced by the actual one."""
    runner = Runner()
    out: list[str] = []
    for line in script.splitlines():
        if line.startswith("> "):
            out.append(line)
            out.extend(runner.run(line[2:]))
        elif line.startswith("#") or not line.strip():
            out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.txt")), ids=lambda p: p.stem)
def test_script(path: Path) -> None:
    expected = path.read_text()
    actual = render(expected)
    if os.environ.get("PHALANX_REWRITE_SCRIPTS"):
        path.write_text(actual)
    assert actual == expected


def test_scripts_exist_and_runner_reports_errors() -> None:
    assert len(list(SCRIPTS.glob("*.txt"))) >= 5
    out = render("> bootstrap 3\n> propose 1 x\n> transfer 2 3\n")
    assert "error: NotLeader: not the leader (no leader known)" in out
