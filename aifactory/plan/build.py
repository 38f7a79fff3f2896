"""SiteSpec (+ allocation lock) -> SitePlan. Pure and deterministic: no clock, no randomness, no sets
in output order."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from typing import Any

from aifactory.chain import canonical_json
from aifactory.plan.addressing import (
    AllocationLock,
    FabricAllocator,
    OwnerDemand,
    as_dict,
    lock_path_for,
    lock_snapshot,
    owner_key,
)
from aifactory.plan.model import (
    AccessGrant,
    BmcEndpoint,
    CanaryPlan,
    ContactsPlan,
    DatacenterPlan,
    DatasetPlan,
    EconomicsPlan,
    EgressPlan,
    EgressRule,
    EvaluationSetPlan,
    FabricPlan,
    FrontDoorBackendPlan,
    FrontDoorPlan,
    GpuPlan,
    HardwarePlan,
    Host,
    Interface,
    LoopMetricPlan,
    LoopPlan,
    LoopTriggerPlan,
    ModelPlan,
    MonitoringPlan,
    Mount,
    PlatformPlan,
    PoolBmcPlan,
    PoolEconomicsPlan,
    PoolPlan,
    SignOffPlan,
    SiteInfo,
    SitePlan,
    StoragePlan,
    TenantPlan,
)
from aifactory.spec.model import Fabric, Loop, LoopMetric, NodePool, SiteSpec, decimal_of
from aifactory.spec.naming import host_name, interface_name
from aifactory.spec.places import Places, load_places
from aifactory.spec.validate import LoadedSpec, load_spec
from aifactory.state import SiteState

_tuple_new = tuple.__new__  # builds a named tuple from a tuple without its Python-level __new__
MOUNTED_BY_DEFAULT_ROLES = ("gpu", "cpu")
MODEL_DIR = "/models"
ROCE_GID_INDEX = "3"  # RoCE v2 over IPv4 on mlx5 devices


@dataclass(frozen=True)
class PlannedSite:
    """A validated spec and its plan, plus where the allocation lock lives and whether it changed."""

    loaded: LoadedSpec
    plan: SitePlan
    lock: AllocationLock
    lock_path: Path | None
    lock_changed: bool
    lock_text: str | None = None  # the lock file as it was read (None: there was none)

    @property
    def spec(self) -> SiteSpec:
        return self.loaded.spec

    def committed(self) -> PlannedSite:
        """This plan once its lock is written (commit_lock): what planning the file again would give."""
        return replace(self, lock_changed=False, lock_text=self.lock.to_json())


def plan_site(spec_path: str | Path, *, write_lock: bool = True, wait: float = 0.0) -> PlannedSite:
    """Load, validate and plan a site file, honouring (and by default updating) its allocation lock.

    Reading never touches the state folder. When the allocation lock must change, the update is a
    changing command: it takes the site lock (refusing, or waiting up to `wait` seconds, while
    another changing command runs), plans again against the lock file as it is then, writes it
    atomically and appends a record to the operator log.
    """
    path = Path(spec_path)
    loaded = load_spec(path)
    lock_path = lock_path_for(path)
    planned = _plan_against_lock(loaded, lock_path, _read_text(lock_path))
    return commit_lock(planned, wait=wait) if write_lock else planned


def commit_lock(planned: PlannedSite, *, wait: float = 0.0) -> PlannedSite:
    """Write the allocation lock a plan needs (when it changed), under the site lock. Plans again
    only when another command changed the lock file meanwhile; else the same plan is returned."""
    if not planned.lock_changed or planned.lock_path is None:
        return planned
    lock_path = planned.lock_path
    state = SiteState.for_site(planned.loaded.spec.site.name)
    with state.lock("plan", wait=wait):
        now = _read_text(lock_path)
        if now != planned.lock_text:  # another command changed the lock while this one waited
            planned = _plan_against_lock(planned.loaded, lock_path, now)
        if planned.lock_changed:
            tmp = lock_path.with_name(lock_path.name + ".tmp")
            tmp.write_text(planned.lock.to_json())
            tmp.replace(lock_path)
            state.record(
                command="plan",
                result="allocation lock updated",
                spec_digest=planned.plan.spec_digest,
                detail={"allocation_lock": str(lock_path.resolve())},
            )
    return planned


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _plan_against_lock(loaded: LoadedSpec, lock_path: Path, lock_text: str | None) -> PlannedSite:
    previous = AllocationLock.parse(lock_text, lock_path, loaded.spec.site.name)
    plan, lock = build_plan(loaded.spec, lock=previous)
    return PlannedSite(loaded, plan, lock, lock_path, lock_text != lock.to_json(), lock_text)


ADDED_AFTER_V1 = ("logs", "monitoring", "health", "contacts", "economics", "front_door", "loop")
# Fields added to a section after the section shipped: likewise in the digest only when set.
ADDED_INSIDE_SECTIONS: dict[str, tuple[str, ...]] = {"health": ("drain_budget",)}


def spec_digest(spec: SiteSpec) -> str:
    """Digest of the spec's meaning (comments and key order do not change it)."""
    # Sections added after v1 first shipped enter the digest only when a spec sets them, so that the
    # digest of every spec written before them stays what it was.
    later: dict[str, Any] = {name: True for name in ADDED_AFTER_V1 if getattr(spec, name) is None}
    for section, fields in ADDED_INSIDE_SECTIONS.items():
        present = getattr(spec, section)
        unset = {name: True for name in fields if present is not None and getattr(present, name) is None}
        if unset:
            later[section] = unset
    body = canonical_json(spec.model_dump(mode="json", by_alias=True, exclude=later))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _monitoring(spec: SiteSpec, hosts: list[Host]) -> MonitoringPlan | None:
    """Where Prometheus runs: the first host of the spec's monitoring pool, else the control host."""
    wanted = spec.monitoring
    if wanted is None:
        return None
    if wanted.pool is not None:
        host = next(h.name for h in hosts if h.pool == wanted.pool)  # validate: the pool exists
    else:
        host = next((h.name for h in hosts if h.role == "control"), hosts[0].name)
    return MonitoringPlan(
        host=host,
        retention_days=wanted.retention_days,
        scrape_interval_seconds=wanted.scrape_interval_seconds,
        evaluation_interval_seconds=wanted.evaluation_interval_seconds,
    )


