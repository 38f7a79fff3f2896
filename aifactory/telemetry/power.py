"""Host power from each BMC over Redfish, exported for Prometheus (docs/telemetry.md, "Host power").

Runs on the control host (it holds the BMC credentials and reaches the BMC fabric) as the monitoring
role's service `aifactory-power-collector`: `aifactory monitoring power SITE --targets F
--credentials F ...`. Every `interval` seconds it reads each planned host's BMC through the project's
Redfish client (aifactory.provision.redfish, sushy underneath, the one provisioning uses: basic auth,
TLS checked against the site CA, the password never in an error or a log line; one attempt per
poll): the service root's Chassis and, in order of preference (`read_power`), the first chassis
that links the deprecated `Power` resource (its `PowerControl[0].PowerConsumedWatts`, method
`redfish-power`), else the first whose `EnvironmentMetrics` has a `PowerWatts` sensor (its
`Reading`, `redfish-environmentmetrics`), else the first whose `PowerSubsystem` lists power supplies
(the sum of their `Metrics`' `InputPowerWatts.Reading`, `redfish-powersupplies`). It exports:

    aifactory_host_power_watts{host, source, method, interval}          gauge: the last reading
    aifactory_host_energy_joules_total{host, source, method, interval}  counter: energy between readings
    aifactory_host_power_polls_failed_total{host, reason}               counter: polls with no reading

`source` is `emulated` when the BMC says so (`Oem.Aifactory.Emulated: true` on a resource the
reading is made of: the lab's BMCs, aifactory.lab.bmc_power), else `measured`; `method` names the
resource the reading came from, as above; `interval` the polling interval (`15s`). Energy is the
trapezoid rule between two consecutive readings of the same host: (W1 + W2) / 2 x (t2 - t1). A poll
that fails leaves no reading: the gauge's sample is removed (never a stale or made-up figure), the
failure counted by its reason, and the energy chain broken: the time until the next reading is not
integrated, so the counter undercounts over an outage, and says so through the failures counter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from aifactory.errors import AifactoryError, Location, Problem, SecretError, TelemetryError
from aifactory.plan.model import SitePlan
from aifactory.provision.redfish import BmcCredentials, RedfishClient, TlsSettings
from aifactory.secrets import SecretResolver

log = logging.getLogger(__name__)

# How the reading was obtained (the `method` label): Redfish's deprecated Power resource, or the newer
# model (Redfish 2020.4 on): the chassis' EnvironmentMetrics, or the sum of its power supplies.
METHOD = "redfish-power"
METHOD_ENVIRONMENT = "redfish-environmentmetrics"
METHOD_SUPPLIES = "redfish-powersupplies"
EMULATED, MEASURED = "emulated", "measured"
DEFAULT_INTERVAL = 15
LABELS = ("host", "source", "method", "interval")


@dataclass(frozen=True)
class BmcTarget:
    """One planned host's BMC: its Redfish endpoint and how to check its TLS certificate."""

    host: str
    endpoint: str
    credentials: BmcCredentials
    tls: TlsSettings = field(default_factory=TlsSettings)

    def client(self, timeout: float) -> RedfishClient:
        # One attempt: a poll that gets no reading is counted as failed and the next comes an interval
        # later, while retries would stretch one poll past the interval.
        return RedfishClient(
            self.endpoint, self.credentials, host=self.host, tls=self.tls, timeout=timeout, attempts=1
        )


@dataclass(frozen=True)
class PowerReading:
    host: str
    watts: float
    source: str
    method: str = METHOD


# -- configuration --------------------------------------------------------------------------------


def _unreadable(path: Path, exc: OSError) -> TelemetryError:
    return TelemetryError(f"cannot read {path}: {exc.strerror}", location=Location(file=str(path)))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TelemetryError(
            f"cannot read {path}: {exc.strerror}", location=Location(file=str(path))
        ) from None
    except ValueError as exc:
        raise TelemetryError(f"{path} is not JSON: {exc}", location=Location(file=str(path))) from None


def _field(value: Any, kind: type, *, where: Path, path: str) -> Any:
    if not isinstance(value, kind) or (kind is str and not value):
        raise TelemetryError(
            f"expected a {'non-empty string' if kind is str else kind.__name__}",
            code="power-config-invalid",
            location=Location(file=str(where), path=path),
        )
    return value


