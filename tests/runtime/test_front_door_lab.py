"""The front door on a deployed lab: a client reaches the model through HAProxy on the control host,
TLS and its certificate end at a serving node, the node logs the client's own address, and a node
drained at the front door takes no new connection while the other serves them all.

Its own lab (site `fd<pid>`, inventory/lab/site.yaml with `front_door: {}`), since the session lab's
spec has no front door. Real parts throughout: the lab's namespaces and sshd, a real bundle built
(with the prebuilt runtime tree, which the session lab's bundle leaves out) and imported, `aifactory
deploy` (the front_door role on the control host, the runtime role with its front door port on both
cpu hosts), Debian's HAProxy, `aifactory token cert` for the nodes' certificates (so they name the
front door) and for the tenant's, HAProxy's runtime API on the control host.

Kept short: the scheduler plays are left out of the deploy (their variables set to null, as a site
without Slurm has them), and the model is a small checkpoint signed into the lab's shared storage
before the deploy, so the nodes serve it as they start.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from waiting import scaled, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = "vitals-mlp"
BACKEND = "aifactory_serve"  # the front_door role's front_door_backend_name
ADMIN_SOCKET = "/run/haproxy/admin.sock"  # the role's front_door_admin_socket
DECISION_LOG = "/var/lib/aifactory/runtime/decisions.jsonl"
# A site without Slurm has these null; the deploy then skips the scheduler plays (not under test here).
NO_SCHEDULER = {"aifactory_slurm_host": None, "aifactory_slurm": None}

# Run on a lab host: `count` requests through the front door, each on a new connection (so HAProxy picks
# a node each time), with the tenant's certificate; then one handshake naming the front door host.
# Prints, per request, the status, the decision id and the node whose certificate answered.
CLIENT = """
import http.client, json, socket, ssl, sys
address, port, name, cafile, cert, key, count = sys.argv[1:8]
context = ssl.create_default_context(cafile=cafile)
context.load_cert_chain(cert, key)
answers = []
for _ in range(int(count)):
    connection = http.client.HTTPSConnection(address, int(port), context=context, timeout=30)
    body = json.dumps({"inputs": [[0.1] * 16]})
    headers = {"Content-Type": "application/json"}
    connection.request("POST", "/v1/models/vitals-mlp/infer", body=body, headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    names = [v for k, v in connection.sock.getpeercert()["subjectAltName"] if k == "DNS"]
    answers.append({"status": response.status, "decision_id": answer.get("decision_id"), "node": names[0]})
    connection.close()
with context.wrap_socket(socket.create_connection((address, int(port)), timeout=30), server_hostname=name):
    pass  # the node's certificate names the front door host too
print(json.dumps(answers))
"""

# Run on the front door host (its runtime API socket is in the host's private /run).
RUNTIME_API = """
import json, sys
from aifactory.frontdoor.runtime_api import RuntimeApi
api = RuntimeApi(sys.argv[1])
backend, action, server = sys.argv[2], sys.argv[3], sys.argv[4:]
if action in ("drain", "ready"):
    getattr(api, action)(backend, server[0])
print(json.dumps([[s.name, s.admin, s.operational] for s in api.servers(backend)]))
"""


@dataclass
class FrontedLab:
    site: str
    spec: Path
    work: Path
    plan: Any  # SitePlan
    client: dict[str, Any]  # `aifactory token cert --tenant health --format json`
    deployed: Any  # DeployResult of the first deploy
    planned: Any  # PlannedSite
    bundle: Any  # ImportedLabBundle (tests/conftest.py)

    @property
    def backends(self) -> list[str]:
        return [b.name for b in self.plan.front_door.backends]

    def exec(self, argv: list[str], host: str, *, timeout: float = 120) -> str:
        from aifactory.lab import lab_exec

        done = lab_exec(self.site, argv, host=host, timeout=scaled(timeout), env={"PYTHONPATH": str(REPO)})
        assert done.returncode == 0, f"{argv[:3]} on {host}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def requests(self, count: int, *, from_host: str) -> list[dict[str, Any]]:
        door = self.plan.front_door
        argv = [sys.executable, "-c", CLIENT, door.address, str(door.port), door.host]
        argv += [self.client["ca"], self.client["certificate"], self.client["key"], str(count)]
        return json.loads(self.exec(argv, from_host))

    def runtime_api(self, action: str, *server: str) -> dict[str, tuple[str, str]]:
        argv = [sys.executable, "-c", RUNTIME_API, ADMIN_SOCKET, BACKEND, action, *server]
        rows = json.loads(self.exec(argv, self.plan.front_door.host))
        return {name: (admin, operational) for name, admin, operational in rows}

    def decisions(self, host: str) -> dict[str, dict[str, Any]]:
        text = self.exec(["cat", DECISION_LOG], host)
        return {r["decision_id"]: r for r in map(json.loads, text.splitlines()) if "decision_id" in r}

    def deploy(self, **options: Any) -> Any:
        from aifactory.deploy import DeployOptions, deploy_site
        from aifactory.pipeline.connection import site_connection

        chosen = DeployOptions(extra_vars=NO_SCHEDULER, **options)
        return deploy_site(self.planned, connection=site_connection(self.site), options=chosen)


def _cli(state_home: Path, *argv: str) -> dict[str, Any]:
    import subprocess

    env = {**os.environ, "AIFACTORY_STATE_HOME": str(state_home), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", *argv, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(120),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def _signed_model(storage: Path, runtime_dir: Path) -> None:
    """A small checkpoint of the spec's model, signed with the site's model key and promoted, on the
    lab's shared storage (what training and `aifactory models promote` leave there)."""
    from aifactory.runtime import checkpoint
    from aifactory.runtime.model import ModelConfig, build
    from aifactory.trust.issuing.models import ensure_model_key, promote, register

    config = ModelConfig(features=16, classes=4, hidden=16, layers=2)
    model_dir = storage / "models" / MODEL
    # A folder of its own: in the model's checkpoints/ a training job's later steps (the loop's) would
    # have step 10 pruned as it is written (checkpoint.save keeps the newest three).
    saved = checkpoint.save(
        model_dir / "checkpoints-signed-by-tests",
        step=10,
        model_state=build(config, seed=3).state_dict(),
        optimizer_state={},
        meta={"model": MODEL, "network": config.as_dict()},
    )
    key = ensure_model_key(runtime_dir)
    version = register(
        model_dir=model_dir, checkpoint=saved, key=key, job={"name": "front-door"}, dataset={"name": "vitals"}
    )
    promote(model_dir=model_dir, digest=version.digest, alias="champion", key=key, reason="front door lab")


def _shared_conftest() -> Any:
    """tests/conftest.py (not importable by name when the whole suite runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("aifactory_tests_conftest", REPO / "tests" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fronted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontedLab]:
    shared = _shared_conftest()
    reason = shared.lab_unavailable()
    if reason:
        pytest.skip(f"needs the local lab: {reason}")
    pytest.importorskip("torch")
    from aifactory.lab import lab_down, lab_up
    from aifactory.plan import plan_site

    site = f"fd{os.getpid()}"
    work = tmp_path_factory.mktemp("front-door-lab")
    state_home = work / "state"
    spec = shared.copy_lab_spec(work / "spec", site)
    spec.write_text(spec.read_text() + "front_door: {}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(state_home))
        patch.setenv("AIFACTORY_BUNDLES_HOME", str(work / "bundles"))
        planned = plan_site(spec)
        plan = planned.plan
        assert plan.front_door is not None and plan.front_door.host == plan.control_host
        lab_up(planned)
        try:
            runtime_dir = state_home / site / "runtime"
            _signed_model(state_home / site / "lab" / "storage" / "share", runtime_dir)
            for backend in plan.front_door.backends:  # each node's certificate, naming the front door too
                _cli(
                    state_home,
                    "token", "cert", str(spec), "--server", backend.name, "--address", backend.address,
                    "-o", str(runtime_dir / "server-certs"),
                )  # fmt: skip
            # The tenant's certificate, which the client reads on a lab host (as root, as lab commands run).
            client = _cli(
                state_home, "token", "cert", str(spec), "--tenant", "health", "-o", str(work / "client")
            )
            # With the prebuilt runtime tree: the session lab's bundle has none, so this is the lab
            # suite's deploy of the tree over SSH with Mitogen (started in the background by site.yml).
            bundle = shared.build_and_import(spec, site, work, runtime_trees=True)
            found = FrontedLab(site, spec, work, plan, client, None, planned, bundle)
            found.deployed = found.deploy()
            assert found.deployed.exit_code == 0 and not found.deployed.failed_hosts, found.deployed.event_log
            yield found
        finally:
            lab_down(site)


def _all_up(fronted: FrontedLab) -> dict[str, tuple[str, str]]:
    """Once HAProxy's health checks (TLS, the front door's identity, /healthz) found every node up."""

    def up() -> dict[str, tuple[str, str]] | None:
        states = fronted.runtime_api("show")
        return states if set(states.values()) == {("ready", "running")} else None

    found: dict[str, tuple[str, str]] = wait_for(up, what="every node up at the front door", timeout=60)

    # HAProxy starts a server UP and lets its first health checks take it down: `running` alone does
    # not prove a check passed (right after deploy a client's handshake met a closed door). Ready is
    # a request through the door answered by each node.
    def served() -> bool:
        try:
            answers = fronted.requests(4, from_host=fronted.backends[-1])
        except AssertionError:
            return False
        return {a["node"] for a in answers} == set(fronted.backends)

    wait_for(served, what="a request through the front door answered by every node", timeout=90, every=2)
    return found


def test_clients_are_served_through_the_front_door_and_logged_with_their_own_address(
    fronted: FrontedLab,
) -> None:
    door = fronted.plan.front_door
    assert fronted.client["front_door"] == {
        "url": f"https://{door.address}:{door.port}",
        "host": door.host,
        "address": door.address,
        "port": door.port,
    }
    assert set(_all_up(fronted)) == set(fronted.backends)
    client_host = fronted.backends[-1]  # a host on the management network that is not the front door
    client_address = fronted.plan.host(client_host).management_address
    answers = fronted.requests(8, from_host=client_host)
    assert [a["status"] for a in answers] == [200] * 8, answers
    assert {a["node"] for a in answers} == set(fronted.backends)  # both nodes served (leastconn)
    for node in fronted.backends:
        logged = fronted.decisions(node)
        for answer in (a for a in answers if a["node"] == node):
            record = logged[answer["decision_id"]]
            assert (record["tenant"], record["identity"], record["allow"]) == ("health", "certificate", True)
            assert record["request"]["peer"] == client_address != door.address


def test_a_node_drained_at_the_front_door_gets_no_new_connection_while_the_other_serves(
    fronted: FrontedLab,
) -> None:
    _all_up(fronted)
    drained, other = fronted.backends
    try:
        states = fronted.runtime_api("drain", drained)
        assert states[drained][0] == "drain" and states[other] == ("ready", "running")
        answers = fronted.requests(6, from_host=other)
        assert [(a["status"], a["node"]) for a in answers] == [(200, other)] * 6, answers
    finally:
        fronted.runtime_api("ready", drained)
    assert fronted.runtime_api("show")[drained][0] == "ready"
    answers = fronted.requests(6, from_host=other)
    assert {a["node"] for a in answers} == set(fronted.backends), answers


def test_a_second_deploy_of_the_front_door_host_changes_nothing(fronted: FrontedLab) -> None:
    host = fronted.plan.front_door.host
    again = fronted.deploy(full=True, limit=host)
    assert again.exit_code == 0 and not again.failed_hosts, again.event_log
    assert again.changed == 0, again.event_log


def test_the_nodes_run_the_prebuilt_runtime_tree(fronted: FrontedLab) -> None:
    """Each node's runtime came from the bundle's signed tree, not from a virtual environment built on
    the host: its install record names the tree's digest from the signed manifest, and the service
    runs the tree's interpreter."""
    manifest = json.loads((fronted.bundle.root / "manifest.json").read_text())
    trees = manifest["contents"]["runtime_trees"]
    assert len(trees) == 1, trees
    (tree,) = trees.values()
    for node in fronted.backends:
        record = json.loads(
            fronted.exec(["cat", f"/opt/aifactory/{fronted.bundle.version}/aifactory-install.json"], node)
        )
        assert record["tree"] == tree["sha256"] and len(record["tree"]) == 64, record
        assert record["bundle_digest"] == fronted.bundle.digest
        # No staging folder of the extraction is left beside the version's folder.
        listing = fronted.exec(["ls", "-A", "/opt/aifactory"], node).split()
        assert not [name for name in listing if ".partial-" in name], listing
