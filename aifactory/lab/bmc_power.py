"""An emulated power reading for the lab's BMCs: sushy-tools' own emulator, one Redfish resource more.

sushy-tools has no Power resource, and the lab's hosts have no RAPL or hwmon sensor to read. So each
lab BMC is the same sushy-tools emulator process (its Flask app, its basic auth, its TLS settings),
started through `python -m aifactory.lab.bmc_emulator --config FILE`, which adds before serving:

    GET /redfish/v1/Chassis/<id>/Power     PowerControl[0].PowerConsumedWatts, the host's reading
    GET /redfish/v1/Chassis/<id>           gains the "Power" link every real BMC's chassis has

The reading follows the lab host's CPU load (docs/lab.md): a lab host is a set of namespaces, not a
cgroup, so its CPU use is the CPU time of every process in its network namespace (user, system and
that of reaped children, so a finished job's time does not vanish from the sum), per second of wall
time, over the machine's CPUs (the hosts share them). Between two readings:

    watts = idle + (busy - idle) x utilisation,   utilisation = min(1, CPU seconds / (wall s x CPUs))

with idle 100 W and busy 400 W unless the config says otherwise (a 1U two-socket server). The
reading is the mean over the time since the previous request, so a scrape every 15 s gets the mean
power of those 15 s. The resource says it is emulated three times: its Description, the control's
Name, and `Oem.Aifactory.Emulated: true` (what the power collector reads to label it `emulated`).

Config keys (in the emulator's config file, beside SUSHY_EMULATOR_*):
    AIFACTORY_POWER_NETNS        the host's network namespace (a /run/netns/... or /proc/PID/ns/net)
    AIFACTORY_POWER_IDLE_WATTS   default 100
    AIFACTORY_POWER_BUSY_WATTS   default 400
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.lab.system import namespace_inode

IDLE_WATTS = 100.0
BUSY_WATTS = 400.0
FIRST_WINDOW = 0.25  # seconds: the first reading has no previous sample to measure from
MIN_WINDOW = 0.2  # closer requests get the last reading again (a delta that short is noise)
OEM = "Aifactory"
DESCRIPTION = "Emulated by the aifactory lab: follows the lab host's CPU load; not a measurement"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PowerModel:
    idle_watts: float = IDLE_WATTS
    busy_watts: float = BUSY_WATTS

    def watts(self, utilisation: float) -> float:
        return self.idle_watts + (self.busy_watts - self.idle_watts) * min(1.0, max(0.0, utilisation))


def process_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process, 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return sum(int(value) for value in fields[11:15]) / _TICKS


class NamespaceCpu:
    """CPU seconds of every process in one network namespace, and its utilisation between reads."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = None
        self._utilisation = 0.0

    def inode(self) -> int:
        return os.stat(self.namespace).st_ino

    def cpu_seconds(self) -> float:
        wanted = self.inode()
        total = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and namespace_inode(int(entry.name), "net") == wanted:
                total += process_cpu_seconds(int(entry.name))
        return total

    def _sample(self) -> tuple[float, float]:
        return time.monotonic(), self.cpu_seconds()

    def utilisation(self) -> float:
        """The namespace's share of the machine's CPUs since the previous call (0..1)."""
        with self._lock:
            if self._last is None:
                self._last = self._sample()
                time.sleep(FIRST_WINDOW)
            now = self._sample()
            elapsed = now[0] - self._last[0]
            if elapsed >= MIN_WINDOW:
                used = max(0.0, now[1] - self._last[1])  # a process that left takes its time with it
                self._utilisation = min(1.0, used / (elapsed * (os.cpu_count() or 1)))
                self._last = now
            return self._utilisation


def power_document(chassis: str, watts: float, utilisation: float, model: PowerModel) -> dict[str, Any]:
    """A Redfish Power resource (schema Power.v1_7_1) carrying one emulated reading."""
    path = f"/redfish/v1/Chassis/{chassis}/Power"
    return {
        "@odata.type": "#Power.v1_7_1.Power",
        "@odata.id": path,
        "Id": "Power",
        "Name": "Power",
        "Description": DESCRIPTION,
        "PowerControl": [
            {
                "@odata.id": f"{path}#/PowerControl/0",
                "MemberId": "0",
                "Name": "Emulated system power",
                "PowerConsumedWatts": round(watts, 1),
                "Status": {"State": "Enabled", "Health": "OK"},
            }
        ],
        "Oem": {
            OEM: {
                "Emulated": True,
                "Method": "cpu-load",
                "IdleWatts": model.idle_watts,
                "BusyWatts": model.busy_watts,
                "CpuUtilisation": round(utilisation, 4),
            }
        },
    }


def extend(app: Any) -> None:
    """Add the Power resource and the chassis' link to it to sushy-tools' Flask app (`app`)."""
    import flask  # sushy-tools' own dependency: present wherever the emulator runs

    meters: dict[str, NamespaceCpu] = {}

    def meter() -> NamespaceCpu:
        namespace = str(app.config["AIFACTORY_POWER_NETNS"])
        return meters.setdefault(namespace, NamespaceCpu(namespace))

    def first_chassis(identity: str) -> bool:
        # sushy-tools gives the first chassis every system: the one whose power is the host's
        chassis = app.chassis
        return bool(chassis.uuid(identity) == chassis.chassis[0])

    def power_resource(identity: str) -> flask.Response:
        if not app.config.get("AIFACTORY_POWER_NETNS") or not first_chassis(identity):
            return flask.Response(status=404)
        model = PowerModel(
            float(app.config.get("AIFACTORY_POWER_IDLE_WATTS", IDLE_WATTS)),
            float(app.config.get("AIFACTORY_POWER_BUSY_WATTS", BUSY_WATTS)),
        )
        utilisation = meter().utilisation()
        body = power_document(identity, model.watts(utilisation), utilisation, model)
        return flask.Response(json.dumps(body), status=200, content_type="application/json")

    def link_power(response: flask.Response) -> flask.Response:
        parts = flask.request.path.strip("/").split("/")
        if (
            flask.request.method == "GET"
            and response.status_code == 200
            and len(parts) == 4
            and parts[:3] == ["redfish", "v1", "Chassis"]
            and app.config.get("AIFACTORY_POWER_NETNS")
            and first_chassis(parts[3])
        ):
            body = json.loads(response.get_data())
            body["Power"] = {"@odata.id": f"/redfish/v1/Chassis/{parts[3]}/Power"}
            response.set_data(json.dumps(body))
        return response

    app.add_url_rule("/redfish/v1/Chassis/<identity>/Power", view_func=power_resource, methods=["GET"])
    app.after_request(link_power)