def _front_door(spec: SiteSpec, hosts: list[Host]) -> FrontDoorPlan | None:
    """Where the front door runs (the first host of its pool, else the control host) and its backends:
    every host of a pool some model is served on."""
    wanted = spec.front_door
    if wanted is None:
        return None
    if wanted.pool is not None:
        host = next(h for h in hosts if h.pool == wanted.pool)  # validate: the pool exists
    else:
        host = next((h for h in hosts if h.role == "control"), hosts[0])
    serving = {pool for model in spec.models for pool in model.serve_on}
    return FrontDoorPlan(
        host=host.name,
        address=host.management_address,
        port=wanted.port,
        backend_port=wanted.backend_port,
        backends=tuple(
            FrontDoorBackendPlan(h.name, h.management_address) for h in hosts if h.pool in serving
        ),
    )


def decimal_text(value: float) -> str:
    """A spec number as the plan keeps it: the decimal written, without exponent or trailing zeros
    (250000.0 -> "250000", 0.21 -> "0.21", 1e-06 -> "0.000001")."""
    exact = decimal_of(value)
    return f"{exact.normalize():f}" if exact != exact.to_integral_value() else f"{int(exact)}"


def _economics(spec: SiteSpec) -> EconomicsPlan | None:
    wanted = spec.economics
    if wanted is None:
        return None
    return EconomicsPlan(
        currency=wanted.currency,
        energy_price_per_kwh=decimal_text(wanted.energy_price_per_kwh),
        pue=decimal_text(wanted.pue),
        fixed_cost_per_year=decimal_text(wanted.fixed_cost_per_year),
        pools=tuple(
            PoolEconomicsPlan(p.pool, decimal_text(p.capital_cost_per_host), p.amortisation_years)
            for p in wanted.pools
        ),
    )


