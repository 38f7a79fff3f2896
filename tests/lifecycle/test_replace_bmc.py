"""The replacement's BMC step against a real Redfish service: the sushy-tools emulator on loopback
(tests/provision/emulator.py), as `aifactory provision`'s tests use it. The one stand-in is where the
BMC listens: on loopback, not on the plan's BMC address (the access's endpoint says so)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifactory.errors import ProvisionError
from aifactory.lifecycle.bmc_reboot import BmcAccess
from aifactory.lifecycle.replace_parts import RedfishReinstall
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.provision.redfish import BmcCredentials
from tests.provision.emulator import PASSWORD, USER, Emulator, free_port
from tests.provision.test_redfish_emulator import live

pytestmark = pytest.mark.slow
LAB_SPEC = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
NEW_MACHINE = "6f1d3a52-2b7e-4c1e-9d0a-0000000000a7"
HOST = "lab-cpu-002"


@dataclass(frozen=True)
class Loopback(BmcAccess):
    """The emulator's endpoint for every BMC address (it listens on loopback)."""

    url: str = ""

    def endpoint(self, address: str) -> str:
        return self.url


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    folder = tmp_path_factory.mktemp("bmc-plan")
    shutil.copy(LAB_SPEC, folder / "site.yaml")
    shutil.copy(LAB_SPEC.with_name("site.alloc.json"), folder / "site.alloc.json")
    return plan_site(folder / "site.yaml").plan


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    machine = {
        "uuid": NEW_MACHINE,
        "name": "new-machine",
        "power_state": "Off",
        "nics": [{"mac": "02:00:00:00:00:a7", "ip": "10.200.0.12"}],
    }
    running = Emulator(tmp_path_factory.mktemp("bmc"), free_port()).start([machine])
    yield running
    running.stop()


def _reinstall(plan: SitePlan, emulator: Emulator) -> RedfishReinstall:
    reference = f"secret://lab/bmc/{HOST}"
    credentials = {HOST: BmcCredentials.parse(f"{USER}:{PASSWORD}", reference=reference)}
    return RedfishReinstall(plan, Loopback("http", url=emulator.endpoint), credentials)


def test_the_new_machine_is_recorded_and_booted_once_into_the_installer(
    plan: SitePlan, emulator: Emulator
) -> None:
    record = _reinstall(plan, emulator).reinstall(HOST)
    assert record == {"uuid": NEW_MACHINE, "serial": None, "boot": "Pxe once", "reset": "On"}
    system = live(emulator.endpoint, NEW_MACHINE)
    assert system["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    assert json.dumps(record).isascii()


def test_a_host_without_a_bmc_in_the_plan_is_refused(plan: SitePlan, emulator: Emulator) -> None:
    bare = next(h.name for h in plan.hosts if h.bmc is None)
    with pytest.raises(ProvisionError) as refused:
        _reinstall(plan, emulator).reinstall(bare)
    assert refused.value.code == "replace-no-bmc"
