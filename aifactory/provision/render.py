"""Render fabric and storage artifacts from the plan (its typed sections), with Jinja2.

Pure and deterministic: same plan, keys and facts -> same bytes. Every artifact is read back in its
own format after rendering (partitions.conf grammar, YAML, exports(5)), so a template bug fails here,
not on a switch or a storage server.

Values reach the line-oriented formats (exports, partitions.conf, the comments of the YAML
documents) only as checked tokens: names, addresses, GUIDs and paths in their grammar. A plan that
holds anything else (it cannot, when built from a validated spec) is refused with UnsafeValueError
naming the value, never written with a newline, a space or an option list slipped in. YAML values
go through `tojson`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from aifactory.errors import ProvisionError, UnsafeValueError
from aifactory.plan.model import (
    DatasetPlan,
    FabricPlan,
    Host,
    Interface,
    ModelPlan,
    SitePlan,
    StoragePlan,
)
from aifactory.provision.artifacts import digest_of
from aifactory.provision.partitions import DEFAULT_PKEY, parse_partitions_conf, partition_name

FACTS_SCHEMA = "aifactory.fabric-facts/v1"
CLASSIFICATION_ORDER = ("public", "internal", "confidential", "secret", "top-secret")
ENCRYPT_FROM = "confidential"
DEFAULT_MTU = {"roce": 9000, "infiniband": 4096}
LOSSLESS_QOS = {
    "trust": "dscp",
    "pfc_enabled": True,
    "pfc_priorities": [3],
    "ecn_enabled": True,
    "ecn_mode": "dcqcn",
    "dscp": {"roce": 26, "cnp": 48},
}
LOSSY_QOS = {
    "trust": "none",
    "pfc_enabled": False,
    "pfc_priorities": [],
    "ecn_enabled": False,
    "ecn_mode": None,
    "dscp": {},
}
EXPORT_SECTION = {
    "nfs": "exports",
    "lustre": "filesets",
    "weka": "filesets",
    "ceph": "subvolumes",
    "s3": "buckets",
}


# The tokens the line-oriented artifacts are built from.
PATH_MAX = 4095  # Linux: a longer path cannot be exported
_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_INTERFACE = re.compile(r"[A-Za-z0-9_-]{1,15}")
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT_GUID = re.compile(r"0x[0-9a-f]{1,16}")
# An export path: '/' and components of letters, digits, '_', '-' and single inner dots.
_EXPORT_PATH = re.compile(r"(/[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)+")


def _tokens(what: str, values: Iterable[object], pattern: re.Pattern[str], max_length: int = 255) -> None:
    """Refuse any value outside its token grammar, naming it (escaped, cut short)."""
    for value in values:
        if not isinstance(value, str) or len(value) > max_length or not pattern.fullmatch(value):
            raise UnsafeValueError(
                f"the plan's {what} {str(value)[:60]!r} cannot be written safely in a provisioning artifact",
                hint="re-plan the site from a spec that `aifactory validate` accepts",
            )


@dataclass(frozen=True)
class Artifact:
    name: str
    content: str
    complete: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def digest(self) -> str:
        return digest_of(self.content)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "complete": self.complete,
            "notes": list(self.notes),
        }


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("aifactory.provision", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)


def _hosts_on(plan: SitePlan, fabric: str) -> list[tuple[Host, Interface]]:
    return [(h, i) for h in plan.hosts for i in h.interfaces if i.fabric == fabric]


# -- fabrics ---------------------------------------------------------------------------------------


def render_fabric(
    plan: SitePlan,
    fabric: FabricPlan,
    *,
    pkeys: dict[str, int],
    facts: dict[str, Any] | None = None,
) -> list[Artifact]:
    if fabric.kind == "infiniband":
        return [_partitions(plan, fabric, pkeys, facts or {})]
    return [_ethernet(plan, fabric)]


def _port_guid(facts: dict[str, Any], host: str, interface: str) -> str | None:
    guid = ((facts.get("hosts") or {}).get(host) or {}).get("port_guids", {}).get(interface)
    return str(guid).lower() if guid else None


def _partitions(plan: SitePlan, fabric: FabricPlan, pkeys: dict[str, int], facts: dict[str, Any]) -> Artifact:
    ports = _hosts_on(plan, fabric.name)
    _tokens("site name", [plan.site.name], _NAME)
    _tokens("fabric name", [fabric.name], _NAME)
    _tokens("tenant name", [t.name for t in plan.tenants], _NAME)
    _tokens("host name", [h.name for h, _ in ports], _NAME)
    _tokens("pool name", [h.pool for h, _ in ports], _NAME)
    _tokens("interface name", [i.name for _, i in ports], _INTERFACE)
    # GUIDs come from discovered facts, not from the spec: checked like everything else.
    _tokens(
        "port GUID",
        [g for h, i in ports if (g := _port_guid(facts, h.name, i.name)) is not None],
        _PORT_GUID,
    )
    missing = sorted({f"{h.name}/{i.name}" for h, i in ports if not _port_guid(facts, h.name, i.name)})
    partitions = []
    for tenant in sorted(plan.tenants, key=lambda t: t.name):
        if tenant.name not in pkeys:
            raise ProvisionError(f"tenant {tenant.name} has no partition key", code="pkey-missing")
        members = [
            {"host": h.name, "interface": i.name, "guid": _port_guid(facts, h.name, i.name)}
            for h, i in ports
            if h.pool in tenant.pools
        ]
        pools = sorted({h.pool for h, _ in ports if h.pool in tenant.pools})
        partitions.append(
            {
                "tenant": tenant.name,
                "name": partition_name(tenant.name),
                "pkey": pkeys[tenant.name],
                "pools": pools,
                "ports": sorted((m for m in members if m["guid"]), key=lambda m: (m["host"], m["interface"])),
            }
        )
    text = _render(
        "partitions.conf.j2",
        site=plan.site.name,
        plan_digest=plan.digest(),
        fabric=fabric,
        partitions=partitions,
        missing=missing,
        default_pkey=DEFAULT_PKEY,
    )
    try:
        parse_partitions_conf(text)
    except ValueError as exc:
        raise ProvisionError(
            f"rendered partitions.conf for {fabric.name} does not parse: {exc}", code="artifact-invalid"
        ) from None
    notes = (f"no port GUID for {len(missing)} port(s)",) if missing else ()
    return Artifact(f"{fabric.name}.partitions.conf", text, complete=not missing, notes=notes)


def _ethernet(plan: SitePlan, fabric: FabricPlan) -> Artifact:
    kind = fabric.kind
    _tokens("site name", [plan.site.name], _NAME)
    _tokens("fabric name", [fabric.name], _NAME)
    _tokens("fabric kind", [kind], _NAME)
    lossless = kind == "roce"
    mtu_default = DEFAULT_MTU.get(kind, 9000 if fabric.purpose in ("compute", "storage") else 1500)
    ports = [
        {"host": h.name, "interface": i.name, "rail": i.rail, "address": i.address}
        for h, i in _hosts_on(plan, fabric.name)
    ]
    text = _render(
        "fabric.yaml.j2",
        site=plan.site.name,
        plan_digest=plan.digest(),
        kind=kind,
        fabric=fabric,
        ports=ports,
        vlan=fabric.vlan,
        vlan_source="plan" if fabric.vlan else "untagged",
        mtu=fabric.mtu or mtu_default,
        mtu_source="plan" if fabric.mtu else "default",
        qos=LOSSLESS_QOS if lossless else LOSSY_QOS,
    )
    _check_yaml(text, f"fabric {fabric.name}")
    return Artifact(f"{fabric.name}.fabric.yaml", text)


def _check_yaml(text: str, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProvisionError(
            f"rendered document for {what} is not YAML: {exc}", code="artifact-invalid"
        ) from None
    if not isinstance(data, dict):
        raise ProvisionError(f"rendered document for {what} is not a mapping", code="artifact-invalid")
    return data


# -- storage ---------------------------------------------------------------------------------------


def _rank(level: str) -> int:
    return CLASSIFICATION_ORDER.index(level) if level in CLASSIFICATION_ORDER else len(CLASSIFICATION_ORDER)


def _clients(plan: SitePlan, storage: StoragePlan, kind: str, item: DatasetPlan | ModelPlan) -> list[str]:
    """Pools allowed to mount an item: pools mounting the storage that the owner or a grantee
    (read/train/infer) may use."""
    tenants = {item.owner} | {a.tenant for a in plan.access if a.kind == kind and a.name == item.name}
    pools = {p for t in plan.tenants if t.name in tenants for p in t.pools}
    return sorted(pools & set(storage.mounted_by))


def _addresses(plan: SitePlan, storage: StoragePlan, pools: list[str]) -> list[str]:
    addresses = []
    for host in plan.hosts:
        if host.pool not in pools:
            continue
        on_fabric = [i.address for i in host.interfaces if i.fabric == storage.fabric]
        addresses.append(on_fabric[0] if on_fabric else host.management_address)
    return addresses


def _export_root(storage: StoragePlan) -> str:
    """The server-side root: the path in an NFS endpoint `server:/path`, else the mount path."""
    endpoint = storage.endpoint or ""
    if storage.kind == "nfs" and ":" in endpoint:
        return endpoint.split(":", 1)[1]
    return str(storage.mount_path or "/")


def _check_storage_tokens(plan: SitePlan, storage: StoragePlan, entries: list[dict[str, Any]]) -> None:
    """What the exports lines and the comment headers carry: names, classifications, paths, addresses."""
    _tokens("site name", [plan.site.name], _NAME)
    _tokens("storage name", [storage.name], _NAME)
    _tokens("storage kind", [storage.kind], _NAME)
    _tokens("dataset or model name", [e["name"] for e in entries], _NAME)
    _tokens("owner", [e["owner"] for e in entries], _NAME)
    _tokens("classification", [e["classification"] for e in entries], _NAME)
    # exports(5) splits on spaces and reads `host(options)`: a path is a path and nothing else.
    _tokens("export path", [e["export_path"] for e in entries], _EXPORT_PATH, max_length=PATH_MAX)
    _tokens("client address", [a for e in entries for a in e["client_addresses"]], _ADDRESS)


def _entry(plan: SitePlan, storage: StoragePlan, kind: str, item: DatasetPlan | ModelPlan) -> dict[str, Any]:
    """One dataset's or model's line of the storage document: where it lives, who may mount it."""
    pools = _clients(plan, storage, kind, item)
    return {
        "kind": kind,
        "name": item.name,
        "owner": item.owner,
        "classification": item.classification,
        "path": item.path,
        "host_path": item.host_path,
        "export_path": _export_root(storage).rstrip("/") + item.path,
        "residency_countries": list(item.residency_countries),
        "encryption_required": _rank(item.classification) >= _rank(ENCRYPT_FROM),
        "encrypted": bool(storage.encrypted_at_rest),
        "client_pools": pools,
        "client_addresses": _addresses(plan, storage, pools),
    }


def _entries(plan: SitePlan, storage: StoragePlan) -> list[dict[str, Any]]:
    """The storage document's entries: its datasets, then its models, each by name."""
    items: list[tuple[str, DatasetPlan | ModelPlan]] = [
        ("dataset", d) for d in plan.datasets if d.storage == storage.name
    ]
    items += [("model", m) for m in plan.models if m.storage == storage.name]
    return [
        _entry(plan, storage, kind, item) for kind, item in sorted(items, key=lambda i: (i[0], i[1].name))
    ]


