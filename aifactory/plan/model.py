"""SitePlan: everything concrete that the spec implies, and the one input of every later stage.

Hosts with names and addresses, BMCs, mounts, data and model locations, tenants' pools, NCCL
settings and the countries of everything. Every section is a frozen dataclass, so later stages read
attributes (`pool.platform.arch`), never keys. Serialized by `to_dict()` in a fixed key order (each
section's field order), so the same spec (and allocation lock) always gives the same bytes; read back
by `SitePlan.from_dict` / `SitePlan.load`, which check every field's type and refuse unknown ones.

Standard library only: nodes load the plan (runtime/siteplan.py) without the spec or plan builders.
"""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import dataclass, fields, is_dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

from aifactory.errors import Location, PlanFormatError

PLAN_SCHEMA = "aifactory.plan/v1"


class Interface(NamedTuple):
    """One address of a host on one rail of a fabric (a named tuple: a plan holds 100,000s)."""

    fabric: str
    rail: int
    name: str  # Linux interface name the plan gives this fabric rail (at most 15 characters)
    address: str
    prefixlen: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fabric": self.fabric,
            "rail": self.rail,
            "name": self.name,
            "address": self.address,
            "prefixlen": self.prefixlen,
        }


@dataclass(frozen=True, slots=True)
class BmcEndpoint:
    address: str
    fabric: str
    protocol: str
    credentials: str  # a secret:// reference with {host} expanded; never a value

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "fabric": self.fabric,
            "protocol": self.protocol,
            "credentials": self.credentials,
        }


@dataclass(frozen=True, slots=True)
class Mount:
    storage: str
    kind: str
    path: str  # where the host mounts it
    source: str  # the server side (endpoint) or storage://<name> when the spec gives none
    fabric: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "kind": self.kind,
            "path": self.path,
            "source": self.source,
            "fabric": self.fabric,
        }


@dataclass(frozen=True, slots=True)
class Host:
    name: str  # also its hostname: <site>-<pool>-<nnn>
    pool: str
    role: str
    index: int  # 1-based within the pool
    datacenter: str
    country: str
    region: str | None
    interfaces: tuple[Interface, ...]
    management_address: str
    compute_address: str  # where torch.distributed rendezvous happens (compute fabric, else management)
    bmc: BmcEndpoint | None
    gpus: GpuPlan | None  # each host's (one object shared by a pool's hosts)
    cpus: int | None
    memory_gib: int | None
    mounts: tuple[Mount, ...]
    nccl: dict[str, str]  # environment variables: a mapping by nature
    platform: PlatformPlan

    def addresses(self, fabric: str) -> list[str]:
        return [i.address for i in self.interfaces if i.fabric == fabric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pool": self.pool,
            "role": self.role,
            "index": self.index,
            "datacenter": self.datacenter,
            "country": self.country,
            "region": self.region,
            "management_address": self.management_address,
            "compute_address": self.compute_address,
            "interfaces": [i.to_dict() for i in self.interfaces],
            "bmc": self.bmc.to_dict() if self.bmc else None,
            "gpus": {"model": self.gpus.model, "count": self.gpus.count} if self.gpus else None,
            "cpus": self.cpus,
            "memory_gib": self.memory_gib,
            "mounts": [m.to_dict() for m in self.mounts],
            "nccl": self.nccl,
            "platform": {
                "os": self.platform.os,
                "arch": self.platform.arch,
                "python": self.platform.python,
                "scap_profile": self.platform.scap_profile,
            },
        }


# Numbers keep the type the spec gave them (10 and 10.0 serialize differently): a float field takes both.
Number = float


@dataclass(frozen=True, slots=True)
class SiteInfo:
    name: str
    jurisdiction: str
    jurisdiction_countries: tuple[str, ...]
    air_gapped: bool
    description: str | None


@dataclass(frozen=True, slots=True)
class DatacenterPlan:
    name: str
    country: str
    region: str | None


@dataclass(frozen=True, slots=True)
class FabricPlan:
    name: str
    kind: str
    purpose: str
    cidr: str
    ip_version: int
    prefixlen: int
    gateway: str | None
    rails: int
    interfaces: tuple[str, ...]  # Linux interface name of each rail
    speed_gbps: Number | None
    mtu: int | None
    vlan: int | None


@dataclass(frozen=True, slots=True)
class PlatformPlan:
    os: str
    arch: str
    python: str
    scap_profile: str  # the SCAP Security Guide profile the hosts are scanned against


