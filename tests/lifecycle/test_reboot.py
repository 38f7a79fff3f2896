"""A change that needs a reboot (a kernel, driver or firmware package changes version between the two
bundles' manifests): decided before it starts, refused when a host has no BMC (unless --no-reboot),
each batch restarted between its deploy and its health gate, journaled so that a run killed after
the reset never resets twice, recorded in the operator log; the reset itself through the project's
Redfish client against the sushy-tools emulator on loopback.

The orchestration runs on tests/lifecycle/fake_site.py's stand-ins (the real parts are the lab's);
the emulator test stands in for the host's SSH only (no host is there to restart: said below).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_for

from aifactory.bundle.manifest import BundleVersion, FileEntry, Manifest
from aifactory.errors import UpgradeError
from aifactory.lifecycle.batches import BatchSize, UpgradeHost, plan_batches
from aifactory.lifecycle.bmc_reboot import BmcAccess, RedfishRebooter
from aifactory.lifecycle.journal import JournalStore
from aifactory.lifecycle.reboot import (
    RebootDecision,
    package_versions,
    reboot_decision,
    require_bmcs,
)
from aifactory.lifecycle.upgrade import begin_upgrade, run_upgrade
from aifactory.plan.model import SitePlan
from aifactory.provision.redfish import BmcCredentials
from tests.provision.emulator import PASSWORD, USER, Emulator, free_port
from tests.provision.test_redfish_emulator import SYSTEM_A, live, system

from .fake_site import A, B, FakeSite, Killed

HOSTS = ["ctl", "gpu-001", "gpu-002"]
SERVING = {"gpu-001", "gpu-002"}
BATCHES = plan_batches(
    [UpgradeHost(h, serving=h in SERVING, slurm_controller=h == "ctl") for h in HOSTS], BatchSize.parse("1")
)


def _manifest(version: str, debs: dict[str, str]) -> Manifest:
    """A bundle manifest whose apt repository holds `debs` (name -> version), read back from its
    signed bytes as verify reads it."""
    files = tuple(
        FileEntry(
            f"apt/{name}_{deb_version.replace(':', '%3a')}_amd64.deb",
            1,
            hashlib.sha256(f"{name}{deb_version}".encode()).hexdigest(),
            "deb",
        )
        for name, deb_version in sorted(debs.items())
    )
    built = Manifest("lab", BundleVersion.parse(version), "2026-12-01T00:00:00Z", 0, "p", "s", "1", files, {})
    return Manifest.parse(built.to_bytes(), source="test")


BASE = {"linux-image-amd64": "6.1.0-26", "haproxy": "2.6.12-1", "munge": "0.5.15-2"}


def test_a_kernel_package_that_changes_version_needs_a_reboot() -> None:
    running = _manifest("2026.12.1", BASE)
    target = _manifest("2026.12.2", {**BASE, "linux-image-amd64": "6.1.0-27"})
    decision = reboot_decision(running, target)
    assert decision.render() == "reboot: yes (linux-image-amd64 6.1.0-26 -> 6.1.0-27)"
    assert decision.as_dict()["packages"] == [
        {"name": "linux-image-amd64", "from": "6.1.0-26", "to": "6.1.0-27"}
    ]


def test_other_packages_changing_need_no_reboot() -> None:
    running = _manifest("2026.12.1", BASE)
    target = _manifest("2026.12.2", {**BASE, "haproxy": "2.6.12-2", "munge": "0.5.15-3"})
    assert reboot_decision(running, target).render() == "reboot: no"


def test_a_driver_added_firmware_and_an_epoch_count() -> None:
    running = _manifest("2026.12.1", {**BASE, "firmware-misc-nonfree": "20230210-5"})
    target = _manifest(
        "2026.12.2",
        {**BASE, "firmware-misc-nonfree": "1:20230210-6", "nvidia-kernel-dkms": "535.183.01-1"},
    )
    assert package_versions(target)["firmware-misc-nonfree"] == "1:20230210-6"
    assert reboot_decision(running, target).render() == (
        "reboot: yes (firmware-misc-nonfree 20230210-5 -> 1:20230210-6, "
        "nvidia-kernel-dkms (none) -> 535.183.01-1)"
    )


def test_without_the_running_manifest_every_kernel_package_counts() -> None:
    target = _manifest("2026.12.2", BASE)
    assert reboot_decision(None, target).needed


def test_a_reboot_with_a_host_without_bmc_is_refused_naming_it(lab_plan: SitePlan) -> None:
    no_bmc = [h.name for h in lab_plan.hosts if h.bmc is None]
    assert no_bmc, "the lab's control host has no BMC"
    decision = reboot_decision(
        _manifest("1", BASE), _manifest("2", {**BASE, "linux-image-amd64": "6.1.0-27"})
    )
    with pytest.raises(UpgradeError) as caught:
        require_bmcs(lab_plan, [h.name for h in lab_plan.hosts], decision)
    assert caught.value.code == "upgrade-no-bmc"
    assert all(name in caught.value.message for name in no_bmc)
    assert "--no-reboot" in (caught.value.hint or "")
    require_bmcs(lab_plan, [h.name for h in lab_plan.hosts], RebootDecision())  # no reboot: no BMC needed


REBOOT = {**RebootDecision().as_dict(), "needed": True, "restart": True}


@pytest.fixture
def store(tmp_path: Path) -> JournalStore:
    return JournalStore(tmp_path / "upgrade")


def _run(site: FakeSite, store: JournalStore, reboot: dict[str, object] | None = REBOOT) -> None:
    journal, _ = begin_upgrade(store, site="lab", old=A, new=B, batches=BATCHES, reboot=reboot)
    run_upgrade(journal, store, site.parts(), drain_timeout_s=60)


def test_each_batch_is_reset_then_waited_for_then_gated(store: JournalStore) -> None:
    site = FakeSite(list(HOSTS), set(SERVING))
    _run(site, store)
    assert site.actions[:8] == [
        "slurm-drain ctl",
        "door-drain ctl",
        f"install-{B.version} ctl",
        "reset ctl",
        "wait-ssh ctl",
        "gate ctl",
        "door-enable ctl",
        "slurm-resume ctl",
    ]
    assert site.boots == {h: 1 for h in HOSTS} and not site.broken_rules
    started = site.events[0]
    assert started.kind == "started" and started.detail["reboot"] == REBOOT


def test_no_reboot_needed_means_no_reset(store: JournalStore) -> None:
    site = FakeSite(list(HOSTS), set(SERVING))
    _run(site, store, reboot=None)
    assert not [a for a in site.actions if a.startswith(("reset", "wait-ssh"))]
    assert "reboot" not in site.events[0].detail


def test_no_reboot_flag_records_the_reboot_and_resets_nothing(store: JournalStore) -> None:
    site = FakeSite(list(HOSTS), set(SERVING))
    _run(site, store, reboot={**REBOOT, "restart": False})
    assert not [a for a in site.actions if a.startswith("reset")]
    assert site.events[0].detail["reboot"]["restart"] is False


def test_a_run_killed_after_the_reset_waits_on_the_rerun_and_never_resets_twice(store: JournalStore) -> None:
    site = FakeSite(list(HOSTS), set(SERVING), kill_at=3, kill_after=True)  # the 4th action: reset ctl
    with pytest.raises(Killed, match="reset ctl"):
        _run(site, store)
    kept = store.load()
    assert kept is not None and kept.hosts["ctl"].phase == "reset-sent"
    assert kept.hosts["ctl"].boot_id == "boot-0"  # before the reset
    site.kill_at = None
    _run(site, store)
    assert site.actions.count("reset ctl") == 1
    assert site.actions[4:6] == ["wait-ssh ctl", "gate ctl"]
    assert site.boots == {h: 1 for h in HOSTS}


def test_a_failed_gate_goes_back_with_a_reboot_too(store: JournalStore) -> None:
    site = FakeSite(list(HOSTS), set(SERVING), failing={B.version: {"gpu-001"}})
    with pytest.raises(UpgradeError):
        _run(site, store)
    back = site.actions[site.actions.index("gate gpu-001") :]
    assert back[:5] == [
        "gate gpu-001",
        f"install-{A.version} gpu-001",
        "reset gpu-001",
        "wait-ssh gpu-001",
        "gate gpu-001",
    ]
    assert site.boots["gpu-001"] == 2 and site.runs["gpu-001"] == A.version


# -- the Redfish reset, against the sushy-tools emulator on loopback -----------------------------


class SameBootId:
    """Stand-in for the host's SSH: no host is there to restart, only its emulated BMC, so the boot
    id never moves (the BMC reporting the system Off after the reset is what shows the restart)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def read(self, host: str) -> str | None:
        self.asked.append(host)
        return "boot-0"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    running = Emulator(tmp_path_factory.mktemp("bmc"), free_port()).start([system(SYSTEM_A, power="On")])
    yield running
    running.stop()


