"""Host power from Redfish's newer power model (aifactory.telemetry.power.read_power): a chassis'
EnvironmentMetrics (`PowerWatts.Reading`) and its PowerSubsystem's supplies (the sum of their
`Metrics` `InputPowerWatts.Reading`), after the deprecated `Power` resource.

A stand-in BMC: no emulator on this machine implements PowerSubsystem or EnvironmentMetrics
(sushy-tools has no power resource at all; the lab's BMCs add only the deprecated Power), so each test
serves the Redfish documents it needs from a small HTTP server on loopback, with basic auth checked as
a BMC does. The client is the project's real RedfishClient, over real sockets; the documents follow
the DMTF schemas (Chassis.v1_22, EnvironmentMetrics.v1_3, PowerSubsystem.v1_1, PowerSupply.v1_5,
PowerSupplyMetrics.v1_0).
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aifactory.errors import ProvisionError, TelemetryError
from aifactory.provision.redfish import BmcCredentials, RedfishClient
from aifactory.telemetry.power import BmcTarget, PowerCollector, read_power

HOST = "unit-cpu-001"
USER, PASSWORD = "admin", "stand-in-pass-1"  # a credential for a loopback stand-in, made for this test
CHASSIS = "/redfish/v1/Chassis"
EMULATED_OEM = {"Aifactory": {"Emulated": True}}


@dataclass
class StandInBmc:
    """Redfish documents by path, served on loopback; every request's path is kept."""

    documents: dict[str, Any]
    requested: list[str] = field(default_factory=list)
    endpoint: str = ""


