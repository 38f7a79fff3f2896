"""SitePlan: everything concrete that the spec implies, and the one input of every later stage.

Hosts with names and addresses, BMCs, mounts, data and model locations, tenants' pools, NCCL
settings and the countries of everything. Serialized by `to_dict()` in a fixed key order, so the same
spec (and allocation lock) always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

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
    gpus: dict[str, Any] | None
    cpus: int | None
    memory_gib: int | None
    mounts: tuple[Mount, ...]
    nccl: dict[str, str]
    platform: dict[str, str]

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
            "gpus": self.gpus,
            "cpus": self.cpus,
            "memory_gib": self.memory_gib,
            "mounts": [m.to_dict() for m in self.mounts],
            "nccl": self.nccl,
            "platform": self.platform,
        }


@dataclass(frozen=True)
class SitePlan:
    """The plan. Sections other than hosts are small and kept as plain, ordered data."""

    site: dict[str, Any]
    spec_digest: str
    datacenters: list[dict[str, Any]]
    fabrics: list[dict[str, Any]]
    pools: list[dict[str, Any]]
    hosts: tuple[Host, ...]
    storage: list[dict[str, Any]]
    tenants: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    models: list[dict[str, Any]]
    access: list[dict[str, Any]]
    egress: dict[str, Any]
    control_host: str | None
    allocation: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.site["name"])

    @cached_property
    def _hosts_by_name(self) -> dict[str, Host]:
        return {host.name: host for host in self.hosts}

    def host(self, name: str) -> Host:
        """The host of that name (KeyError if none); constant time, for loops over 10,000s."""
        return self._hosts_by_name[name]

    def hosts_in_pool(self, pool: str) -> list[Host]:
        return [h for h in self.hosts if h.pool == pool]

    def fabric(self, name: str) -> dict[str, Any]:
        return next(f for f in self.fabrics if f["name"] == name)

    def summary(self) -> dict[str, int]:
        return {
            "hosts": len(self.hosts),
            "addresses": sum(len(h.interfaces) + (1 if h.bmc else 0) for h in self.hosts),
            "gpus": sum(int(h.gpus["count"]) for h in self.hosts if h.gpus),
            "bmcs": sum(1 for h in self.hosts if h.bmc),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "site": self.site,
            "spec_digest": self.spec_digest,
            "summary": self.summary(),
            "control_host": self.control_host,
            "datacenters": self.datacenters,
            "fabrics": self.fabrics,
            "pools": self.pools,
            "hosts": [h.to_dict() for h in self.hosts],
            "storage": self.storage,
            "tenants": self.tenants,
            "datasets": self.datasets,
            "models": self.models,
            "access": self.access,
            "egress": self.egress,
            "allocation": self.allocation,
        }

    def to_json(self) -> str:
        """The canonical serialized plan (what `aifactory plan -o` writes)."""
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()
