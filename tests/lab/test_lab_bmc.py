"""The lab's Redfish BMCs (sushy-tools emulators), reached from the control host as an admin would."""

from __future__ import annotations

import json

import pytest
from waiting import scaled

pytestmark = pytest.mark.lab

# Runs on the control host with the system Python; reads {url: [user, password]} on stdin.
REDFISH = r"""
import base64, json, sys, time, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor

def call(url, path, auth, body=None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body else None,
                                     method="POST" if body else "GET")
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, None

def probe(item):
    url, auth = item
    result = {"wrong_password": call(url, "/redfish/v1/Systems", [auth[0], auth[1] + "x"])[0]}
    status, systems = call(url, "/redfish/v1/Systems", auth)
    result["systems_status"] = status
    result["members"] = [m["@odata.id"] for m in systems["Members"]]
    system_path = result["members"][0]
    status, system = call(url, system_path, auth)
    result["name"], result["before"] = system["Name"], system["PowerState"]
    result["boot"] = system["Boot"].get("BootSourceOverrideTarget")
    reset = system["Actions"]["#ComputerSystem.Reset"]["target"]

    def power(kind, wanted):
        status = call(url, reset, auth, {"ResetType": kind})[0]
        deadline = time.monotonic() + POWER_WAIT  # the fake driver applies a change after 1-11 s
        while time.monotonic() < deadline:
            state = call(url, system_path, auth)[1]["PowerState"]
            if state == wanted:
                break
            time.sleep(0.5)
        return status, state

    if system["PowerState"] == "On":  # another test powered it on: off first, so power-on shows a change
        result["off"] = power("ForceOff", "Off")[1]
    result["reset_status"], result["after"] = power("On", "On")
    return url, result

items = json.load(sys.stdin)
with ThreadPoolExecutor(len(items)) as pool:
    print(json.dumps(dict(pool.map(probe, items.items()))))
"""


def test_control_host_drives_every_bmc_on_its_planned_address(lab):
    bmc_hosts = [h for h in lab.plan.hosts if h.bmc is not None]
    assert bmc_hosts, "the lab site has BMCs"
    urls = {}
    for host in bmc_hosts:
        credential = lab.bmc_credential(host.name)
        urls[f"http://{host.bmc.address}:8000"] = [credential.username, credential.password]
    program = REDFISH.replace(
        "POWER_WAIT", f"{scaled(20):.0f}"
    )  # runs on the control host: no imports of tests/
    result = lab.exec(["python3", "-c", program], input_text=json.dumps(urls), timeout=scaled(90))
    found = json.loads(result.stdout)
    for host in bmc_hosts:
        seen = found[f"http://{host.bmc.address}:8000"]
        assert seen["wrong_password"] == 401
        assert seen["systems_status"] == 200
        assert len(seen["members"]) == 1 and seen["name"] == host.name
        assert seen["boot"] is not None
        assert seen.get("off", "Off") == "Off"
        assert seen["reset_status"] in (200, 202, 204)
        assert seen["after"] == "On"


def test_bmcs_are_not_reachable_from_compute_hosts_without_the_bmc_fabric(lab):
    host = next(h for h in lab.plan.hosts if all(i.fabric != "bmc" for i in h.interfaces))
    target = next(h for h in lab.plan.hosts if h.bmc is not None).bmc.address
    probe = (
        "import socket\ns = socket.socket(); s.settimeout(2)\n"
        f"try:\n    s.connect(({target!r}, 8000)); print('connected')\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    assert lab.exec(["python3", "-c", probe], host=host.name).stdout.strip() != "connected"


def test_bmc_status_is_reported(lab):
    from aifactory.lab import lab_status

    status = lab_status(lab.site)
    for host in lab.plan.hosts:
        bmc = status.host(host.name).bmc
        if host.bmc is None:
            assert bmc is None
        else:
            expected = (host.bmc.address, "running", host.bmc.credentials)
            assert (bmc.address, bmc.state, bmc.credentials) == expected
