"""The lab's fault corpus as built from the lab's plan (no lab needed: the scripts, not their effect,
which tests/health/test_faults_lab.py shows on the deployed lab)."""

from __future__ import annotations

from pathlib import Path

from aifactory.lab import faults
from aifactory.lab.layout import LabLayout
from aifactory.plan import plan_site

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"


def test_every_fault_of_a_compute_host_names_its_reason_and_has_an_undo() -> None:
    plan = plan_site(LAB, write_lock=False).plan
    host = next(h for h in plan.hosts if h.role == "cpu")
    corpus = faults.fault_corpus(plan, host, LabLayout.for_site(plan.name))
    assert [f.name for f in corpus] == [
        "link-rate",
        "link-loss",
        "link-down",
        "disk-full",
        "storage-unmounted",
        "storage-read-only",
        "clock-wrong",
        "munge-stopped",
        "slurmd-stopped",
        "runtime-stopped",
    ]
    assert all(f.host == host.name and f.reasons and f.inject and f.undo for f in corpus)
    clock = next(f for f in corpus if f.name == "clock-wrong")
    assert clock.source_host == plan.control_host and "faketime" in clock.source_inject
    assert "-x" in clock.inject.split()  # chronyd never steers the (shared) clock
    loss = next(f for f in corpus if f.name == "link-loss")
    assert f"meta length gt {faults.LOSSY_FRAME_BYTES}" in loss.inject  # the host's ACKs are not dropped


def test_storage_gone_everywhere_covers_every_host_that_mounts_it() -> None:
    """The control host mounts the site storage too but has no compute link: it is in, without the
    faults that need one."""
    plan = plan_site(LAB, write_lock=False).plan
    everywhere = faults.storage_gone_everywhere(plan, LabLayout.for_site(plan.name))
    assert sorted(f.host for f in everywhere) == sorted(h.name for h in plan.hosts if h.mounts)
    assert {f.name for f in everywhere} == {"storage-unmounted"}
