"""Inventory checks against RECORDINGS of real systems' Redfish responses (DMTF public-rackmount1
mockup, see recordings/README.md), served by a loopback HTTP server that records what was asked.

The recording server accepts any basic-auth credential (authentication is tested against the
sushy-tools emulator); it refuses every PATCH and POST, and the tests check none was sent when
the inventory does not match (nothing is changed on a wrong box).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aifactory.errors import ProvisionError
from aifactory.provision.host import BareMetalHostLogic
from aifactory.provision.identity import (
    Expectation,
    SystemIdentity,
    check_inventory,
    gpu_model_matches,
)

RECORDINGS = Path(__file__).parent / "recordings"


class RecordingServer:
    def __init__(self, recording: str) -> None:
        document = json.loads((RECORDINGS / recording).read_text())
        self.responses: dict[str, Any] = document["responses"]
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests.append((self.command, self.path))
                body = outer.responses.get(self.path.rstrip("/") or "/") or outer.responses.get(self.path)
                if self.command != "GET" or body is None:
                    self.send_response(405 if self.command != "GET" else 404)
                    self.end_headers()
                    return
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def changes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]


@pytest.fixture
def huawei() -> Iterator[RecordingServer]:
    yield from _serve("dmtf-rackmount1-huawei-2288hv5.json")


@pytest.fixture
def contoso() -> Iterator[RecordingServer]:
    yield from _serve("dmtf-rackmount1-contoso-3500.json")


def _serve(name: str) -> Iterator[RecordingServer]:
    server = RecordingServer(name)
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def props(endpoint: str, **expect: Any) -> dict[str, Any]:
    return {
        "host": "ng-gpu-001",
        "endpoint": endpoint,
        "system": None,
        "credentials": "admin:recorded",
        "credentials_ref": "secret://bmc/ng-gpu-001",
        "boot": {"source": "pxe", "image": None},
        "expect": expect,
        "tls": {"verify": True, "ca_bundle": None},
        "power_timeout": 5,
    }


def identity_of(server: RecordingServer) -> SystemIdentity:
    logic = BareMetalHostLogic()
    client = logic.client(props(server.endpoint))
    from aifactory.provision.identity import read_identity

    return read_identity(client, client.find_system())


def test_recorded_huawei_identity(huawei):
    identity = identity_of(huawei)
    assert (identity.manufacturer, identity.model, identity.serial) == (
        "Huawei",
        "FusionServer 2288H V5",
        "21023123ABCD",
    )
    assert identity.uuid == "e7f6a5b4-c3d2-4e1f-9a80-abcdef123456"
    # permanent MACs, not the overridden current one
    assert identity.macs == ("12:44:6a:3b:04:11", "12:44:6a:3b:88:90")
    # CPU2 is Absent and the FPGA is no CPU: 8 cores in 1 socket (the summary's 16 is not used)
    assert (identity.sockets, identity.cpus, identity.memory_gib) == (1, 8, 32)
    assert identity.gpu_count == 0 and identity.gpu_models == ()


def test_recorded_huawei_matches_its_asset_record(huawei):
    check = check_inventory(
        identity_of(huawei),
        Expectation(
            cpus=8, memory_gib=32, manufacturer="huawei", model="FusionServer 2288H V5", serial="21023123ABCD"
        ),
    )
    assert check.ok
    assert set(check.verified) == {"manufacturer", "model", "serial", "cpus", "memory_gib"}


def test_recorded_huawei_mismatches_stop_create_before_any_change(huawei):
    wanted = props(huawei.endpoint, cpus=16, memory_gib=64, serial="21023123XXXX")
    with pytest.raises(ProvisionError) as caught:
        BareMetalHostLogic().create(wanted)
    error = caught.value
    assert error.code == "provision-inventory-mismatch"
    rendered = error.render()
    assert "cpus: plan 16, BMC reports 8" in rendered
    assert "memory_gib: plan 64, BMC reports 32" in rendered
    assert "serial: plan '21023123XXXX', BMC reports '21023123ABCD'" in rendered
    assert huawei.changes() == []  # no PATCH, no POST: the wrong box was left alone


def test_recorded_gpus_not_reported_are_unverified_not_passed(huawei):
    check = check_inventory(identity_of(huawei), Expectation(gpu_count=8, gpu_model="H100-SXM5-80GB"))
    assert check.ok and set(check.unverified) == {"gpu_count", "gpu_model"}


def test_recorded_contoso_without_processor_details_uses_the_summary(contoso):
    identity = identity_of(contoso)
    assert (identity.manufacturer, identity.model, identity.serial) == ("Contoso", "3500", "437XR1138R2")
    assert (identity.sockets, identity.cpus, identity.memory_gib) == (2, 20, 64)
    assert identity.gpu_count is None  # no Processors collection: GPUs unknown, not zero
    check = check_inventory(identity, Expectation(cpus=20, memory_gib=64, model="3600"))
    assert [m.field for m in check.mismatches] == ["model"]


def test_gpu_model_and_memory_rules():
    """Plain values (not recordings): the comparison rules themselves."""
    assert gpu_model_matches("H100-SXM5-80GB", "NVIDIA H100 80GB HBM3")
    assert not gpu_model_matches("H200-SXM5-141GB", "NVIDIA H100 80GB HBM3")
    gpus = SystemIdentity("1", "u", gpu_count=8, gpu_models=("NVIDIA H100 80GB HBM3",), memory_gib=2015.6)
    assert check_inventory(gpus, Expectation(gpu_count=8, gpu_model="H100-SXM5-80GB", memory_gib=2048)).ok
    wrong = check_inventory(gpus, Expectation(gpu_count=4, gpu_model="H200-SXM5-141GB", memory_gib=4096))
    assert [m.field for m in wrong.mismatches] == ["memory_gib", "gpu_count", "gpu_model"]
