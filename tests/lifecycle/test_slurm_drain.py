"""What the upgrade tells Slurm (aifactory.lifecycle.site_parts.ScontrolDrain), read from Slurm 22.05's
own output: drain with the upgrade's reason, leave an operator's (or the health gate's) drain alone,
resume only its own drains, wait for jobs and requeue them.

A stand-in replays recorded `scontrol`/`squeue` output and records the commands, because slurmctld
runs only on the lab: the real commands against it are the lab test's (tests/pipeline/test_upgrade_lab.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from aifactory.errors import PrerequisiteError
from aifactory.lifecycle.site_parts import ScontrolDrain

SHOW_NODE = (
    "NodeName=lab-cpu-001 Arch=x86_64 CPUTot=2 State=IDLE Partitions=cpu\n"
    "NodeName=lab-cpu-002 Arch=x86_64 CPUTot=2 State=MIXED+DRAIN Partitions=cpu "
    "Reason=aifactory-upgrade: 1.0.0 -> 1.0.1 [root@2026-12-02T20:00:00]\n"
    "NodeName=lab-cpu-003 Arch=x86_64 State=IDLE+DRAIN Partitions=cpu Reason=disk swap, ticket 42 "
    "[ops@2026-12-01T10:00:00]\n"
    "NodeName=lab-cpu-004 Arch=x86_64 State=IDLE+DRAIN Partitions=cpu "
    "Reason=aifactory-health: memory-available [root@2026-12-02T19:00:00]\n"
)
REASON = "aifactory-upgrade: 1.0.1 -> 1.0.2"


@dataclass
class RecordedSlurm:
    """Answers `scontrol show node` with SHOW_NODE and `squeue` with the next of `queues`."""

    queues: list[str] = field(default_factory=list)
    failing: str | None = None  # a command (argv[0] argv[1]) that exits 1
    commands: list[list[str]] = field(default_factory=list)
    where: str = "the recorded control host"

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        if self.failing == " ".join(argv[:2]):
            return subprocess.CompletedProcess(argv, 1, "", "slurm_update error: Invalid node name specified")
        if argv[:2] == ["scontrol", "--oneliner"]:
            return subprocess.CompletedProcess(argv, 0, SHOW_NODE, "")
        if argv[0] == "squeue":
            return subprocess.CompletedProcess(argv, 0, self.queues.pop(0) if self.queues else "", "")
        return subprocess.CompletedProcess(argv, 0, "", "")

    def updates(self) -> list[list[str]]:
        return [c for c in self.commands if c[:2] in (["scontrol", "update"], ["scontrol", "requeue"])]


def test_drain_sets_the_upgrade_reason_and_leaves_other_drains_alone() -> None:
    slurm = RecordedSlurm()
    ScontrolDrain(slurm).drain(
        ["lab-control-001", "lab-cpu-001", "lab-cpu-002", "lab-cpu-003", "lab-cpu-004"], reason=REASON
    )
    assert slurm.updates() == [
        ["scontrol", "update", "nodename=lab-cpu-001", "state=drain", f"reason={REASON}"],
        [
            "scontrol",
            "update",
            "nodename=lab-cpu-002",
            "state=drain",
            f"reason={REASON}",
        ],  # ours: brought up to date
    ]  # the controller is no Slurm node; cpu-003 (an operator's) and cpu-004 (the gate's) keep theirs


def test_resume_lifts_only_the_upgrades_own_drains() -> None:
    slurm = RecordedSlurm()
    ScontrolDrain(slurm).resume(["lab-cpu-001", "lab-cpu-002", "lab-cpu-003", "lab-cpu-004"])
    assert slurm.updates() == [["scontrol", "update", "nodename=lab-cpu-002", "state=resume"]]


def test_jobs_are_waited_for_on_the_slurm_nodes_only_until_they_end() -> None:
    slurm = RecordedSlurm(queues=["101\n102\n", "102\n", ""])
    naps: list[float] = []
    running = ScontrolDrain(slurm, poll_s=0.5, sleep=naps.append).wait_for_jobs(
        ["lab-control-001", "lab-cpu-002", "lab-cpu-001"], timeout_s=60
    )
    assert running == [] and naps == [0.5, 0.5]
    squeue = [c for c in slurm.commands if c[0] == "squeue"]
    assert squeue[0] == [
        "squeue", "--noheader", "--format=%A", "--nodelist=lab-cpu-001,lab-cpu-002", "--states=R,CG,CF,S"
    ]  # fmt: skip


def test_jobs_still_running_at_the_timeout_are_named_and_requeued() -> None:
    slurm = RecordedSlurm(queues=["102\n101\n102\n"])
    drain = ScontrolDrain(slurm, sleep=lambda s: None)
    running = drain.wait_for_jobs(["lab-cpu-001"], timeout_s=0)
    assert running == ["101", "102"]
    drain.requeue(running)
    assert slurm.updates() == [
        ["scontrol", "update", "jobid=101", "requeue=1"],  # submitted with --no-requeue: made requeueable
        ["scontrol", "update", "jobid=102", "requeue=1"],
        ["scontrol", "requeue", "101,102"],
    ]


def test_a_slurm_command_that_fails_stops_with_its_own_message() -> None:
    slurm = RecordedSlurm(failing="scontrol update")
    with pytest.raises(PrerequisiteError) as raised:
        ScontrolDrain(slurm).drain(["lab-cpu-001"], reason=REASON)
    assert raised.value.code == "slurm-failed" and "Invalid node name specified" in raised.value.message