def on_calendar(schedule: str) -> str:
    """A loop's schedule (the spec's grammar) as a systemd calendar expression (systemd.time(7)):
    `daily 02:30` -> `*-*-* 02:30:00`, `Mon,Thu 02:30` -> `Mon,Thu *-*-* 02:30:00`; the four words
    (hourly, daily, weekly, monthly) are systemd's own."""
    days, _, clock = schedule.rpartition(" ")
    if not days:
        return schedule
    when = f"*-*-* {clock}:00"
    return when if days == "daily" else f"{days} {when}"


def _loop(loop: Loop) -> LoopPlan:
    trigger = loop.trigger
    return LoopPlan(
        model=loop.model,
        trigger=LoopTriggerPlan(
            new_samples=trigger.new_samples,
            schedule=trigger.schedule,
            on_calendar=on_calendar(trigger.schedule) if trigger.schedule is not None else None,
        ),
        evaluation=EvaluationSetPlan(**loop.evaluation.model_dump()),
        metrics=tuple(_loop_metric(m) for m in loop.metrics),
        sign_off=SignOffPlan(tuple(loop.sign_off.by)) if loop.sign_off else None,
        canary=CanaryPlan(**loop.canary.model_dump()) if loop.canary else None,
    )


def _loop_metric(metric: LoopMetric) -> LoopMetricPlan:
    """The rule as the policy reads it: a guard metric's tolerance resolved (0 unless given)."""
    target = metric.min_improvement is not None
    return LoopMetricPlan(
        name=metric.name,
        better=metric.better,
        min_improvement=metric.min_improvement,
        min_relative_improvement=metric.min_relative_improvement,
        tolerance=None if target else (metric.tolerance if metric.tolerance is not None else 0),
    )


def build_plan(
    spec: SiteSpec, *, lock: AllocationLock | None = None, places: Places | None = None
) -> tuple[SitePlan, AllocationLock]:
    places = places or load_places()
    site = spec.site.name
    lock = lock or AllocationLock(site)
    allocators = _allocate(spec, lock)
    dc_by_name = {dc.name: dc for dc in spec.datacenters}
    fabric_by_name = {f.name: f for f in spec.fabrics}
    storage_mounts = _mounts_by_pool(spec)
    hosts: list[Host] = []
    pools: list[PoolPlan] = []
    for pool in spec.node_pools:
        dc = dc_by_name[pool.datacenter]
        names = [host_name(site, pool.name, i) for i in range(1, pool.count + 1)]
        pools.append(_pool_plan(pool, dc.country, names))
        hosts.extend(
            _pool_hosts(
                pool,
                names,
                dc.country,
                dc.region,
                allocators,
                fabric_by_name,
                storage_mounts.get(pool.name, ()),
            )
        )
    plan = SitePlan(
        site=SiteInfo(
            name=site,
            jurisdiction=spec.site.jurisdiction,
            jurisdiction_countries=tuple(places.countries_of(spec.site.jurisdiction)),
            air_gapped=spec.site.air_gapped,
            description=spec.site.description,
        ),
        spec_digest=spec_digest(spec),
        datacenters=tuple(DatacenterPlan(d.name, d.country, d.region) for d in spec.datacenters),
        fabrics=tuple(_fabric_plan(f, allocators[f.name]) for f in spec.fabrics),
        pools=tuple(pools),
        hosts=tuple(hosts),
        storage=_storage(spec, dc_by_name),
        tenants=tuple(
            TenantPlan(
                t.name,
                t.clearance,
                tuple(t.pools) if t.pools is not None else tuple(p.name for p in spec.node_pools),
            )
            for t in spec.tenants
        ),
        datasets=_datasets(spec, places),
        models=_models(spec, places, dc_by_name),
        access=_access(spec, places),
        egress=EgressPlan(
            air_gapped=spec.site.air_gapped,
            allow=tuple(EgressRule(r.name, r.endpoint, r.country) for r in spec.egress.allow),
        ),
        control_host=next((h.name for h in hosts if h.role == "control"), None),
        allocation={},
        monitoring=_monitoring(spec, hosts),
        contacts=ContactsPlan(security=spec.contacts.security) if spec.contacts else None,
        economics=_economics(spec),
        front_door=_front_door(spec, hosts),
        loop=tuple(_loop(loop) for loop in spec.loop) if spec.loop is not None else None,
    )
    new_lock = lock_snapshot(site, allocators)
    object.__setattr__(plan, "allocation", as_dict(new_lock)["fabrics"])
    return plan, new_lock