def read_credentials(path: Path) -> dict[str, BmcCredentials]:
    """The BMC credentials file the monitoring deploy writes: {host: "USER:PASSWORD"}, mode 0600.
    A file others may read is refused (fail closed), as is one that is not the root's own kind."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise TelemetryError(
            f"cannot read {path}: {exc.strerror}", location=Location(file=str(path))
        ) from None
    if stat.S_IMODE(mode) & 0o077:
        raise TelemetryError(
            f"{path} holds BMC passwords and others may read it (mode {stat.S_IMODE(mode):04o})",
            code="power-credentials-exposed",
            location=Location(file=str(path)),
            hint="chmod 600 it (the monitoring deploy writes it so)",
        )
    data = _field(_read_json(path), dict, where=path, path="(top)")
    return {
        str(host): BmcCredentials.parse(
            _field(value, str, where=path, path=str(host)), reference=f"{path}:{host}"
        )
        for host, value in sorted(data.items())
    }


def read_targets(targets_file: Path, credentials_file: Path) -> tuple[int, list[BmcTarget]]:
    """The polling interval and every BMC to poll, from the targets file the monitoring role renders:
    {"interval_seconds": 15, "bmcs": [{"host", "endpoint", "verify_tls", "ca_bundle"}]}."""
    data = _field(_read_json(targets_file), dict, where=targets_file, path="(top)")
    interval = data.get("interval_seconds", DEFAULT_INTERVAL)
    if not isinstance(interval, int) or isinstance(interval, bool) or not 1 <= interval <= 3600:
        raise TelemetryError(
            "expected whole seconds from 1 to 3600",
            code="power-config-invalid",
            location=Location(file=str(targets_file), path="interval_seconds"),
        )
    credentials = read_credentials(credentials_file)
    targets = []
    for index, entry in enumerate(_field(data.get("bmcs"), list, where=targets_file, path="bmcs")):
        where = f"bmcs[{index}]"
        _field(entry, dict, where=targets_file, path=where)
        host = _field(entry.get("host"), str, where=targets_file, path=f"{where}.host")
        endpoint = _field(entry.get("endpoint"), str, where=targets_file, path=f"{where}.endpoint")
        if host not in credentials:
            raise TelemetryError(
                f"no credential for {host} in {credentials_file}",
                code="power-credentials-missing",
                location=Location(file=str(targets_file), path=f"{where}.host"),
                hint="run the monitoring deploy again (it writes every planned BMC's credential)",
            )
        ca_bundle = entry.get("ca_bundle")
        tls = TlsSettings(bool(entry.get("verify_tls", True)), str(ca_bundle) if ca_bundle else None)
        targets.append(BmcTarget(host, endpoint, credentials[host], tls))
    return interval, targets


# -- reading one BMC ------------------------------------------------------------------------------


def _odata_id(resource: dict[str, Any], key: str) -> str | None:
    """A link's path on the same BMC; anything else (another host's URL) is not followed, since the
    client would send the BMC's credentials with it."""
    link = resource.get(key)
    value = link.get("@odata.id") if isinstance(link, dict) else None
    return value if isinstance(value, str) and value.startswith("/redfish/") else None


def _members(client: RedfishClient, collection: str) -> list[str]:
    """The member paths of a Redfish collection, in the collection's order (same-BMC links only)."""
    members = client.get(collection).get("Members")
    found = (_odata_id({"link": m}, "link") for m in members) if isinstance(members, list) else ()
    return [member for member in found if member is not None]


def is_emulated(resource: dict[str, Any]) -> bool:
    """Whether a Redfish resource says its reading is emulated (`Oem.Aifactory.Emulated: true`, the
    lab's BMCs, aifactory.lab.bmc_power); any resource a reading is made of may say so."""
    oem = resource.get("Oem")
    vendor = oem.get("Aifactory") if isinstance(oem, dict) else None
    return isinstance(vendor, dict) and vendor.get("Emulated") is True