@dataclass(frozen=True, slots=True)
class GpuPlan:
    model: str
    count: int


@dataclass(frozen=True, slots=True)
class HardwarePlan:
    gpu: GpuPlan | None
    cpus: int | None
    memory_gib: int | None


@dataclass(frozen=True, slots=True)
class PoolBmcPlan:
    protocol: str
    fabric: str
    credentials: str  # a secret:// reference, {host} not yet expanded; never a value


@dataclass(frozen=True, slots=True)
class PoolPlan:
    name: str
    role: str
    count: int
    datacenter: str
    country: str
    platform: PlatformPlan
    hardware: HardwarePlan
    fabrics: tuple[str, ...]
    bmc: PoolBmcPlan | None
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoragePlan:
    name: str
    kind: str
    datacenter: str
    country: str
    capacity_tib: Number
    encrypted_at_rest: bool
    endpoint: str | None
    mount_path: str | None
    mounted_by: tuple[str, ...]  # pool names
    fabric: str | None
    replicas: tuple[str, ...]
    replica_countries: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TenantPlan:
    name: str
    clearance: str
    pools: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DatasetPlan:
    name: str
    owner: str
    classification: str
    residency: str
    residency_countries: tuple[str, ...]
    storage: str
    path: str
    host_path: str | None  # where hosts that mount the storage find it; None on object storage
    url: str | None  # s3://... on object storage, else None


@dataclass(frozen=True, slots=True)
class ModelPlan:
    name: str
    owner: str
    classification: str
    trained_on: tuple[str, ...]
    residency_countries: tuple[str, ...]
    storage: str
    path: str
    host_path: str | None
    url: str | None
    serve_on: tuple[str, ...]  # pool names
    serve_countries: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AccessGrant:
    tenant: str
    resource: str  # "<kind>/<name>"
    kind: str
    name: str
    actions: tuple[str, ...]
    approved_by: str | None
    expires: str | None  # ISO date
    to: str | None
    to_countries: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EgressRule:
    name: str
    endpoint: str
    country: str


@dataclass(frozen=True, slots=True)
class EgressPlan:
    air_gapped: bool
    allow: tuple[EgressRule, ...]


@dataclass(frozen=True, slots=True)
class MonitoringPlan:
    """Where Prometheus and Alertmanager run and how they keep and evaluate samples (docs/telemetry.md)."""

    host: str  # the control host, or the first host of the spec's monitoring pool
    retention_days: int
    scrape_interval_seconds: int
    evaluation_interval_seconds: int


@dataclass(frozen=True, slots=True)
class FrontDoorBackendPlan:
    """A serving host behind the front door: its name and management address."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class FrontDoorPlan:
    """Where the front door (HAProxy) runs and what it sends to (docs/runtime.md, "Front door"): clients
    reach `address:port`; each backend is a serving host's management address on `backend_port`, which
    takes PROXY v2 headers from `address` only."""

    host: str  # the control host, or the first host of the spec's front_door pool
    address: str  # its management address: where clients connect, and where nodes see it connect from
    port: int
    backend_port: int
    backends: tuple[FrontDoorBackendPlan, ...]  # the hosts of every pool a model is served on, in plan order

    @property
    def url(self) -> str:
        """Where clients reach the models: https://ADDRESS:PORT (an IPv6 address in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ContactsPlan:
    """Who the hosts report to: root's mail alias and the host scans' tailored value (docs/audit.md)."""

    security: str  # an email address (the spec's grammar)


@dataclass(frozen=True, slots=True)
class PoolEconomicsPlan:
    """One pool's capital cost per host (a decimal string) and its amortisation period."""

    pool: str
    capital_cost_per_host: str
    amortisation_years: int


@dataclass(frozen=True, slots=True)
class EconomicsPlan:
    """The spec's prices (docs/economics.md). Money and ratios are decimal strings ("0.21"), exactly
    as written: a JSON float would be read back through binary floating point by every consumer."""

    currency: str  # ISO 4217
    energy_price_per_kwh: str
    pue: str
    fixed_cost_per_year: str
    pools: tuple[PoolEconomicsPlan, ...]


@dataclass(frozen=True, slots=True)
class LoopTriggerPlan:
    """When a turn of the loop starts (docs/loop.md): enough new feedback records, a time, or both."""

    new_samples: int | None
    schedule: str | None  # the spec's words (`daily 02:30`)
    on_calendar: str | None  # the same as a systemd calendar expression (`*-*-* 02:30:00`), for the timer


