"""Reading Slurm's node states (`scontrol --oneliner show node`) and the drain reasons aifactory writes;
the drain and resume themselves run against slurmctld in tests/health/test_health_lab.py."""

from __future__ import annotations

from aifactory.health.slurm import drained_for, parse_show_node, reason_for

# Two nodes as Slurm 22.05 prints them with --oneliner (fields cut to those that matter here): one
# drained by aifactory, one drained by an operator with spaces in the reason.
SHOW_NODE = (
    "NodeName=lab-cpu-001 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=2 State=IDLE+DRAIN "
    "Partitions=cpu Reason=aifactory-health: allreduce-busbw,tcp-bandwidth [root@2026-12-02T01:00:00]\n"
    "NodeName=lab-cpu-002 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=2 State=IDLE "
    "Partitions=cpu\n"
    "NodeName=lab-cpu-003 Arch=x86_64 State=DOWN+DRAIN Partitions=cpu Reason=disk swap, ticket 42 "
    "[ops@2026-12-01T10:00:00]\n"
)


def test_states_and_reasons_are_read() -> None:
    nodes = parse_show_node(SHOW_NODE)
    assert sorted(nodes) == ["lab-cpu-001", "lab-cpu-002", "lab-cpu-003"]
    ours, fine, theirs = nodes["lab-cpu-001"], nodes["lab-cpu-002"], nodes["lab-cpu-003"]
    assert (ours.state, ours.reason, ours.drained, ours.drained_by_us) == (
        "IDLE+DRAIN",
        "aifactory-health: allreduce-busbw,tcp-bandwidth",
        True,
        True,
    )
    assert (fine.drained, fine.reason) == (False, "")
    assert (theirs.drained, theirs.drained_by_us, theirs.reason) == (True, False, "disk swap, ticket 42")


def test_reason_round_trip() -> None:
    reason = reason_for(["allreduce-busbw", "tcp-bandwidth"])
    assert reason == "aifactory-health: allreduce-busbw,tcp-bandwidth"
    assert drained_for(reason) == ["allreduce-busbw", "tcp-bandwidth"]
    assert drained_for("aifactory-health: ") == []