def _rebooter(
    lab_plan: SitePlan, emulator: Emulator, probe: SameBootId, *, graceful_s: float, back_s: float
) -> tuple[RedfishRebooter, str]:
    """The rebooter for a lab host with a BMC, its client pointed at the emulator on loopback (the
    planned BMC address is the lab's, which this test does not bring up)."""
    host = next(h for h in lab_plan.hosts if h.bmc is not None).name
    rebooter = RedfishRebooter(
        lab_plan,
        BmcAccess("http", emulator.port),
        {host: BmcCredentials(USER, PASSWORD)},
        probe,
        graceful_s,
        back_s,
        0.2,
    )
    client = rebooter._client(host)
    assert client.endpoint == BmcAccess("http", emulator.port).endpoint(
        next(h for h in lab_plan.hosts if h.name == host).bmc.address  # type: ignore[union-attr]
    )
    client.endpoint = emulator.endpoint
    return rebooter, host


def _wait_on(emulator: Emulator) -> None:
    wait_for(
        lambda: live(emulator.endpoint, SYSTEM_A)["PowerState"] == "On", what="the emulator on", timeout=30
    )


@pytest.mark.slow
def test_the_graceful_reset_goes_to_the_bmc_and_the_host_is_back_once_it_cycled(
    emulator: Emulator, lab_plan: SitePlan
) -> None:
    _wait_on(emulator)
    probe = SameBootId()
    rebooter, host = _rebooter(lab_plan, emulator, probe, graceful_s=60, back_s=60)
    ids = rebooter.boot_ids([host])
    rebooter.reset([host])
    assert live(emulator.endpoint, SYSTEM_A)["PowerState"] == "Off"  # the emulator's restart: off, then on
    outcome = rebooter.wait_back(ids)
    assert outcome.passed and "forced" not in outcome.detail
    assert probe.asked[:2] == [host, host]


@pytest.mark.slow
def test_a_reset_that_never_came_is_forced_after_the_graceful_timeout(
    emulator: Emulator, lab_plan: SitePlan
) -> None:
    """As after a run killed between journaling the reset and sending it: nothing restarts the
    host, so the wait sends ForceRestart once the graceful timeout passed."""
    _wait_on(emulator)
    rebooter, host = _rebooter(lab_plan, emulator, SameBootId(), graceful_s=0, back_s=60)
    outcome = rebooter.wait_back({host: "boot-0"})
    assert outcome.passed and outcome.detail == {"forced": [host]}


@pytest.mark.slow
def test_a_host_that_never_comes_back_fails_named(emulator: Emulator, lab_plan: SitePlan) -> None:
    class Silent(SameBootId):
        def read(self, host: str) -> str | None:
            return None  # SSH never answers (or not with the known host key)

    _wait_on(emulator)
    rebooter, host = _rebooter(lab_plan, emulator, Silent(), graceful_s=0, back_s=0.5)
    outcome = rebooter.wait_back({host: "boot-0"})
    assert outcome.failures and outcome.failures[0].startswith(f"{host}: not back after the restart")