@dataclass(frozen=True, slots=True)
class EvaluationSetPlan:
    """The fixed dataset version the champion and the challenger are measured on."""

    dataset: str
    version: int
    digest: str | None  # pinned by the spec, or None (the version's number alone names it)


@dataclass(frozen=True, slots=True)
class LoopMetricPlan:
    """A metric's promotion rule: a target (both minima set, tolerance None) must improve by both; any
    other metric (minima None) may be worse than the champion's by at most `tolerance` (0 unless set)."""

    name: str
    better: str  # higher | lower
    min_improvement: Number | None
    min_relative_improvement: Number | None
    tolerance: Number | None


@dataclass(frozen=True, slots=True)
class SignOffPlan:
    by: tuple[str, ...]  # email addresses; a signed sign-off from one of them is needed to promote


@dataclass(frozen=True, slots=True)
class CanaryPlan:
    """How a candidate serves as a canary before it becomes the champion (docs/loop.md). The last
    three were added later: in the plan only when the spec gives them, so older plans keep their bytes;
    None: the default (aifactory.trust.canary)."""

    share: Number  # in (0, 1)
    duration_minutes: int  # how long it must hold before the turn promotes it
    min_requests: int | None = None  # judged once it answered this many in the window
    window_seconds: int | None = None  # error rates compared over this last stretch
    error_margin: Number | None = None  # withdrawn when its error rate passes the champion's by this

    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"min_requests", "window_seconds", "error_margin"})


@dataclass(frozen=True, slots=True)
class LoopPlan:
    """One model's closed loop: trigger, evaluation set, promotion rules, sign-off and canary."""

    model: str
    trigger: LoopTriggerPlan
    evaluation: EvaluationSetPlan
    metrics: tuple[LoopMetricPlan, ...]
    sign_off: SignOffPlan | None
    canary: CanaryPlan | None

    @property
    def targets(self) -> tuple[LoopMetricPlan, ...]:
        return tuple(m for m in self.metrics if m.min_improvement is not None)


