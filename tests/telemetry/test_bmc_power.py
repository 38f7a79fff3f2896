"""The lab BMC's emulated power reading (aifactory.lab.bmc_power), on a real sushy-tools emulator
started as the lab starts it, on loopback: it follows the CPU load of the host's namespace, says it is
emulated, and sits behind the BMC's basic auth like every other Redfish resource."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from aifactory.lab.bmc_power import PowerModel
from aifactory.plan import plan_site
from aifactory.plan.model import Host
from tests.telemetry.lab_bmc import CREDENTIAL, LoopbackBmc, loopback_bmc, namespace_of, namespaced

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unshare --net needs root")

# Idle until SIGUSR1, then a busy loop: one process whose load the test switches.
IDLE_THEN_BUSY = (
    "import signal\nsignal.signal(signal.SIGUSR1, lambda *_: None)\nsignal.pause()\nwhile True: pass\n"
)
MODEL = PowerModel(idle_watts=80.0, busy_watts=480.0)  # not the defaults: the config carries them


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    from tests.conftest import copy_lab_spec

    plan = plan_site(copy_lab_spec(tmp_path_factory.mktemp("spec"), "unit")).plan
    return next(h for h in plan.hosts if h.bmc is not None)


@pytest.fixture
def worker() -> Iterator[Any]:
    process = namespaced(IDLE_THEN_BUSY)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def get(bmc: LoopbackBmc, path: str, *, password: str = CREDENTIAL.password) -> dict[str, Any]:
    request = urllib.request.Request(bmc.endpoint + path)
    token = base64.b64encode(f"{CREDENTIAL.username}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        body: dict[str, Any] = json.loads(answer.read())
    return body


def reading(bmc: LoopbackBmc, chassis: str) -> tuple[float, dict[str, Any]]:
    power = get(bmc, chassis + "/Power")
    return float(power["PowerControl"][0]["PowerConsumedWatts"]), power


def test_power_follows_the_host_cpu_load_and_says_it_is_emulated(host, worker, tmp_path):
    with loopback_bmc(tmp_path, host, namespace_of(worker), power=MODEL) as bmc:
        chassis = get(bmc, "/redfish/v1/Chassis")["Members"][0]["@odata.id"]
        assert get(bmc, chassis)["Power"] == {"@odata.id": chassis + "/Power"}  # linked as on real BMCs
        reading(bmc, chassis)  # the first reading starts the window
        time.sleep(1.0)
        idle, power = reading(bmc, chassis)
        worker.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        busy, _ = reading(bmc, chassis)
    assert power["Oem"]["Aifactory"]["Emulated"] is True
    assert "Emulated" in power["Description"] and "Emulated" in power["PowerControl"][0]["Name"]
    span = MODEL.busy_watts - MODEL.idle_watts
    assert MODEL.idle_watts <= idle < MODEL.idle_watts + 0.1 * span  # a paused process: about idle
    # one busy process on a machine of N CPUs: 1/N of the span (less when the machine is loaded)
    cpus = os.cpu_count() or 1
    assert MODEL.idle_watts + 0.3 * span / cpus < busy <= MODEL.idle_watts + span / cpus + 0.05 * span


def test_power_needs_the_bmc_credentials(host, worker, tmp_path):
    with loopback_bmc(tmp_path, host, namespace_of(worker)) as bmc:
        chassis = get(bmc, "/redfish/v1/Chassis")["Members"][0]["@odata.id"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(bmc, chassis + "/Power", password="not-the-password")
        assert refused.value.code == 401
        watts, _ = reading(bmc, chassis)
    assert watts == PowerModel().idle_watts  # the lab's defaults; and the worker never ran
