"""The node's own health check (slurmd's HealthCheckProgram): run as slurmd runs it, in a process of
its own, it imports no torch, checks this machine by the node's task, judges with the real health
policy and drains its own node with the gate's reason; a pass resumes only aifactory's drain.

No slurmctld runs outside the lab: a stand-in `scontrol` first on PATH answers `show node` from a
state file and records every `update` (what the real one would be told). The lab runs the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aifactory.health.node_tasks import node_task_document

NODE = "lab-cpu-001"
NODE_CHECK = "aifactory.runtime.health.slurmd_check"
LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
SCONTROL = """#!/bin/sh
# stand-in for scontrol (see the test module): show node from $STATE ($STATE.after once updated),
# record updates in $UPDATES
if [ "$1" = update ]; then echo "$@" >> "$UPDATES"; exit 0; fi
if [ -s "$UPDATES" ] && [ -f "$STATE.after" ]; then cat "$STATE.after"; exit 0; fi
cat "$STATE"
"""
THRESHOLDS = {
    "disk-free": {"op": ">=", "value": 5, "unit": "%"},
    "inodes-free": {"op": ">=", "value": 5, "unit": "%"},
    "memory-available": {"op": ">=", "value": 1, "unit": "%"},
    "storage-mounted-rw": {"op": ">=", "value": 1, "unit": "bool"},
}


# The lab's shape: two compute nodes in pool cpu; the budget lets aifactory hold one of them drained.
LIMITS = {"pool_of": {NODE: "cpu", "lab-cpu-002": "cpu"}, "pools": {"cpu": 1}, "site": 1}


def _check(
    tmp_path: Path,
    storage: list[str],
    state_line: str,
    limits: dict[str, Any] | None = LIMITS,
    after: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    (tmp_path / "state").write_text(state_line + "\n")
    if after is not None:  # what Slurm shows once this node has drained itself
        (tmp_path / "state.after").write_text(after + "\n")
    updates = tmp_path / "updates"
    updates.write_text("")
    task = {
        "task": {"host": NODE, "level": "quick", "paths": [str(tmp_path)], "storage": storage},
        "thresholds": THRESHOLDS,
        "expected": [c for c in sorted(THRESHOLDS) if storage or c != "storage-mounted-rw"],
        **({"drain_limits": limits} if limits is not None else {}),
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    # the module run as slurmd would, then whether torch was imported on the way
    program = (
        "import runpy, sys\n"
        f"sys.argv = ['slurmd_check', '--task', {str(tmp_path / 'task.json')!r}]\n"
        "try:\n"
        "    runpy.run_module('aifactory.runtime.health.slurmd_check', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
        "    raise\n"
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STATE": str(tmp_path / "state"),
        "UPDATES": str(updates),
    }
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    return done, updates.read_text().splitlines()


def test_a_failing_node_drains_itself_with_the_gates_reason_and_imports_no_torch(tmp_path: Path) -> None:
    missing = str(tmp_path / "lake")  # a site storage mount point that is not mounted
    done, updates = _check(tmp_path, [missing], f"NodeName={NODE} State=IDLE Partitions=cpu")
    assert done.returncode == 0, done.stderr
    assert "no torch" in done.stderr
    result = json.loads(done.stdout)
    assert (result["verdict"], result["reasons"]) == ("drain", ["storage-mounted-rw"])
    assert updates == [f"update nodename={NODE} state=drain reason=aifactory-health: storage-mounted-rw"]


@pytest.mark.parametrize(
    ("reason", "resumed"),
    [
        ("aifactory-health: disk-free", True),
        ("disk swap, ticket 42", False),
        ("aifactory-health: admission", False),
        ("aifactory-health: fabric-unreachable", False),
        ("aifactory-health: disk-free,host-unreachable", False),
    ],
    ids=["aifactory-drain", "operator-drain", "admission", "peer-check", "partly-unchecked"],
)
def test_a_passing_node_resumes_only_aifactorys_drain(tmp_path: Path, reason: str, resumed: bool) -> None:
    """A pass lifts aifactory's drain only when the node checked every reason of it itself: never an
    operator's drain, the admission (the control host's standard run admits) or a peer's check."""
    state = f"NodeName={NODE} State=IDLE+DRAIN Partitions=cpu Reason={reason} [root@2026-12-02T01:00:00]"
    done, updates = _check(tmp_path, [], state)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "admit"
    assert updates == ([f"update nodename={NODE} state=resume"] if resumed else [])