@dataclass(frozen=True)
class SitePlan:
    """The plan: typed sections; `allocation` is the allocation lock's snapshot, kept as its JSON."""

    site: SiteInfo
    spec_digest: str
    datacenters: tuple[DatacenterPlan, ...]
    fabrics: tuple[FabricPlan, ...]
    pools: tuple[PoolPlan, ...]
    hosts: tuple[Host, ...]
    storage: tuple[StoragePlan, ...]
    tenants: tuple[TenantPlan, ...]
    datasets: tuple[DatasetPlan, ...]
    models: tuple[ModelPlan, ...]
    access: tuple[AccessGrant, ...]
    egress: EgressPlan
    control_host: str | None
    allocation: dict[str, Any]
    # Set only when the spec has a monitoring section: plans written before it stay byte for byte
    # (the key is left out of to_dict when None, and a plan without it reads back as None).
    monitoring: MonitoringPlan | None = None
    # Likewise set only when the spec has a contacts section.
    contacts: ContactsPlan | None = None
    # Likewise set only when the spec has an economics section.
    economics: EconomicsPlan | None = None
    # Likewise set only when the spec has a front_door section.
    front_door: FrontDoorPlan | None = None
    # Likewise set only when the spec has a loop section (an empty one included).
    loop: tuple[LoopPlan, ...] | None = None

    @property
    def name(self) -> str:
        return self.site.name

    @cached_property
    def _hosts_by_name(self) -> dict[str, Host]:
        return {host.name: host for host in self.hosts}

    @property
    def monitored(self) -> bool:
        """Whether the site runs Prometheus: on its control host, or on the pool its spec names."""
        return self.control_host is not None or self.monitoring is not None

    def host(self, name: str) -> Host:
        """The host of that name (KeyError if none); constant time, for loops over 10,000s."""
        return self._hosts_by_name[name]

    def hosts_in_pool(self, pool: str) -> list[Host]:
        return [h for h in self.hosts if h.pool == pool]

    def fabric(self, name: str) -> FabricPlan:
        return next(f for f in self.fabrics if f.name == name)

    def pool(self, name: str) -> PoolPlan:
        return next(p for p in self.pools if p.name == name)

    def dataset(self, name: str) -> DatasetPlan | None:
        return next((d for d in self.datasets if d.name == name), None)

    def model(self, name: str) -> ModelPlan | None:
        return next((m for m in self.models if m.name == name), None)

    def loop_of(self, model: str) -> LoopPlan | None:
        """The model's loop settings, or None when the spec gives it no loop."""
        return next((loop for loop in self.loop or () if loop.model == model), None)

    def summary(self) -> dict[str, int]:
        return {
            "hosts": len(self.hosts),
            "addresses": sum(len(h.interfaces) + (1 if h.bmc else 0) for h in self.hosts),
            "gpus": sum(h.gpus.count for h in self.hosts if h.gpus),
            "bmcs": sum(1 for h in self.hosts if h.bmc),
        }

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "schema": PLAN_SCHEMA,
                "site": section_dict(self.site),
                "spec_digest": self.spec_digest,
                "summary": self.summary(),
                "control_host": self.control_host,
                "datacenters": [section_dict(d) for d in self.datacenters],
                "fabrics": [section_dict(f) for f in self.fabrics],
                "pools": [section_dict(p) for p in self.pools],
                "hosts": [h.to_dict() for h in self.hosts],
                "storage": [section_dict(s) for s in self.storage],
                "tenants": [section_dict(t) for t in self.tenants],
                "datasets": [section_dict(d) for d in self.datasets],
                "models": [section_dict(m) for m in self.models],
                "access": [section_dict(a) for a in self.access],
                "egress": section_dict(self.egress),
                "allocation": self.allocation,
            }
            | {
                name: section_dict(section)
                for name, section in (
                    ("monitoring", self.monitoring),
                    ("contacts", self.contacts),
                    ("economics", self.economics),
                    ("front_door", self.front_door),
                )
                if section is not None
            }
            | ({"loop": [section_dict(loop) for loop in self.loop]} if self.loop is not None else {})
        )

    def to_json(self) -> str:
        """The canonical serialized plan (what `aifactory plan -o` writes)."""
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any) -> SitePlan:
        """The plan `to_dict()` wrote (PlanFormatError naming the field when it is not one)."""
        if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
            raise PlanFormatError(f"not an aifactory site plan (schema {PLAN_SCHEMA})")
        unknown = [k for k in data if k not in _PLAN_KEYS + _OPTIONAL_PLAN_KEYS]
        missing = [k for k in _PLAN_KEYS if k not in data]
        if unknown or missing:
            raise PlanFormatError(f"plan fields: missing {missing or 'none'}, unknown {unknown or 'none'}")
        hints = _hints(cls)
        sections = {
            name: _read(hints[name], data[name], name)
            for name in _PLAN_KEYS
            if name not in ("schema", "summary", "hosts")
        }
        hosts = data["hosts"]
        if not isinstance(hosts, list):
            raise _bad("hosts", "a list", hosts)
        shared: dict[Any, Any] = {}
        sections |= {
            name: _read(hints[name], data[name], name) for name in _OPTIONAL_PLAN_KEYS if name in data
        }
        plan = cls(hosts=tuple(_host(h, f"hosts[{k}]", shared) for k, h in enumerate(hosts)), **sections)
        if plan.summary() != data["summary"]:  # derived: a different one means the hosts were edited
            raise PlanFormatError("plan field summary: does not match the plan's hosts")
        return plan

    @classmethod
    def load(cls, path: Path | str) -> SitePlan:
        """Read a plan.json (as `aifactory plan -o` or the bundle wrote it)."""
        where = Location(file=str(path))
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise PlanFormatError(
                f"cannot read the site plan {path}: {exc}",
                location=where,
                hint="give the plan.json that `aifactory plan -o` or the bundle wrote",
            ) from None
        try:
            return cls.from_dict(data)
        except PlanFormatError as exc:
            raise PlanFormatError(f"{path}: {exc.message}", location=where) from None


_PLAN_KEYS = (
    "schema",
    "site",
    "spec_digest",
    "summary",
    "control_host",
    "datacenters",
    "fabrics",
    "pools",
    "hosts",
    "storage",
    "tenants",
    "datasets",
    "models",
    "access",
    "egress",
    "allocation",
)
# Sections added later, present only when the spec sets them.
_OPTIONAL_PLAN_KEYS = ("monitoring", "contacts", "economics", "front_door", "loop")


# ---- serialization: each section's fields, in order, are its JSON keys ----------------------------

