"""Joules and cost on the session's deployed lab (docs/economics.md): a training job's.

Real parts: the session's `deployed_lab` with the monitoring stage deployed once for the
telemetry lab modules (the `monitored` fixture, tests/telemetry/monitored_lab.py: 2 s scrapes, rule
evaluations and BMC power polls), the lab BMCs' emulated power through the power collector
(`aifactory_host_energy_joules_total{source="emulated"}`), a real Slurm job, and `aifactory jobs
--energy` on the control host.

The per-decision check (status JSON against a hand computation from the raw series after a load
run) is not in the suite yet: on the clean-clone CI both sides came out empty, not yet explained;
it is kept on the branch econ-lab-wip (issue 25 stays open).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.telemetry.monitored_lab import Monitored, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_a_finished_training_job_has_its_nodes_joules_and_cost(monitored: Monitored) -> None:
    """A Slurm job of known length on one compute node: `aifactory jobs SITE --energy` gives it that
    node's energy over the job's start and end, with the energy's source, and a cost (the lab has
    prices). A job holds its nodes whole, so all of their energy in that time is the job's."""
    lab = monitored.lab
    node = monitored.serving[0]
    wait_until(
        f"{node}'s energy counter in Prometheus",
        180,
        lambda: node in {r["metric"]["host"] for r in monitored.query("aifactory_host_energy_joules_total")},
    )
    sbatch = ["sbatch", "--parsable", f"--nodelist={node}", "--nodes=1", "--output=/dev/null"]
    job = lab.exec([*sbatch, "--wrap=sleep 12"]).stdout.strip()

    def finished() -> dict[str, Any] | None:
        done = lab.exec(["aifactory", "jobs", str(lab.spec), "--energy", "--format", "json"], timeout=300)
        listed = {j["id"]: j for j in json.loads(done.stdout)}
        found = listed.get(job)
        return found if found and found["state"] == "COMPLETED" and found.get("energy") else None

    listed = wait_until(f"job {job} in the completion log with its energy", 120, finished)
    energy = listed["energy"]
    assert [h["host"] for h in energy["hosts"]] == [node], energy
    assert energy["sources"] == ["emulated"], energy
    # at least the lab's idle power over the job's whole length (the emulated reading never goes below it)
    assert energy["seconds"] >= 12 and energy["joules"] >= 0.9 * 100 * energy["seconds"], energy
    assert energy["currency"] == "EUR" and energy["cost"] > 0, energy