def render_storage(plan: SitePlan, storage: StoragePlan) -> list[Artifact]:
    entries = _entries(plan, storage)
    _check_storage_tokens(plan, storage, entries)
    by_name = {s.name: s for s in plan.storage}
    replicas = [
        {
            "storage": r,
            "kind": by_name[r].kind,
            "country": by_name[r].country,
            "encrypted_at_rest": by_name[r].encrypted_at_rest,
        }
        for r in storage.replicas
    ]
    replica_of = sorted(s.name for s in plan.storage if storage.name in s.replicas)
    unencrypted = [e["name"] for e in entries if e["encryption_required"] and not e["encrypted"]]
    document = {
        "schema": "aifactory.storage/v1",
        "site": plan.site.name,
        "storage": storage.name,
        "kind": storage.kind,
        "datacenter": storage.datacenter,
        "country": storage.country,
        "capacity_tib": storage.capacity_tib,
        "encrypted_at_rest": storage.encrypted_at_rest,
        "endpoint": storage.endpoint,
        "mount_path": storage.mount_path,
        "fabric": storage.fabric,
        "replicas": replicas,
        "replica_of": replica_of,
        "section": EXPORT_SECTION[storage.kind],
        "entries": entries,
        "unencrypted_sensitive": unencrypted,
    }
    digest = plan.digest()
    text = _render("storage.yaml.j2", doc=document, plan_digest=digest)
    _check_yaml(text, f"storage {storage.name}")
    artifacts = [
        Artifact(
            f"{storage.name}.storage.yaml",
            text,
            notes=tuple(f"{n} needs encryption at rest" for n in unencrypted),
        )
    ]
    if storage.kind == "nfs":
        exports = _render("exports.j2", doc=document, plan_digest=digest)
        artifacts.append(Artifact(f"{storage.name}.exports", exports))
    return artifacts
