"""What a running lab looks like: the record `lab up` writes (`lab.json`) and the live status read back
from it (`lab status`). `LabStatus.as_dict()` is the JSON other stages and tests rely on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from aifactory.lab.journal import process_start_time
from aifactory.lab.layout import LabLayout
from aifactory.lab.names import site_prefix
from aifactory.lab.system import alive, list_netns, listening

RECORD_FORMAT = "aifactory.lab/v1"


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start: int | None

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, process_start_time(pid))

    def running(self) -> bool:
        return alive(self.pid) and self.start is not None and process_start_time(self.pid) == self.start


@dataclass(frozen=True)
class BmcStatus:
    address: str
    port: int
    url: str
    fabric: str
    netns: str
    credentials: str  # the secret:// reference; the value is never shown
    system_uuid: str
    process: ProcessRef
    state: str = "unknown"  # running | stopped

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pid"] = data.pop("process")["pid"]
        return data


@dataclass(frozen=True)
class HostStatus:
    name: str
    role: str
    pool: str
    netns: str
    hostname: str
    management_address: str
    compute_address: str
    interfaces: list[dict[str, Any]]
    anchor: ProcessRef
    sshd: ProcessRef
    bmc: BmcStatus | None
    state: str = "unknown"  # running | stopped
    sshd_state: str = "unknown"  # listening | stopped

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "pool": self.pool,
            "netns": self.netns,
            "hostname": self.hostname,
            "management_address": self.management_address,
            "compute_address": self.compute_address,
            "interfaces": self.interfaces,
            "state": self.state,
            "anchor_pid": self.anchor.pid,
            "sshd": {"pid": self.sshd.pid, "state": self.sshd_state, "port": 22},
            "bmc": self.bmc.as_dict() if self.bmc else None,
        }


@dataclass(frozen=True)
class LabStatus:
    site: str
    # up | down | degraded (a process died) | partial (leftovers of an interrupted up: run `lab down`)
    # | foreign (namespaces of this site name made from another state folder)
    state: str
    root: str
    plan_digest: str | None = None
    control_host: str | None = None
    fabric_netns: str | None = None
    bridges: dict[str, str] = field(default_factory=dict)
    hosts: list[HostStatus] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.state == "up"

    def host(self, name: str) -> HostStatus:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "state": self.state,
            "root": self.root,
            "plan_digest": self.plan_digest,
            "control_host": self.control_host,
            "fabric_netns": self.fabric_netns,
            "bridges": self.bridges,
            **self.paths,
            "secrets": self.secrets,
            "leftovers": self.leftovers,
            "hosts": [h.as_dict() for h in self.hosts],
        }


def access_paths(layout: LabLayout) -> dict[str, str]:
    return {
        "inventory": str(layout.inventory),
        "ssh_config": str(layout.ssh_config),
        "known_hosts": str(layout.known_hosts),
        "ansible_cfg": str(layout.ansible_cfg),
        "private_key": str(layout.private_key),
    }


def write_record(layout: LabLayout, status: LabStatus) -> None:
    data = {
        "format": RECORD_FORMAT,
        **status.as_dict(),
        "processes": {
            h.name: {
                "anchor": asdict(h.anchor),
                "sshd": asdict(h.sshd),
                "bmc": asdict(h.bmc.process) if h.bmc else None,
            }
            for h in status.hosts
        },
    }
    tmp = layout.status_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(layout.status_file)


def _process(raw: dict[str, Any] | None) -> ProcessRef:
    return ProcessRef(int(raw["pid"]), raw.get("start")) if raw else ProcessRef(0, None)


def _live_host(raw: dict[str, Any], processes: dict[str, Any]) -> HostStatus:
    anchor, sshd = _process(processes.get("anchor")), _process(processes.get("sshd"))
    bmc = None
    if raw.get("bmc"):
        b = raw["bmc"]
        proc = _process(processes.get("bmc"))
        state = "running" if proc.running() and listening(proc.pid, b["address"], b["port"]) else "stopped"
        bmc = BmcStatus(
            b["address"],
            b["port"],
            b["url"],
            b["fabric"],
            b["netns"],
            b["credentials"],
            b["system_uuid"],
            proc,
            state,
        )
    sshd_ok = sshd.running() and listening(sshd.pid, raw["management_address"], 22)
    return HostStatus(
        raw["name"],
        raw["role"],
        raw["pool"],
        raw["netns"],
        raw["hostname"],
        raw["management_address"],
        raw["compute_address"],
        raw["interfaces"],
        anchor,
        sshd,
        bmc,
        "running" if anchor.running() else "stopped",
        "listening" if sshd_ok else "stopped",
    )


def read_status(site: str, layout: LabLayout) -> LabStatus:
    leftovers = list_netns(site_prefix(site))
    try:
        data = json.loads(layout.status_file.read_text())
    except FileNotFoundError:
        journal = (layout.root / "journal.jsonl").exists()
        state = "partial" if journal else "foreign" if leftovers else "down"
        return LabStatus(site, state, str(layout.root), leftovers=leftovers)
    hosts = [_live_host(h, data["processes"].get(h["name"], {})) for h in data["hosts"]]
    healthy = all(
        h.state == "running" and h.sshd_state == "listening" and (h.bmc is None or h.bmc.state == "running")
        for h in hosts
    )
    return LabStatus(
        site=site,
        state="up" if healthy else "degraded",
        root=str(layout.root),
        plan_digest=data["plan_digest"],
        control_host=data["control_host"],
        fabric_netns=data["fabric_netns"],
        bridges=data["bridges"],
        hosts=hosts,
        paths=access_paths(layout),
        secrets=data["secrets"],
        leftovers=[],
    )
