"""What a health run asks of one host (a `HostTask`) and what the host answers (`Measurement`s).

Both travel as JSON: the control host writes the task on the check's standard input, the host prints
its report on standard output. Nothing here judges a value: the thresholds and the verdict are the
control host's (policies/data/health_thresholds.json and policies/health.rego).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["quick", "standard", "burn-in"]
LEVELS: tuple[Level, ...] = ("quick", "standard", "burn-in")
RAW_LIMIT = 4000  # characters of a tool's output kept as evidence per measurement


def clipped(text: str) -> str:
    """A tool's output, cut to what evidence needs (the head and the tail, where tools say most)."""
    if len(text) <= RAW_LIMIT:
        return text
    half = RAW_LIMIT // 2
    return f"{text[:half]}\n... [{len(text) - RAW_LIMIT} characters left out] ...\n{text[-half:]}"


@dataclass(frozen=True)
class Measurement:
    """One measured value. `value` None means the check could not measure (never a pass)."""

    check: str  # kebab-case name, the key of the threshold table (e.g. "tcp-bandwidth")
    subject: str  # what it is about: "/", "/srv/share", a peer, "gpu0", "host"
    value: float | None
    unit: str
    raw: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failed(cls, check: str, subject: str, unit: str, error: str, raw: str = "") -> Measurement:
        return cls(check, subject, None, unit, clipped(raw), error)


@dataclass(frozen=True)
class Peer:
    host: str
    fabric: str
    address: str


@dataclass(frozen=True)
class Link:
    """One planned interface of the host: its fabric and the Linux name the plan gives it."""

    fabric: str
    interface: str


@dataclass(frozen=True)
class HostTask:
    """What one host checks, worked out from the plan by the control host."""

    host: str
    level: Level
    services: tuple[str, ...] = ()
    # Services checked where deploy installed their unit (/etc/systemd/system/NAME.service): the
    # runtime's server, absent on a host the scheduler runs on before any deploy.
    deployed_services: tuple[str, ...] = ()
    service_manager: str = "systemd"  # or "supervised", with service_command
    service_command: str | None = None
    paths: tuple[str, ...] = ("/",)  # disk and inode headroom
    storage: tuple[str, ...] = ()  # site storage mount paths: mounted rw, fio throughput
    peers: tuple[Peer, ...] = ()  # reachability, every fabric
    links: tuple[Link, ...] = ()  # the host's own planned interfaces: administratively up and running
    bandwidth_peer: Peer | None = None  # iperf3 client target
    bandwidth_listen: str | None = None  # own address the iperf3 server listens on
    iperf_port: int = 5201
    iperf_seconds: int = 1  # time, not bytes: a throttled link must not stretch the run
    fio_size_mib: int = 64
    gpus_expected: int = 0
    gpu_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostTask:
        values = dict(data)
        values["peers"] = tuple(Peer(**p) for p in values.get("peers", ()))
        values["links"] = tuple(Link(**link) for link in values.get("links", ()))
        bandwidth = values.get("bandwidth_peer")
        values["bandwidth_peer"] = Peer(**bandwidth) if bandwidth else None
        for key in ("services", "deployed_services", "paths", "storage"):
            values[key] = tuple(values.get(key, ()))
        if values.get("level") not in LEVELS:
            raise ValueError(f"unknown level {values.get('level')!r}")
        return cls(**values)