_Section = TypeVar("_Section")


def section_dict(section: Any) -> dict[str, Any]:
    """A section as plain JSON data, keys in field order (tuples become lists); a field added after
    plans shipped (OMIT_WHEN_NONE) is left out while None, so older plans keep their bytes."""
    omitted: frozenset[str] = getattr(type(section), "OMIT_WHEN_NONE", frozenset())
    return {
        f.name: _plain(getattr(section, f.name))
        for f in fields(section)
        if not (f.name in omitted and getattr(section, f.name) is None)
    }


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return section_dict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A class's field types, resolved once (annotations are strings under `from __future__`)."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def read_section(cls: type[_Section], data: Any, where: str) -> _Section:
    """`cls` from the dict `section_dict` wrote, checking each field's type; `where` names it in errors."""
    if not isinstance(data, dict):
        raise _bad(where, "an object", data)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]  # cls is a dataclass
    omitted: frozenset[str] = getattr(cls, "OMIT_WHEN_NONE", frozenset())
    data = {n: None for n in omitted} | data
    missing = [n for n in names if n not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        said = [
            f"missing {', '.join(missing)}" if missing else "",
            f"unknown {', '.join(unknown)}" if unknown else "",
        ]
        raise PlanFormatError(f"plan field {where}: {'; '.join(s for s in said if s)}")
    hints = _hints(cls)
    return cls(**{n: _read(hints[n], data[n], f"{where}.{n}") for n in names})


def _read(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (hint,) = [o for o in options if o is not type(None)]
        return _read(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        item = get_args(hint)[0]
        return tuple(_read(item, v, f"{where}[{k}]") for k, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        return dict(value)
    if isinstance(hint, type) and is_dataclass(hint):
        return read_section(hint, value, where)
    return _scalar(hint, value, where)


def _scalar(hint: type, value: Any, where: str) -> Any:
    if hint is float:  # a number: int or float, kept as given
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise _bad(where, hint.__name__, value)
    return value


def _bad(where: str, expected: str, value: Any) -> PlanFormatError:
    return PlanFormatError(f"plan field {where}: expected {expected}, got {type(value).__name__}")


def _host(data: Any, where: str, shared: dict[Any, Any]) -> Host:
    """A host, read by hand: a plan holds 100,000s, too many for the generic reader above. A pool's
    hosts share their GPU and platform values (`shared`), as the hosts `build_plan` makes do."""
    if not isinstance(data, dict) or data.keys() != _HOST_KEYS:
        raise PlanFormatError(f"plan field {where}: not a host (keys {', '.join(sorted(_HOST_KEYS))})")
    try:
        bmc, gpus, platform = data["bmc"], data["gpus"], data["platform"]
        host = Host(
            data["name"],
            data["pool"],
            data["role"],
            data["index"],
            data["datacenter"],
            data["country"],
            data["region"],
            tuple(Interface(**i) for i in data["interfaces"]),
            data["management_address"],
            data["compute_address"],
            BmcEndpoint(**bmc) if bmc is not None else None,
            None if gpus is None else _shared(shared, GpuPlan, gpus, f"{where}.gpus"),
            data["cpus"],
            data["memory_gib"],
            tuple(Mount(**m) for m in data["mounts"]),
            data["nccl"],
            _shared(shared, PlatformPlan, platform, f"{where}.platform"),
        )
    except (TypeError, AttributeError) as exc:  # an interface, BMC or mount with missing or unknown keys
        raise PlanFormatError(f"plan field {where}: {exc}") from None
    if not isinstance(host.name, str) or not isinstance(host.pool, str):
        raise PlanFormatError(f"plan field {where}: name and pool must be strings")
    return host


def _shared(shared: dict[Any, Any], cls: type[_Section], data: Any, where: str) -> _Section:
    # Types in the key: True == 1 in Python, but the two serialize differently.
    key = (cls, tuple((k, type(v), v) for k, v in data.items()) if isinstance(data, dict) else id(data))
    if key not in shared:
        shared[key] = read_section(cls, data, where)
    found: _Section = shared[key]
    return found


_HOST_KEYS = frozenset(
    (
        "name",
        "pool",
        "role",
        "index",
        "datacenter",
        "country",
        "region",
        "management_address",
        "compute_address",
        "interfaces",
        "bmc",
        "gpus",
        "cpus",
        "memory_gib",
        "mounts",
        "nccl",
        "platform",
    )
)