@contextmanager
def serving(documents: dict[str, Any]) -> Iterator[StandInBmc]:
    bmc = StandInBmc(documents)
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            bmc.requested.append(self.path)
            if self.headers.get("Authorization") != expected:
                self._answer(401, {"error": "unauthorised"})
            elif self.path in bmc.documents:
                self._answer(200, bmc.documents[self.path])
            else:
                self._answer(404, {"error": {"message": f"no {self.path}"}})

        def _answer(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()  # NaN stays NaN: json writes it as a bare token
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    bmc.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield bmc
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def client(bmc: StandInBmc) -> RedfishClient:
    return RedfishClient(bmc.endpoint, BmcCredentials(USER, PASSWORD), host=HOST, timeout=5)


def link(path: str) -> dict[str, str]:
    return {"@odata.id": path}


def chassis(name: str, *, power: bool = False, environment: bool = False, subsystem: bool = False) -> dict:
    path = f"{CHASSIS}/{name}"
    document: dict[str, Any] = {"@odata.id": path, "Id": name, "ChassisType": "RackMount"}
    if power:
        document["Power"] = link(f"{path}/Power")
    if environment:
        document["EnvironmentMetrics"] = link(f"{path}/EnvironmentMetrics")
    if subsystem:
        document["PowerSubsystem"] = link(f"{path}/PowerSubsystem")
    return document


def power_resource(name: str, watts: Any) -> dict[str, Any]:
    return {f"{CHASSIS}/{name}/Power": {"PowerControl": [{"MemberId": "0", "PowerConsumedWatts": watts}]}}


def environment_metrics(name: str, watts: Any, **extra: Any) -> dict[str, Any]:
    document = {
        "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
        "PowerWatts": {"Reading": watts},
    }
    return {f"{CHASSIS}/{name}/EnvironmentMetrics": document | extra}


def power_supplies(name: str, *supplies: Any, oem: dict[str, Any] | None = None) -> dict[str, Any]:
    """A PowerSubsystem with one supply per entry: a number is its input watts, None an empty bay,
    "no-metrics" a present supply that links no Metrics, anything else a bad Reading as given."""
    subsystem = f"{CHASSIS}/{name}/PowerSubsystem"
    collection = f"{subsystem}/PowerSupplies"
    documents: dict[str, Any] = {
        subsystem: {"PowerSupplies": link(collection)},
        collection: {"Members": [link(f"{collection}/{i}") for i in range(len(supplies))]},
    }
    for index, watts in enumerate(supplies):
        supply: dict[str, Any] = {"Id": str(index), "Status": {"State": "Enabled", "Health": "OK"}}
        if watts is None:
            supply["Status"] = {"State": "Absent"}
        elif watts != "no-metrics":
            supply["Metrics"] = link(f"{collection}/{index}/Metrics")
            metrics: dict[str, Any] = {"InputPowerWatts": {"Reading": watts}}
            if oem is not None:
                metrics["Oem"] = oem
            documents[f"{collection}/{index}/Metrics"] = metrics
        documents[f"{collection}/{index}"] = supply
    return documents


def bmc_documents(*chassis_documents: dict[str, Any], **resources: Any) -> dict[str, Any]:
    documents: dict[str, Any] = {
        CHASSIS: {"Members": [link(c["@odata.id"]) for c in chassis_documents]},
    }
    for document in chassis_documents:
        documents[document["@odata.id"]] = document
    for extra in resources.values():
        documents |= extra
    return documents


def test_environment_metrics_give_the_chassis_power():
    documents = bmc_documents(chassis("1", environment=True), environment=environment_metrics("1", 412.5))
    with serving(documents) as bmc:
        reading = read_power(client(bmc))
    assert (reading.host, reading.watts, reading.source, reading.method) == (
        HOST,
        412.5,
        "measured",
        "redfish-environmentmetrics",
    )


def test_the_power_supplies_input_is_summed_and_an_empty_bay_adds_nothing():
    documents = bmc_documents(chassis("1", subsystem=True), supplies=power_supplies("1", 180, None, 195.5))
    with serving(documents) as bmc:
        reading = read_power(client(bmc))
    assert (reading.watts, reading.source, reading.method) == (375.5, "measured", "redfish-powersupplies")
    assert f"{CHASSIS}/1/PowerSubsystem/PowerSupplies/1/Metrics" not in bmc.requested  # the empty bay


@pytest.mark.parametrize(
    ("offered", "method", "watts"),
    [
        ({"power", "environment", "subsystem"}, "redfish-power", 300.0),
        ({"environment", "subsystem"}, "redfish-environmentmetrics", 310.0),
        ({"subsystem"}, "redfish-powersupplies", 320.0),
    ],
    ids=["power-first", "then-environment-metrics", "then-power-supplies"],
)
def test_the_methods_are_preferred_in_order(offered, method, watts):
    documents = bmc_documents(
        chassis(
            "1",
            power="power" in offered,
            environment="environment" in offered,
            subsystem="subsystem" in offered,
        ),
        power=power_resource("1", 300),
        environment=environment_metrics("1", 310),
        supplies=power_supplies("1", 160, 160),
    )
    with serving(documents) as bmc:
        reading = read_power(client(bmc))
    assert (reading.method, reading.watts) == (method, watts)


def test_a_later_chassis_power_resource_wins_over_an_earlier_chassis_newer_model():
    """The order is by method first, as before the newer model: a BMC that links Power on any chassis
    keeps the reading and the `method` it always had."""
    documents = bmc_documents(
        chassis("Baseboard", environment=True, subsystem=True),
        chassis("1", power=True),
        environment=environment_metrics("Baseboard", 900),
        supplies=power_supplies("Baseboard", 100),
        power=power_resource("1", 250),
    )
    with serving(documents) as bmc:
        reading = read_power(client(bmc))
    assert (reading.method, reading.watts) == ("redfish-power", 250.0)


def test_environment_metrics_without_a_power_sensor_fall_through_to_the_supplies():
    documents = bmc_documents(
        chassis("1", environment=True, subsystem=True),
        environment={f"{CHASSIS}/1/EnvironmentMetrics": {"TemperatureCelsius": {"Reading": 31}}},
        supplies=power_supplies("1", 210),
    )
    with serving(documents) as bmc:
        reading = read_power(client(bmc))
    assert (reading.method, reading.watts) == ("redfish-powersupplies", 210.0)


@pytest.mark.parametrize(
    "bad", [None, -1, math.nan, math.inf, "400", True], ids=["null", "negative", "nan", "inf", "text", "bool"]
)
def test_a_bad_environment_reading_is_a_failed_poll_not_a_figure(bad):
    documents = bmc_documents(
        chassis("1", environment=True, subsystem=True),
        environment=environment_metrics("1", bad),
        supplies=power_supplies("1", 200),  # present, but a broken sensor is not papered over
    )
    with serving(documents) as bmc, pytest.raises(TelemetryError) as failed:
        read_power(client(bmc))
    assert failed.value.code == "power-no-reading"
    assert f"{CHASSIS}/1/EnvironmentMetrics" in failed.value.message
    assert "PowerWatts.Reading" in failed.value.message


@pytest.mark.parametrize(
    ("supplies", "named"),
    [
        ((200, -5), "PowerSupplies/1/Metrics"),
        ((200, math.nan), "PowerSupplies/1/Metrics"),
        ((200, "no-metrics"), "power supply /redfish/v1/Chassis/1/PowerSubsystem/PowerSupplies/1"),
        ((None, None), "no present power supply"),
    ],
    ids=["negative", "nan", "no-metrics", "every-bay-empty"],
)
def test_a_supply_without_a_good_reading_fails_the_poll(supplies, named):
    documents = bmc_documents(chassis("1", subsystem=True), supplies=power_supplies("1", *supplies))
    with serving(documents) as bmc, pytest.raises(TelemetryError) as failed:
        read_power(client(bmc))
    assert failed.value.code == "power-no-reading"
    assert named in failed.value.message


def test_a_chassis_with_no_power_resource_of_either_model_has_no_reading():
    documents = bmc_documents(
        chassis("1", environment=True),
        environment={f"{CHASSIS}/1/EnvironmentMetrics": {"TemperatureCelsius": {"Reading": 31}}},
    )
    documents[f"{CHASSIS}/1"]["Thermal"] = link(f"{CHASSIS}/1/Thermal")
    with serving(documents) as bmc, pytest.raises(TelemetryError) as failed:
        read_power(client(bmc))
    assert failed.value.code == "power-no-resource"
    assert HOST in failed.value.message and "PowerSubsystem" in failed.value.message


def test_a_link_to_another_host_is_not_followed_with_the_bmc_credentials():
    with serving({}) as elsewhere:
        documents = bmc_documents(chassis("1"))
        documents[f"{CHASSIS}/1"]["EnvironmentMetrics"] = link(f"{elsewhere.endpoint}/redfish/v1/steal")
        documents[CHASSIS]["Members"].append(link(f"{elsewhere.endpoint}/redfish/v1/Chassis/2"))
        with serving(documents) as bmc, pytest.raises(TelemetryError) as failed:
            read_power(client(bmc))
    assert failed.value.code == "power-no-resource"
    assert elsewhere.requested == []


def test_emulated_is_kept_when_any_part_of_the_reading_says_so():
    environment = bmc_documents(
        chassis("1", environment=True), environment=environment_metrics("1", 150, Oem=EMULATED_OEM)
    )
    supplies = bmc_documents(
        chassis("1", subsystem=True), supplies=power_supplies("1", 100, 50, oem=EMULATED_OEM)
    )
    for documents, method in (
        (environment, "redfish-environmentmetrics"),
        (supplies, "redfish-powersupplies"),
    ):
        with serving(documents) as bmc:
            reading = read_power(client(bmc))
        assert (reading.source, reading.method) == ("emulated", method)


def test_the_collector_exports_the_method_the_reading_came_from():
    documents = bmc_documents(chassis("1", subsystem=True), supplies=power_supplies("1", 120, 130))
    with serving(documents) as bmc:
        registry = CollectorRegistry()
        target = BmcTarget(HOST, bmc.endpoint, BmcCredentials(USER, PASSWORD))
        PowerCollector([target], interval=15, registry=registry, clock=lambda: 0.0).poll_once()
    labels = {"host": HOST, "source": "measured", "method": "redfish-powersupplies", "interval": "15s"}
    assert registry.get_sample_value("aifactory_host_power_watts", labels) == 250.0


def test_wrong_credentials_are_refused_by_name_and_never_shown():
    documents = bmc_documents(chassis("1", environment=True), environment=environment_metrics("1", 100))
    wrong = BmcCredentials(USER, "wrong-pass-1")
    with serving(documents) as bmc, pytest.raises(ProvisionError) as refused:
        read_power(RedfishClient(bmc.endpoint, wrong, host=HOST, timeout=5))
    assert refused.value.code == "bmc-auth"
    assert "wrong-pass-1" not in refused.value.render()