def _is_watts(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


def _sensor_reading(excerpt: Any) -> Any:
    """A Redfish sensor excerpt's `Reading` (EnvironmentMetrics.PowerWatts, PowerSupplyMetrics'
    InputPowerWatts); None when the excerpt is not an object."""
    return excerpt.get("Reading") if isinstance(excerpt, dict) else None


def _checked_watts(client: RedfishClient, watts: Any, *, where: str, what: str) -> float:
    """Finite, non-negative watts, else `power-no-reading` naming the resource and the property (a BMC
    that links a power resource but gives no usable figure is a failed poll, never a zero)."""
    if not _is_watts(watts):
        raise TelemetryError(f"the BMC of {client.host} gives no {what} in {where}", code="power-no-reading")
    return float(watts)


def _reading(
    client: RedfishClient, watts: float, *, method: str, made_of: Sequence[dict[str, Any]]
) -> PowerReading:
    """Emulated when any resource the reading is made of says so."""
    emulated = any(is_emulated(resource) for resource in made_of)
    return PowerReading(client.host, watts, EMULATED if emulated else MEASURED, method)


def _from_power(client: RedfishClient, chassis: dict[str, Any]) -> PowerReading | None:
    """The deprecated Power resource (Power.v1): PowerControl[0].PowerConsumedWatts."""
    power_id = _odata_id(chassis, "Power")
    if power_id is None:
        return None
    power = client.get(power_id)
    controls = power.get("PowerControl")
    control = controls[0] if isinstance(controls, list) and controls else None
    watts = control.get("PowerConsumedWatts") if isinstance(control, dict) else None
    checked = _checked_watts(client, watts, where=power_id, what="PowerConsumedWatts")
    return _reading(client, checked, method=METHOD, made_of=[power])


def _from_environment_metrics(client: RedfishClient, chassis: dict[str, Any]) -> PowerReading | None:
    """The newer model's whole-chassis figure: EnvironmentMetrics.PowerWatts.Reading. Environment
    metrics without a PowerWatts sensor (temperatures only) give no reading here: the supplies may."""
    metrics_id = _odata_id(chassis, "EnvironmentMetrics")
    if metrics_id is None:
        return None
    metrics = client.get(metrics_id)
    if "PowerWatts" not in metrics:
        return None
    watts = _checked_watts(
        client, _sensor_reading(metrics["PowerWatts"]), where=metrics_id, what="PowerWatts.Reading"
    )
    return _reading(client, watts, method=METHOD_ENVIRONMENT, made_of=[metrics])


def _from_power_supplies(client: RedfishClient, chassis: dict[str, Any]) -> PowerReading | None:
    """The newer model's supplies: the sum of every present supply's Metrics.InputPowerWatts.Reading
    (input power: what the host draws from the feed, the supplies' losses included, as the Power
    resource's PowerConsumedWatts). An empty bay (Status.State `Absent`) adds nothing; a present
    supply without a reading fails the poll (a sum without it would undercount, silently)."""
    subsystem_id = _odata_id(chassis, "PowerSubsystem")
    subsystem = client.get(subsystem_id) if subsystem_id else {}
    supplies_id = _odata_id(subsystem, "PowerSupplies")
    if supplies_id is None:
        return None
    total, made_of = 0.0, [subsystem]  # made_of: the subsystem and every present supply's metrics
    for supply_id in _members(client, supplies_id):
        supply = client.get(supply_id)
        status = supply.get("Status")
        if isinstance(status, dict) and status.get("State") == "Absent":
            continue
        metrics_id = _odata_id(supply, "Metrics")
        if metrics_id is None:
            raise TelemetryError(
                f"the BMC of {client.host} gives no Metrics for the power supply {supply_id}",
                code="power-no-reading",
            )
        metrics = client.get(metrics_id)
        watts = _sensor_reading(metrics.get("InputPowerWatts"))
        total += _checked_watts(client, watts, where=metrics_id, what="InputPowerWatts.Reading")
        made_of.append(metrics)
    if made_of == [subsystem]:
        raise TelemetryError(
            f"the BMC of {client.host} lists no present power supply in {supplies_id}",
            code="power-no-reading",
        )
    return _reading(client, total, method=METHOD_SUPPLIES, made_of=made_of)


# In order of preference. Power first, as before the newer model existed: a BMC that links it keeps
# the figure (and the `method`) it always had. Then the chassis' own EnvironmentMetrics (one figure
# for the whole chassis), then the sum of its power supplies' input.
_READERS: tuple[Callable[[RedfishClient, dict[str, Any]], PowerReading | None], ...] = (
    _from_power,
    _from_environment_metrics,
    _from_power_supplies,
)


def read_power(client: RedfishClient) -> PowerReading:
    """The host's consumed power by the first method of `_READERS` that any chassis offers, the
    chassis tried in the collection's order for each method (each chassis fetched once)."""
    chassis_ids = _members(client, "/redfish/v1/Chassis")
    fetched: dict[str, dict[str, Any]] = {}
    for reader in _READERS:
        for chassis_id in chassis_ids:
            if chassis_id not in fetched:
                fetched[chassis_id] = client.get(chassis_id)
            reading = reader(client, fetched[chassis_id])
            if reading is not None:
                return reading
    raise TelemetryError(
        f"no chassis of the BMC of {client.host} links a Power resource, EnvironmentMetrics with "
        "PowerWatts or a PowerSubsystem with power supplies",
        code="power-no-resource",
    )


# -- the exporter ---------------------------------------------------------------------------------


class EnergyMeter:
    """Joules between consecutive readings of one host (trapezoid rule); a failed poll breaks it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float, tuple[str, ...]]] = {}

    def add(self, labels: tuple[str, ...], at: float, watts: float) -> float:
        host = labels[0]
        previous = self._last.get(host)
        self._last[host] = (at, watts, labels)
        if previous is None or previous[2] != labels or at <= previous[0]:
            return 0.0  # the first reading (or a new source): energy starts from here
        return (previous[1] + watts) / 2.0 * (at - previous[0])

    def forget(self, host: str) -> None:
        self._last.pop(host, None)


class PowerCollector:
    """Polls every BMC and keeps the power and energy metrics of `registry` up to date."""

    def __init__(
        self,
        targets: Sequence[BmcTarget],
        *,
        interval: int,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = list(targets)
        self.interval = interval
        self._clock = clock
        self._meter = EnergyMeter()
        self._shown: dict[str, tuple[str, ...]] = {}
        self.power = Gauge(
            "aifactory_host_power_watts",
            "Host power from its BMC (Redfish), watts; source says whether it is measured or emulated.",
            LABELS,
            registry=registry,
        )
        self.energy = Counter(
            "aifactory_host_energy_joules",
            "Host energy integrated from the power readings (trapezoid between consecutive readings).",
            LABELS,
            registry=registry,
        )
        self.failures = Counter(
            "aifactory_host_power_polls_failed",
            "Power polls that gave no reading, by reason.",
            ("host", "reason"),
            registry=registry,
        )

    def _labels(self, reading: PowerReading) -> tuple[str, ...]:
        return (reading.host, reading.source, reading.method, f"{self.interval}s")

    def record(self, reading: PowerReading, at: float) -> None:
        labels = self._labels(reading)
        shown = self._shown.get(reading.host)
        if shown is not None and shown != labels:
            self.power.remove(*shown)
        self.power.labels(*labels).set(reading.watts)
        self._shown[reading.host] = labels
        self.energy.labels(*labels).inc(self._meter.add(labels, at, reading.watts))

    def fail(self, host: str, reason: str) -> None:
        shown = self._shown.pop(host, None)
        if shown is not None:
            self.power.remove(*shown)
        self._meter.forget(host)
        self.failures.labels(host, reason).inc()

    def _poll(self, target: BmcTarget) -> tuple[float, PowerReading | AifactoryError]:
        try:
            reading: PowerReading | AifactoryError = read_power(target.client(timeout=self.timeout))
        except AifactoryError as error:  # the Redfish client's and read_power's: named, no secret
            reading = error
        return self._clock(), reading

    @property
    def timeout(self) -> float:
        return max(1.0, min(10.0, self.interval / 2))

    def poll_once(self) -> None:
        """One reading of every BMC, in parallel (one that does not answer delays no other)."""
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(self.targets)))) as pool:
            results = list(pool.map(self._poll, self.targets))
        for target, (at, outcome) in zip(self.targets, results, strict=True):
            if isinstance(outcome, PowerReading):
                self.record(outcome, at)
            else:
                log.warning("power of %s: %s", target.host, outcome.message)
                self.fail(target.host, outcome.code)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = self._clock()
            self.poll_once()
            stop.wait(max(0.0, self.interval - (self._clock() - started)))


def start_exporter(
    registry: CollectorRegistry, *, address: str, port: int, certificate: Path, key: Path, client_ca: Path
) -> Callable[[], None]:
    """Serve `registry` over TLS on `address:port` as node exporter does: the host's certificate from
    the site CA, a client certificate from the same CA required, TLS 1.2 at least. Returns the stop."""
    import ssl

    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(
            port,
            addr=address,
            registry=registry,
            certfile=str(certificate),
            keyfile=str(key),
            client_cafile=str(client_ca),
            client_auth_required=True,
            tls_min_version=ssl.TLSVersion.TLSv1_2,
        )
    except (OSError, ssl.SSLError) as exc:
        raise TelemetryError(f"the power collector cannot serve on {address}:{port}: {exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def write_credentials(plan: SitePlan, resolver: SecretResolver, path: Path) -> bool:
    """The credentials file `read_credentials` reads, for every planned BMC, resolved from the site's
    secret store exactly as provisioning resolves them (the host's reference, `{host}` expanded); mode
    0600 from its creation. False when the plan has no BMC (no file, no collector). Fails closed,
    naming every host whose credential does not resolve (never a value)."""
    values: dict[str, str] = {}
    missing: list[Problem] = []
    for host in plan.hosts:
        if host.bmc is None:
            continue
        try:
            values[host.name] = resolver.resolve(host.bmc.credentials, host=host.name).value
        except SecretError as error:
            missing.append(Problem("secret-missing", error.message, Location(path=f"hosts.{host.name}.bmc")))
    if missing:
        raise SecretError(
            f"{len(missing)} BMC credential(s) cannot be resolved for the power collector",
            hint="set them with `aifactory secret set SITE secret://...`, or give the store's "
            "passphrase file in AIFACTORY_PASSPHRASE_FILE",
            problems=missing,
        )
    if not values:
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(descriptor, 0o600)
        json.dump(values, handle, sort_keys=True)
    return True