def test_a_node_drained_for_a_check_it_cannot_run_stays_drained(tmp_path: Path) -> None:
    """Drained for the all-reduce (a check only the control host's standard runs make): the node's
    quick check passing does not lift it."""
    reason = "aifactory-health: allreduce-busbw [root@2026-12-02T01:00:00]"
    state = f"NodeName={NODE} State=IDLE+DRAIN Reason={reason}"
    done, updates = _check(tmp_path, [], state)
    assert done.returncode == 0, done.stderr
    assert updates == []
    assert "not checked at this level" in json.loads(done.stdout)["slurm"]["why"]


@pytest.mark.parametrize(
    ("other", "limits", "drained"),
    [
        ("NodeName=lab-cpu-002 State=IDLE Partitions=cpu", LIMITS, True),
        (
            "NodeName=lab-cpu-002 State=IDLE+DRAIN Partitions=cpu "
            "Reason=aifactory-health: storage-mounted-rw [root@2026-12-02T01:00:00]",
            LIMITS,
            False,
        ),
        (
            "NodeName=lab-cpu-002 State=IDLE+DRAIN Partitions=cpu Reason=disk swap, ticket 42",
            LIMITS,
            True,
        ),
        ("NodeName=lab-cpu-002 State=IDLE Partitions=cpu", None, False),
    ],
    ids=["budget-free", "budget-spent-by-aifactory", "operator-drain-not-counted", "no-budget-no-drain"],
)
def test_a_failing_node_drains_itself_only_within_the_drain_budget(
    tmp_path: Path, other: str, limits: dict[str, Any] | None, drained: bool
) -> None:
    """Storage gone from every node at once: each node's own check fails; the first drains itself,
    the next finds the budget spent by aifactory's drain and stays in service. An operator's drain
    does not count against it; a task file with no budget never drains (a missing budget is not an
    unlimited one)."""
    missing = str(tmp_path / "lake")
    state = f"NodeName={NODE} State=IDLE Partitions=cpu\n{other}"
    done, updates = _check(tmp_path, [missing], state, limits)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "drain"
    if drained:
        assert updates == [f"update nodename={NODE} state=drain reason=aifactory-health: storage-mounted-rw"]
    else:
        assert updates == []
        assert result["slurm"]["over_budget"] and result["slurm"]["action"] == "none", result


def test_the_node_task_document_is_what_the_node_check_reads(tmp_path: Path) -> None:
    """The control host's document for a lab node (the plan's quick task, thresholds, expected
    checks, the resolved budget) read back by the node check gives the same task and limits."""
    from aifactory.health.budget import drain_limits
    from aifactory.health.tasks import HostPlan, expected_checks
    from aifactory.plan import plan_site
    from aifactory.runtime.health.model import HostTask
    from aifactory.runtime.health.slurmd_check import read_node_task

    plan = plan_site(LAB, write_lock=False).plan
    host = next(h for h in plan.hosts if h.role == "cpu")
    task = HostTask.from_dict({"host": host.name, "level": "quick", "paths": ["/"], "storage": ["/srv/lake"]})
    limits = drain_limits(plan, None)
    host_plan = HostPlan(host, task, {}, expected_checks(task, collective=False))
    path = tmp_path / "node-task.json"
    path.write_text(json.dumps(node_task_document(host_plan, limits)))
    read = read_node_task(path)
    assert (read.task, read.limits) == (replace(task, fio_size_mib=0), limits)
    assert read.expected == ("disk-free", "inodes-free", "memory-available", "storage-mounted-rw")
    assert read.limits is not None and read.limits.pool_of[host.name] == "cpu"


