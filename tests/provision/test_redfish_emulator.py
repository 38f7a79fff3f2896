"""The bare-metal host logic against a real Redfish service: the sushy-tools emulator on loopback.

Each emulator is started by the test itself (fake driver, basic auth from an htpasswd file). The
fake driver reports no model, serial, CPUs or GPUs; those checks run against recordings of real
systems in test_inventory_recordings.py.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from aifactory.errors import ExitCode, ProvisionError
from aifactory.provision.host import BareMetalHostLogic
from tests.provision.emulator import PASSWORD, USER, Emulator, free_port

SYSTEM_A = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
SYSTEM_B = "48295459-1111-4a4a-8e8e-000000000002"
POWER_TIMEOUT = 30.0  # the fake driver applies power changes after 1-11 s

pytestmark = pytest.mark.slow


def system(uid: str, power: str = "Off") -> dict[str, Any]:
    return {
        "uuid": uid,
        "name": f"node-{uid[:4]}",
        "power_state": power,
        "nics": [{"mac": "00:5c:52:31:3a:9c", "ip": "172.22.0.100"}],
    }


def props(endpoint: str, *, credential: str = f"{USER}:{PASSWORD}", boot: str = "pxe") -> dict[str, Any]:
    return {
        "host": "lab-cpu-001",
        "endpoint": endpoint,
        "system": None,
        "credentials": credential,
        "credentials_ref": "secret://lab/bmc/lab-cpu-001",
        "boot": {"source": boot, "image": None},
        "expect": {"cpus": 2, "memory_gib": 4},
        "tls": {"verify": True, "ca_bundle": None},
        "power_timeout": POWER_TIMEOUT,
    }


def live(endpoint: str, uid: str) -> dict[str, Any]:
    """What the emulator itself reports, read without the code under test."""
    request = urllib.request.Request(f"{endpoint}/redfish/v1/Systems/{uid}")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    running = Emulator(tmp_path_factory.mktemp("bmc"), free_port()).start([system(SYSTEM_A)])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def created(emulator: Emulator) -> tuple[str, dict[str, Any]]:
    return BareMetalHostLogic(poll_interval=0.5).create(props(emulator.endpoint))


def test_create_powers_on_and_sets_the_boot_source(emulator, created):
    host_id, outs = created
    assert host_id == SYSTEM_A
    assert outs["power_state"] == "On"
    assert outs["boot_reported"]["target"] == "Pxe"
    reported = live(emulator.endpoint, SYSTEM_A)
    assert reported["PowerState"] == "On"
    assert reported["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    # asked for Once; the emulator keeps overrides as Continuous: both count as set
    assert reported["Boot"]["BootSourceOverrideEnabled"] in ("Once", "Continuous")
    assert outs["identity"]["uuid"] == SYSTEM_A
    assert outs["identity"]["macs"] == ["00:5c:52:31:3a:9c"]
    # the fake driver reports no cores or memory: listed as unverified, never passed silently
    assert set(outs["inventory"]["unverified"]) == {"cpus", "memory_gib"}
    assert outs["inventory"]["mismatches"] == []


def test_diff_is_empty_when_nothing_changed(emulator, created):
    _, outs = created
    result = BareMetalHostLogic().diff(outs, props(emulator.endpoint))
    assert not result.changed, result.reasons


def test_diff_detects_a_boot_source_changed_at_the_bmc_and_update_restores_it(emulator, created):
    _, outs = created
    logic = BareMetalHostLogic(poll_interval=0.5)
    client = logic.client(outs)
    client.set_boot_override(client.find_system(), target="Hdd")  # someone changed it at the BMC
    result = logic.diff(outs, props(emulator.endpoint))
    assert result.changes == ("boot",) and result.replaces == ()
    assert any("Hdd" in reason for reason in result.reasons)
    updated = logic.update(outs, props(emulator.endpoint))
    assert updated["boot_reported"]["target"] == "Pxe"
    assert live(emulator.endpoint, SYSTEM_A)["Boot"]["BootSourceOverrideTarget"] == "Pxe"


def test_diff_reports_a_changed_boot_source_in_the_plan(emulator, created):
    _, outs = created
    wanted = props(emulator.endpoint, boot="virtual-media")
    result = BareMetalHostLogic().diff(outs, wanted)
    assert "boot" in result.changes and not result.replaces


def test_diff_replaces_a_swapped_system(tmp_path: Path):
    port = free_port()
    first = Emulator(tmp_path / "a", port).start([system(SYSTEM_A, power="On")])
    try:
        _, outs = BareMetalHostLogic(poll_interval=0.5).create(props(first.endpoint))
    finally:
        first.stop()
    # the same BMC address now answers for another motherboard
    second = Emulator(tmp_path / "b", port).start([system(SYSTEM_B, power="On")])
    try:
        result = BareMetalHostLogic().diff(outs, props(second.endpoint))
        assert "identity" in result.replaces
        assert any("swapped hardware" in r and SYSTEM_B in r for r in result.reasons)
        # a refresh says the recorded system is gone; a delete leaves the newcomer alone
        assert BareMetalHostLogic().read(outs)["bmc_state"] == "system-missing"
        BareMetalHostLogic().delete(outs)
        assert live(second.endpoint, SYSTEM_B)["PowerState"] == "On"
    finally:
        second.stop()


def test_delete_powers_off_and_clears_the_override(tmp_path: Path):
    emulator = Emulator(tmp_path, free_port()).start([system(SYSTEM_B, power="On")])
    try:
        logic = BareMetalHostLogic(poll_interval=0.5)
        _, outs = logic.create(props(emulator.endpoint))
        logic.delete(outs)
        reported = live(emulator.endpoint, SYSTEM_B)
        assert reported["PowerState"] == "Off"
        assert reported["Boot"]["BootSourceOverrideTarget"] == "None"
    finally:
        emulator.stop()


def test_wrong_credential_is_a_clear_error(emulator):
    with pytest.raises(ProvisionError) as caught:
        BareMetalHostLogic().create(props(emulator.endpoint, credential=f"{USER}:not-the-password"))
    error = caught.value
    assert error.code == "bmc-auth" and error.exit_code == ExitCode.CANNOT_EVALUATE
    assert "secret://lab/bmc/lab-cpu-001" in error.message and "lab-cpu-001" in error.message
    assert "not-the-password" not in error.render()
    assert "aifactory secret set" in (error.hint or "")


def test_unreachable_bmc_is_a_clear_error():
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ProvisionError) as caught:
        BareMetalHostLogic().create(props(closed))
    assert caught.value.code == "bmc-unreachable"
    assert closed in caught.value.message and "refused" in caught.value.message.lower()


def test_a_bmc_with_no_such_system_says_which_it_has(emulator):
    wanted = {**props(emulator.endpoint), "system": str(uuidlib.UUID(int=7))}
    with pytest.raises(ProvisionError) as caught:
        BareMetalHostLogic().create(wanted)
    assert caught.value.code == "bmc-system-not-found" and SYSTEM_A in caught.value.message


@pytest.fixture
def image_server(tmp_path: Path):
    """A loopback HTTP server with a small installer image (the bundle's ISO, in miniature)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "installer.iso").write_bytes(b"\0" * 4096)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/installer.iso"
    server.shutdown()
    server.server_close()


def test_virtual_media_boot_inserts_the_image_and_delete_ejects_it(tmp_path: Path, image_server: str):
    emulator = Emulator(tmp_path / "bmc", free_port()).start([system(SYSTEM_A, power="On")])
    try:
        logic = BareMetalHostLogic(poll_interval=0.5)
        wanted = props(emulator.endpoint, boot="virtual-media")
        wanted["boot"]["image"] = image_server
        _, outs = logic.create(wanted)
        assert outs["boot_reported"]["target"] == "Cd"
        slot = logic.client(outs).virtual_media_slot(live(emulator.endpoint, SYSTEM_A))
        assert slot is not None and slot["Inserted"] is True and slot["Image"] == image_server
        logic.delete(outs)
        slot = logic.client(outs).virtual_media_slot(live(emulator.endpoint, SYSTEM_A))
        assert slot is not None and not slot.get("Inserted")
    finally:
        emulator.stop()


def test_virtual_media_boot_without_an_image_is_refused_before_any_change(emulator):
    with pytest.raises(ProvisionError) as caught:
        BareMetalHostLogic().create(props(emulator.endpoint, boot="virtual-media"))
    assert caught.value.code == "provision-boot-source" and "image" in caught.value.message
