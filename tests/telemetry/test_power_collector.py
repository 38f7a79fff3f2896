"""The BMC power collector (aifactory.telemetry.power) against real Redfish services on loopback: the
lab's BMC emulator (sushy-tools with the emulated Power resource), plain sushy-tools (no Power), a
socket that never answers; the exporter over TLS with certificates from a real site CA.

What a user relies on: a reading carries where it came from (`source`), a BMC that refuses or does not
answer leaves no sample (and a counted failure), never a made-up figure, and the energy counter is
the trapezoid integral of the readings it had.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aifactory.errors import TelemetryError
from aifactory.lab.bmc_power import IDLE_WATTS
from aifactory.plan import plan_site
from aifactory.plan.model import Host
from aifactory.provision.redfish import BmcCredentials
from aifactory.telemetry.power import (
    BmcTarget,
    PowerCollector,
    PowerReading,
    read_targets,
    start_exporter,
)
from tests.provision.emulator import PASSWORD, USER, Emulator, free_port
from tests.telemetry.lab_bmc import CREDENTIAL, loopback_bmc, namespace_of, namespaced
from tests.telemetry.loopback_tls import loopback_tls

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unshare --net needs root")
HOST = "unit-cpu-001"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    from tests.conftest import copy_lab_spec

    plan = plan_site(copy_lab_spec(tmp_path_factory.mktemp("spec"), "unit")).plan
    return next(h for h in plan.hosts if h.bmc is not None)


@pytest.fixture
def idle_namespace() -> Iterator[str]:
    process = namespaced("import signal\nsignal.pause()\n")
    try:
        yield namespace_of(process)
    finally:
        process.kill()
        process.wait()


def collector(
    *targets: BmcTarget, clock: list[float] | None = None
) -> tuple[PowerCollector, CollectorRegistry]:
    registry = CollectorRegistry()
    times = clock if clock is not None else [0.0]
    return PowerCollector(targets, interval=15, registry=registry, clock=lambda: times[0]), registry


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def power_labels(host: str, source: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted({"host": host, "source": source, "method": "redfish-power", "interval": "15s"}.items())
    )


@needs_root
def test_a_lab_bmc_reading_is_exported_as_emulated(host, idle_namespace, tmp_path):
    with loopback_bmc(tmp_path, host, idle_namespace) as bmc:
        target = BmcTarget(HOST, bmc.endpoint, BmcCredentials(CREDENTIAL.username, CREDENTIAL.password))
        polling, registry = collector(target)
        polling.poll_once()
    power = samples(registry, "aifactory_host_power_watts")
    assert list(power) == [power_labels(HOST, "emulated")]
    assert IDLE_WATTS <= power[power_labels(HOST, "emulated")] < IDLE_WATTS + 10  # the namespace idles
    assert samples(registry, "aifactory_host_energy_joules_total") == {power_labels(HOST, "emulated"): 0.0}
    assert samples(registry, "aifactory_host_power_polls_failed_total") == {}


@needs_root
def test_wrong_credentials_leave_no_sample_and_count_a_failure(host, idle_namespace, tmp_path):
    with loopback_bmc(tmp_path, host, idle_namespace) as bmc:
        good = BmcTarget(HOST, bmc.endpoint, BmcCredentials(CREDENTIAL.username, CREDENTIAL.password))
        wrong = BmcTarget(HOST, bmc.endpoint, BmcCredentials(CREDENTIAL.username, "wrong-password-1"))
        polling, registry = collector(good)
        polling.poll_once()
        assert samples(registry, "aifactory_host_power_watts")  # it had a reading
        polling.targets = [wrong]
        polling.poll_once()
    assert samples(registry, "aifactory_host_power_watts") == {}  # and keeps no stale one
    failed = samples(registry, "aifactory_host_power_polls_failed_total")
    assert failed == {(("host", HOST), ("reason", "bmc-auth")): 1.0}


def test_an_unanswering_bmc_leaves_no_sample(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections and never answers
    try:
        port = silent.getsockname()[1]
        target = BmcTarget(HOST, f"http://127.0.0.1:{port}", BmcCredentials("admin", "x-password-1"))
        polling, registry = collector(target)
        polling.interval = 2  # a 1 s timeout
        polling.poll_once()
    finally:
        silent.close()
    assert samples(registry, "aifactory_host_power_watts") == {}
    assert samples(registry, "aifactory_host_power_polls_failed_total") == {
        (("host", HOST), ("reason", "bmc-unreachable")): 1.0
    }


def test_a_bmc_without_a_power_resource_leaves_no_sample(tmp_path):
    # plain sushy-tools, as a BMC whose Redfish service has no Power under its chassis
    emulator = Emulator(tmp_path, free_port()).start(
        [{"uuid": "2b4e8b9c-0000-4000-8000-000000000001", "name": HOST}]
    )
    try:
        polling, registry = collector(BmcTarget(HOST, emulator.endpoint, BmcCredentials(USER, PASSWORD)))
        polling.poll_once()
    finally:
        emulator.stop()
    assert samples(registry, "aifactory_host_power_watts") == {}
    assert samples(registry, "aifactory_host_power_polls_failed_total") == {
        (("host", HOST), ("reason", "power-no-resource")): 1.0
    }


def test_energy_is_the_trapezoid_of_known_readings_and_a_failure_breaks_it():
    clock = [0.0]
    polling, registry = collector(clock=clock)
    measured = power_labels(HOST, "measured")
    for at, watts in ((0.0, 100.0), (10.0, 200.0), (20.0, 200.0)):
        clock[0] = at
        polling.record(PowerReading(HOST, watts, "measured"), at)
    # (100+200)/2*10 + (200+200)/2*10
    assert samples(registry, "aifactory_host_energy_joules_total")[measured] == 3500.0
    polling.fail(HOST, "bmc-unreachable")  # 20..40 s not integrated: nothing is known of it
    for at, watts in ((40.0, 300.0), (50.0, 100.0)):
        polling.record(PowerReading(HOST, watts, "measured"), at)
    assert samples(registry, "aifactory_host_energy_joules_total")[measured] == 3500.0 + 2000.0
    assert samples(registry, "aifactory_host_power_watts") == {measured: 100.0}


def _write(path: Path, data: object, mode: int) -> Path:
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return path


def test_targets_need_private_credentials_for_every_bmc(tmp_path):
    targets = _write(
        tmp_path / "bmcs.json",
        {
            "interval_seconds": 15,
            "bmcs": [{"host": HOST, "endpoint": "https://10.9.0.3", "verify_tls": True}],
        },
        0o644,
    )
    readable = _write(tmp_path / "open.json", {HOST: "admin:secret-pw-1"}, 0o644)
    with pytest.raises(TelemetryError) as exposed:
        read_targets(targets, readable)
    assert exposed.value.code == "power-credentials-exposed" and "secret-pw-1" not in exposed.value.render()
    other = _write(tmp_path / "other.json", {"unit-cpu-002": "admin:secret-pw-1"}, 0o600)
    with pytest.raises(TelemetryError) as missing:
        read_targets(targets, other)
    assert missing.value.location.path == "bmcs[0].host" and missing.value.location.file == str(targets)
    good = _write(tmp_path / "good.json", {HOST: "admin:secret-pw-1"}, 0o600)
    interval, (target,) = read_targets(targets, good)
    assert (interval, target.host, target.endpoint, target.credentials.username) == (
        15,
        HOST,
        "https://10.9.0.3",
        "admin",
    )
    assert "secret-pw-1" not in repr(target)
    bad = _write(tmp_path / "bad.json", {"interval_seconds": 0, "bmcs": []}, 0o644)
    with pytest.raises(TelemetryError) as invalid:
        read_targets(bad, good)
    assert invalid.value.location.path == "interval_seconds"


def test_the_exporter_serves_over_tls_to_site_ca_clients_only(tmp_path):
    site, expires = "pwr", datetime.now(UTC) + timedelta(days=1)
    tls = loopback_tls(tmp_path, site=site, expires=expires)
    ca, server, scraper = tls.ca, tls.server, tls.prometheus
    polling, registry = collector()
    polling.record(PowerReading(HOST, 123.5, "measured"), 0.0)
    port = free_port()
    stop = start_exporter(
        registry, address="127.0.0.1", port=port, certificate=server.certificate, key=server.key, client_ca=ca
    )
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(scraper.certificate), str(scraper.key))
        url = f"https://localhost:{port}/metrics"
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            text = answer.read().decode()
        anonymous = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            urllib.request.urlopen(url, context=anonymous, timeout=10).read()
    finally:
        stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["aifactory_host_power_watts"].samples
    assert (sample.labels["source"], sample.value) == ("measured", 123.5)


def test_the_deploy_writes_every_planned_bmc_credential_privately(tmp_path, monkeypatch):
    from aifactory.errors import SecretError
    from aifactory.secrets import SecretResolver, env_name, expand
    from aifactory.telemetry.power import read_credentials, write_credentials
    from tests.conftest import copy_lab_spec

    plan = plan_site(copy_lab_spec(tmp_path / "spec", "unit")).plan
    bmc_hosts = [h for h in plan.hosts if h.bmc is not None]
    assert bmc_hosts, "the lab spec plans BMCs"
    target = tmp_path / "monitoring" / "bmc-credentials.json"
    with pytest.raises(SecretError) as missing:
        write_credentials(plan, SecretResolver(None), target)
    assert {p.location.path for p in missing.value.problems} == {f"hosts.{h.name}.bmc" for h in bmc_hosts}
    assert not target.exists()
    for index, host in enumerate(bmc_hosts):
        assert host.bmc is not None
        monkeypatch.setenv(env_name(expand(host.bmc.credentials, host=host.name)), f"admin:pw-{index}-secret")
    assert write_credentials(plan, SecretResolver(None), target)
    assert target.stat().st_mode & 0o777 == 0o600
    read = read_credentials(target)
    assert {h: c.password for h, c in read.items()} == {
        h.name: f"pw-{i}-secret" for i, h in enumerate(bmc_hosts)
    }