def _allocate(spec: SiteSpec, lock: AllocationLock) -> dict[str, FabricAllocator]:
    allocators: dict[str, FabricAllocator] = {}
    for fabric in spec.fabrics:
        demands: list[OwnerDemand] = []
        for pool in spec.node_pools:
            if fabric.name in pool.fabrics:
                demands.append(OwnerDemand(owner_key("hosts", pool.name), pool.count * fabric.rails))
            if pool.bmc is not None and pool.bmc.fabric == fabric.name:
                demands.append(OwnerDemand(owner_key("bmc", pool.name), pool.count))
        allocator = FabricAllocator(fabric.name, fabric.cidr, lock.fabrics.get(fabric.name))
        allocator.allocate(demands)
        allocators[fabric.name] = allocator
    return allocators


def _fabric_plan(fabric: Fabric, allocator: FabricAllocator) -> FabricPlan:
    network = ipaddress.ip_network(fabric.cidr)
    return FabricPlan(
        name=fabric.name,
        kind=fabric.kind,
        purpose=fabric.purpose,
        cidr=str(network),
        ip_version=network.version,
        prefixlen=network.prefixlen,
        gateway=allocator.gateway,
        rails=fabric.rails,
        interfaces=tuple(interface_name(fabric.name, r, fabric.rails) for r in range(fabric.rails)),
        speed_gbps=fabric.speed_gbps,
        mtu=fabric.mtu,
        vlan=fabric.vlan,
    )


def _pool_plan(pool: NodePool, country: str, names: list[str]) -> PoolPlan:
    hardware = {**pool.hardware.model_dump(), "gpu": _gpu_plan(pool)}
    return PoolPlan(
        name=pool.name,
        role=pool.role,
        count=pool.count,
        datacenter=pool.datacenter,
        country=country,
        platform=_platform_plan(pool),
        hardware=HardwarePlan(**hardware),
        fabrics=tuple(pool.fabrics),
        bmc=PoolBmcPlan(**pool.bmc.model_dump()) if pool.bmc else None,
        hosts=tuple(names),
    )


# The pool's spec sections carry into the plan field for field (a spec field the plan type lacks fails
# here, loudly, rather than dropping out of the plan).
def _platform_plan(pool: NodePool) -> PlatformPlan:
    return PlatformPlan(**pool.platform.model_dump())


def _gpu_plan(pool: NodePool) -> GpuPlan | None:
    gpu = pool.hardware.gpu
    return GpuPlan(**gpu.model_dump()) if gpu else None


