"""The deploy files (``deploy/Dockerfile``, ``deploy/kubernetes/phalanx.yaml``) checked against
the code: the manifests against the Kubernetes API's own JSON schemas (``kubernetes-validate``,
which ships them, strict: unknown fields are errors), the probes against the health service,
and every ``phalanx-aio`` command and ``PHALANX_*`` variable they use against the real
parser: the StatefulSet's start script is run with a stand-in ``phalanx-aio`` that hands the
arguments and environment it gets to ``build_parser`` and ``resolve_settings``.

No Dockerfile linter is pip-installable (hadolint is a Haskell binary), so the Dockerfile is
checked for its structure: what it copies exists, it runs as a user, exposes the node's port,
stops with SIGTERM and starts ``phalanx-aio``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest

from phalanx_aio.cli import serve_settings as settings_mod
from phalanx_aio.cli.client_cmds import CLIENT_FLAGS
from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import resolve_settings
from phalanx_aio.observability.grpc_health import _SERVICES

yaml = pytest.importorskip("yaml", reason="needs PyYAML (the test extra installs it)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kubernetes" / "phalanx.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KNOWN_VARIABLES = {*settings_mod._ENV.values(), "PHALANX_CONFIG", *(f.env for f in CLIENT_FLAGS.values())}


def documents() -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def statefulset() -> dict[str, Any]:
    (sts,) = documents()["StatefulSet"]
    return sts


def container() -> dict[str, Any]:
    (c,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return c


def test_the_manifests_validate_against_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the test extra)")
    docs = [d for kind in documents().values() for d in kind]
    assert sorted(d["kind"] for d in docs) == ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for doc in docs:
        kv.validate(doc, "1.30.0", strict=True)
    broken = json.loads(json.dumps(statefulset()))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpcc"] = {"port": 7000}
    with pytest.raises(kv.ValidationError):  # the check has teeth: an unknown field fails it
        kv.validate(broken, "1.30.0", strict=True)


def test_the_statefulset_probes_shutdown_and_disruption_budget() -> None:
    by_kind = documents()
    sts = statefulset()
    headless = next(s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (
        headless["spec"]["selector"],
        by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert by_kind["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1
    pod = sts["spec"]["template"]["spec"]
    assert 10 <= pod["terminationGracePeriodSeconds"] <= 120
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PHALANX_LISTEN"] == f"0.0.0.0:{ports['grpc']}"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        grpc = c[probe]["grpc"]
        assert grpc["port"] == ports["grpc"]
        assert grpc.get("service", "") in _SERVICES  # a service the health service knows
    assert c["readinessProbe"]["grpc"]["service"] == "phalanx.v1.KV"  # ready: a leader is known
    assert "service" not in c["livenessProbe"]["grpc"]  # alive: the node itself works


def test_every_variable_used_is_one_phalanx_aio_reads() -> None:
    used = set(re.findall(r"PHALANX_[A-Z_]+", MANIFEST.read_text() + DOCKERFILE.read_text()))
    assert used and used <= KNOWN_VARIABLES, used - KNOWN_VARIABLES


STUB = """#!{python}
import json, os, sys
env = {{k: v for k, v in os.environ.items() if k.startswith("PHALANX_")}}
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": env}}) + "\\n")
if sys.argv[1:3] == ["members", "list"]:
    sys.exit(int(os.environ["STUB_MEMBERS_EXIT"]))
"""


def run_start_script(
    tmp: pathlib.Path, pod: str, *, cluster_answers: bool, store: bool
) -> list[dict[str, Any]]:
    """Run the StatefulSet's start script for ``pod`` with a stand-in ``phalanx-aio``."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / "phalanx-aio"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    if store:
        (data / f"{pod}.db").write_bytes(b"")
    c = container()
    assert c["command"] == ["/bin/sh", "-c"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env.update(
        POD_NAME=pod,
        POD_NAMESPACE="prod",
        PHALANX_DATA_DIR=str(data),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        STUB_LOG=str(tmp / f"{pod}.log"),
        STUB_MEMBERS_EXIT="0" if cluster_answers else "1",
    )
    subprocess.run(["/bin/sh", "-c", c["args"][0]], env=env, check=True, timeout=30)
    calls = [json.loads(line) for line in (tmp / f"{pod}.log").read_text().splitlines()]
    for call in calls:  # every invocation parses, and a serve's settings resolve
        args = build_parser().parse_args(call["argv"])
        if args.command == "serve":
            call["settings"] = resolve_settings(args, call["env"])
    return calls


def test_the_start_script_founds_joins_and_restarts_with_real_flags(tmp_path: pathlib.Path) -> None:
    founder = run_start_script(tmp_path / "a", "phalanx-1", cluster_answers=False, store=False)
    assert [c["argv"][:2] for c in founder] == [["members", "list"], ["serve", "--bootstrap"]]
    s = founder[-1]["settings"]
    domain = "phalanx.prod.svc.cluster.local"
    asked = founder[0]["argv"][founder[0]["argv"].index("--endpoints") + 1]
    assert asked.split(",") == [f"phalanx-{i}.{domain}:7000" for i in range(3)]  # every founder
    assert s.id == "phalanx-1" and s.bootstrap and s.listen == "0.0.0.0:7000"
    assert s.advertise == f"phalanx-1.{domain}:7000"
    assert s.peers == {"phalanx-0": f"phalanx-0.{domain}:7000", "phalanx-2": f"phalanx-2.{domain}:7000"}
    assert s.http == "0.0.0.0:9100"

    rejoin = run_start_script(tmp_path / "b", "phalanx-1", cluster_answers=True, store=False)
    assert rejoin[-1]["argv"] == ["serve", "--discover", domain] and not rejoin[-1]["settings"].bootstrap

    scaled = run_start_script(tmp_path / "c", "phalanx-4", cluster_answers=False, store=False)
    assert [c["argv"] for c in scaled] == [["serve", "--discover", domain]]

    restart = run_start_script(tmp_path / "d", "phalanx-0", cluster_answers=False, store=True)
    assert [c["argv"] for c in restart] == [["serve"]]


def serve_help() -> str:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"].format_help()


def test_the_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), source
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    assert "STOPSIGNAL SIGTERM" in lines and "EXPOSE 7000 9100" in lines
    assert 'ENTRYPOINT ["phalanx-aio"]' in lines
    cmd = next(line for line in lines if line.startswith("CMD "))
    argv = json.loads(cmd.removeprefix("CMD "))
    assert argv[0] == "serve"
    help_text = serve_help()
    serve_lines = [line for line in text.splitlines() if re.search(r"\bserve\b", line)]
    flags = [f for line in serve_lines for f in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)]
    assert flags  # the usage shown in the file
    for flag in flags:
        assert flag in help_text, f"{flag} (in deploy/Dockerfile) is not a serve flag"
