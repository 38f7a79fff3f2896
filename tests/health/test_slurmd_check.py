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
from pathlib import Path

import pytest

NODE = "lab-cpu-001"
SCONTROL = """#!/bin/sh
# stand-in for scontrol (see the test module): show node from $STATE, record updates in $UPDATES
if [ "$1" = update ]; then echo "$@" >> "$UPDATES"; exit 0; fi
cat "$STATE"
"""
THRESHOLDS = {
    "disk-free": {"op": ">=", "value": 5, "unit": "%"},
    "inodes-free": {"op": ">=", "value": 5, "unit": "%"},
    "memory-available": {"op": ">=", "value": 1, "unit": "%"},
    "storage-mounted-rw": {"op": ">=", "value": 1, "unit": "bool"},
}


def _check(
    tmp_path: Path, storage: list[str], state_line: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    (tmp_path / "state").write_text(state_line + "\n")
    updates = tmp_path / "updates"
    updates.write_text("")
    task = {
        "task": {"host": NODE, "level": "quick", "paths": [str(tmp_path)], "storage": storage},
        "thresholds": THRESHOLDS,
        "expected": [c for c in sorted(THRESHOLDS) if storage or c != "storage-mounted-rw"],
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
    [("aifactory-health: storage-mounted-rw", True), ("disk swap, ticket 42", False)],
    ids=["aifactory-drain", "operator-drain"],
)
def test_a_passing_node_resumes_only_aifactorys_drain(tmp_path: Path, reason: str, resumed: bool) -> None:
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