def _pool_hosts(
    pool: NodePool,
    names: list[str],
    country: str,
    region: str | None,
    allocators: dict[str, FabricAllocator],
    fabrics: dict[str, Fabric],
    mounts: tuple[Mount, ...],
) -> list[Host]:
    count = pool.count
    per_fabric: list[tuple[Fabric, list[str], list[str], int]] = []
    columns: list[list[Interface]] = []  # one column per (fabric, rail): that interface of every host
    for fabric_name in pool.fabrics:
        fabric = fabrics[fabric_name]
        allocator = allocators[fabric_name]
        rails = fabric.rails
        addresses = allocator.addresses(owner_key("hosts", pool.name), count * rails)
        ifnames = [interface_name(fabric.name, r, rails) for r in range(rails)]
        prefixlen = allocator.network.prefixlen
        per_fabric.append((fabric, addresses, ifnames, prefixlen))
        for r in range(rails):
            fields = zip(
                repeat(fabric.name, count),
                repeat(r, count),
                repeat(ifnames[r], count),
                addresses[r::rails],
                repeat(prefixlen, count),
                strict=True,
            )
            columns.append([_tuple_new(Interface, values) for values in fields])  # 3x Interface(...)
    bmc_addresses = (
        allocators[pool.bmc.fabric].addresses(owner_key("bmc", pool.name), count) if pool.bmc else []
    )
    management = next(f for f in per_fabric if f[0].purpose == "management")
    compute = next((f for f in per_fabric if f[0].purpose == "compute"), None)
    management_addresses = management[1][:: management[0].rails]
    compute_addresses = compute[1][:: compute[0].rails] if compute else management_addresses
    gpus = _gpu_plan(pool)
    platform = _platform_plan(pool)
    nccl = _nccl(management, compute)
    hosts = []
    for k, (name, interfaces) in enumerate(zip(names, zip(*columns, strict=True), strict=True)):
        bmc = (
            BmcEndpoint(
                bmc_addresses[k],
                pool.bmc.fabric,
                pool.bmc.protocol,
                pool.bmc.credentials.replace("{host}", name),
            )
            if pool.bmc
            else None
        )
        hosts.append(
            Host(
                name,
                pool.name,
                pool.role,
                k + 1,
                pool.datacenter,
                country,
                region,
                interfaces,
                management_addresses[k],
                compute_addresses[k],
                bmc,
                gpus,
                pool.hardware.cpus,
                pool.hardware.memory_gib,
                mounts,
                nccl,
                platform,
            )
        )
    return hosts


def _nccl(
    management: tuple[Fabric, list[str], list[str], int],
    compute: tuple[Fabric, list[str], list[str], int] | None,
) -> dict[str, str]:
    """NCCL and Gloo environment, computed once here so roles and stacks only render it."""
    mgmt_if = management[2][0]
    if compute is None:
        return {"NCCL_SOCKET_IFNAME": mgmt_if, "NCCL_IB_DISABLE": "1", "GLOO_SOCKET_IFNAME": mgmt_if}
    fabric, _, ifnames, _ = compute
    hcas = ",".join(f"mlx5_{r}:1" for r in range(fabric.rails))
    if fabric.kind == "infiniband":
        return {
            "NCCL_SOCKET_IFNAME": mgmt_if,
            "NCCL_IB_DISABLE": "0",
            "NCCL_IB_HCA": hcas,
            "GLOO_SOCKET_IFNAME": mgmt_if,
        }
    if fabric.kind == "roce":
        return {
            "NCCL_SOCKET_IFNAME": ifnames[0],
            "NCCL_IB_DISABLE": "0",
            "NCCL_IB_HCA": hcas,
            "NCCL_IB_GID_INDEX": ROCE_GID_INDEX,
            "GLOO_SOCKET_IFNAME": ifnames[0],
        }
    return {"NCCL_SOCKET_IFNAME": ",".join(ifnames), "NCCL_IB_DISABLE": "1", "GLOO_SOCKET_IFNAME": ifnames[0]}


def _mounted_by(spec: SiteSpec, store_mounted_by: list[str] | None) -> list[str]:
    if store_mounted_by is not None:
        return list(store_mounted_by)
    return [p.name for p in spec.node_pools if p.role in MOUNTED_BY_DEFAULT_ROLES]