def test_the_node_task_leaves_what_needs_a_peer_to_the_control_host() -> None:
    """From the plan's own quick task: no reachability, no bandwidth ring (a node alone cannot tell
    its fault from its peer's), the clock not expected (chronyd may not answer); its own links,
    services, the runtime's server and storage kept, with their thresholds."""
    from aifactory.connection import ssh_connection
    from aifactory.health.budget import drain_limits
    from aifactory.health.tasks import plan_hosts
    from aifactory.health.thresholds import load_table
    from aifactory.plan import plan_site

    plan = plan_site(LAB, write_lock=False).plan
    hosts = [h for h in plan.hosts if h.role == "cpu"]
    (full, _) = plan_hosts(plan, hosts, level="quick", connection=ssh_connection(), table=load_table())
    assert full.task.peers and full.task.bandwidth_peer is not None
    document = node_task_document(full, drain_limits(plan, None))
    task = json.loads(json.dumps(document["task"]))  # as the node reads it
    assert (task["peers"], task["bandwidth_peer"], task["bandwidth_listen"]) == ([], None, None)
    assert {"fabric-unreachable", "tcp-bandwidth", "clock-offset", "storage-write"}.isdisjoint(
        document["expected"]
    )
    assert {"link-up", "service-running", "storage-mounted-rw", "disk-free"} <= set(document["expected"])
    assert set(document["expected"]) <= set(document["thresholds"])
    assert task["deployed_services"] == ["aifactory-serve"]
    assert {link["fabric"] for link in task["links"]} == {"mgmt", "compute"}


@pytest.mark.parametrize(
    "limits",
    [
        {"pool_of": {NODE: "cpu"}, "pools": {}, "site": 1},
        {"pool_of": {NODE: "cpu"}, "pools": {"cpu": -1}, "site": 1},
        {"pool_of": {NODE: "cpu"}, "pools": {"cpu": True}, "site": 1},
        {"pool_of": {NODE: "cpu"}, "pools": {"cpu": 1}},
    ],
    ids=["pool-without-limit", "negative", "bool", "no-site"],
)
def test_a_bad_drain_budget_in_the_task_file_is_a_clear_error(tmp_path: Path, limits: dict[str, Any]) -> None:
    done, updates = _check(tmp_path, [], f"NodeName={NODE} State=IDLE Partitions=cpu", limits)
    assert done.returncode != 0 and updates == []
    assert "is not a node health task" in done.stderr and "Traceback" not in done.stderr


def test_the_control_host_installs_a_task_only_when_it_changed(tmp_path: Path) -> None:
    """`--install` (what the gate runs on each node) checks the document, writes it atomically with
    mode 0644 and says whether it changed; a document that is not a task is refused, file untouched."""
    target = tmp_path / "etc" / "node-task.json"
    document = json.dumps({"task": {"host": NODE, "level": "quick"}, "thresholds": {}, "expected": []})

    def install(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", NODE_CHECK, "--install", "--task", f"{target}"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )

    first, second = install(document), install(document)
    assert (json.loads(first.stdout), json.loads(second.stdout)) == ({"changed": True}, {"changed": False})
    assert target.read_text() == document and target.stat().st_mode & 0o777 == 0o644
    refused = install('{"task": "$(reboot)"}')
    assert refused.returncode != 0 and "is not a node health task" in refused.stderr
    assert "Traceback" not in refused.stderr and target.read_text() == document


@pytest.mark.parametrize(
    ("other", "kept"),
    [("lab-cpu-000", False), ("lab-cpu-002", True)],
    ids=["the-other-sorts-first", "this-one-sorts-first"],
)
def test_nodes_that_drain_themselves_at_the_same_moment_keep_only_the_budget(
    tmp_path: Path, other: str, kept: bool
) -> None:
    """Both saw the budget free and drained themselves: reading Slurm again, the budget (1) is
    overspent; the node whose name sorts first keeps its drain, the other goes back into service."""
    missing = str(tmp_path / "lake")
    limits = {"pool_of": {NODE: "cpu", other: "cpu"}, "pools": {"cpu": 1}, "site": 1}
    reason = "aifactory-health: storage-mounted-rw [root@2026-12-02T01:00:00]"
    drained = f"State=IDLE+DRAIN Partitions=cpu Reason={reason}"
    before = f"NodeName={NODE} State=IDLE Partitions=cpu\nNodeName={other} State=IDLE Partitions=cpu"
    after = f"NodeName={NODE} {drained}\nNodeName={other} {drained}"
    done, updates = _check(tmp_path, [missing], before, limits, after=after)
    assert done.returncode == 0, done.stderr
    drain = f"update nodename={NODE} state=drain reason=aifactory-health: storage-mounted-rw"
    if kept:
        assert updates == [drain]
    else:
        assert updates == [drain, f"update nodename={NODE} state=resume"]
        slurm = json.loads(done.stdout)["slurm"]
        assert slurm["raced"] and slurm["over_budget"] and slurm["action"] == "none"