def _mounts_by_pool(spec: SiteSpec) -> dict[str, tuple[Mount, ...]]:
    out: dict[str, list[Mount]] = {}
    for store in spec.storage:
        if store.kind == "s3" or store.mount_path is None:
            continue
        mount = Mount(
            store.name,
            store.kind,
            store.mount_path,
            store.endpoint or f"storage://{store.name}",
            store.fabric,
        )
        for pool in _mounted_by(spec, store.mounted_by):
            out.setdefault(pool, []).append(mount)
    return {pool: tuple(mounts) for pool, mounts in out.items()}


def _storage(spec: SiteSpec, dcs: dict[str, Any]) -> tuple[StoragePlan, ...]:
    country = {s.name: dcs[s.datacenter].country for s in spec.storage}
    return tuple(
        StoragePlan(
            name=s.name,
            kind=s.kind,
            datacenter=s.datacenter,
            country=country[s.name],
            capacity_tib=s.capacity_tib,
            encrypted_at_rest=s.encrypted_at_rest,
            endpoint=s.endpoint,
            mount_path=s.mount_path,
            mounted_by=() if s.kind == "s3" else tuple(_mounted_by(spec, s.mounted_by)),
            fabric=s.fabric,
            replicas=tuple(s.replicas),
            replica_countries=tuple(country[r] for r in s.replicas),
        )
        for s in spec.storage
    )


def _location(spec: SiteSpec, storage: str, path: str) -> tuple[str | None, str | None]:
    """(host_path, url): a path on hosts that mount the storage, or an s3:// URL on object storage."""
    store = next(s for s in spec.storage if s.name == storage)
    if store.kind == "s3":
        return None, f"s3://{store.name}{path}"
    return (store.mount_path or "").rstrip("/") + path, None


def _datasets(spec: SiteSpec, places: Places) -> tuple[DatasetPlan, ...]:
    return tuple(
        DatasetPlan(
            d.name,
            d.owner,
            d.classification,
            d.residency,
            tuple(places.countries_of(d.residency)),
            d.storage,
            d.path,
            *_location(spec, d.storage, d.path),
        )
        for d in spec.datasets
    )


def _models(spec: SiteSpec, places: Places, dcs: dict[str, Any]) -> tuple[ModelPlan, ...]:
    residency = {d.name: set(places.countries_of(d.residency)) for d in spec.datasets}
    jurisdiction = set(places.countries_of(spec.site.jurisdiction))
    pool_country = {p.name: dcs[p.datacenter].country for p in spec.node_pools}
    out: list[ModelPlan] = []
    for m in spec.models:
        # The intersection of its training data's residencies; with no training data, the jurisdiction.
        allowed = (
            set(jurisdiction)
            if not m.trained_on
            else set.intersection(*(residency[dataset] for dataset in m.trained_on))
        )
        path = f"{MODEL_DIR}/{m.name}"
        out.append(
            ModelPlan(
                m.name,
                m.owner,
                m.classification,
                tuple(m.trained_on),
                tuple(sorted(allowed)),
                m.storage,
                path,
                *_location(spec, m.storage, path),
                tuple(m.serve_on),
                tuple(pool_country[p] for p in m.serve_on),
            )
        )
    return tuple(out)


def _access(spec: SiteSpec, places: Places) -> tuple[AccessGrant, ...]:
    return tuple(
        AccessGrant(
            tenant=g.tenant,
            resource=g.resource,
            kind=g.resource_kind,
            name=g.resource_name,
            actions=tuple(g.actions),
            approved_by=g.approved_by,
            expires=g.expires.isoformat() if g.expires else None,
            to=g.to,
            to_countries=tuple(places.countries_of(g.to)) if g.to else (),
        )
        for g in spec.access
    )
