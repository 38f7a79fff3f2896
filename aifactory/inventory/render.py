"""Plan (+ provisioning outputs, + bundle location) -> Ansible inventory -> a folder of YAML files.

The folder `ansible-inventory -i DIR` reads:

    DIR/hosts.yml            groups: pool_*, role_*, dc_*, fabric_*, tenant_* (tenants hold their pools)
    DIR/group_vars/all.yml   the site: jurisdiction, air gap, plan digest, bundle location, ...
    DIR/host_vars/<h>.yml    one host: addresses, mounts, GPUs, NCCL environment, ...
    DIR/.data/site.json      site values held beside the inventory: the storage systems, the prices
    DIR/.data/hosts/<h>.json one host's values held beside the inventory: its fabric rails

Ansible resolves every host's variables for `ansible-inventory --list` and for each play, copying
what group_vars/all holds into every host. So data as large as the site is not put there: the Slurm
topology (every compute node: 244 KB at 1,271 hosts) is written once, in the host vars of the host it
belongs to (the Slurm controller), and every host is told where it is (`aifactory_slurm_host`); the
roles read it through `hostvars`. And the bulkiest values, the site's storage systems (a copy in
every host), its prices (economics: a cost per second for every host, 66 KB at 1,271 hosts, which
only the monitoring host reads) and each host's fabric rails (eight fields per rail, ten rails on a
GPU host), are held
beside the inventory as JSON under `.data/` (a hidden folder: Ansible never parses it as an inventory
source); group_vars/all defines each as a `lookup('ansible.builtin.file', ...) | from_json` of its file,
templated on the controller only where a role uses it. A lookup's result is never trusted as a
template, so these plan strings stay data as `!unsafe` ones do. At 1,271 hosts `ansible-inventory
--list` took 132 CPU seconds and 4.2 GB with the topology in group_vars/all, 11 s and 319 MiB with
the storage and the rails inline, and now 5-7 s and 155 MiB (benchmarks/inventory_bench.py measures
the layouts side by side; docs/deploy.md).

Everything is rendered from a `SitePlan` (the bundle's signed plan.json read back, or a fresh plan),
so the same plan gives the same bytes.

Every string value taken from the plan (or the bundle, or provisioning) is written with Ansible's
`!unsafe` tag, so that Jinja never evaluates it, whatever the spec said: `{{ lookup('pipe', ...) }}`
in a GPU model stays those characters. Names that become host names, group names or mapping keys
cannot carry the tag; they are checked against their grammar instead, and a plan that breaks it is
refused (the spec's validation makes that impossible for a plan built by `aifactory plan`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from aifactory.errors import Location, StateError, UnsafeValueError, UsageError
from aifactory.inventory.model import Group, Inventory, group_name
from aifactory.plan.model import FrontDoorPlan, Host, SitePlan, section_dict
from aifactory.plan.serving import serving_digests
from aifactory.scheduler.topology import slurm_topology
from aifactory.spec.model import (
    DEFAULT_EVALUATION_INTERVAL_SECONDS,
    DEFAULT_METRICS_RETENTION_DAYS,
    DEFAULT_SCRAPE_INTERVAL_SECONDS,
)
from aifactory.telemetry.economics import price_settings

MARKER = ".aifactory-inventory"
UNSAFE_TAG = "!unsafe"
# Host names (<site>-<pool>-<nnn>) and the names groups are made of.
HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
# Keys of the mappings in host and group variables (fabric names, NCCL_* variables, output fields).
VAR_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")


class Unsafe(str):
    """A string from the plan: written as `!unsafe`, so Ansible passes it on and never templates it."""

    __slots__ = ()


def _unsafe(value: Any, where: str) -> Any:
    """A copy of a value with every string tagged Unsafe; mapping keys checked against VAR_KEY."""
    if isinstance(value, str):
        return Unsafe(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not VAR_KEY.fullmatch(key):
                raise UnsafeValueError(
                    f"{where}: the key {str(key)[:60]!r} cannot be written to an Ansible inventory",
                    hint="keys are letters, digits, '_', '.', '-'; re-plan the site from a valid spec",
                )
            out[key] = _unsafe(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_unsafe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _name(value: Any, what: str, pattern: re.Pattern[str] = HOST_NAME) -> str:
    """A plan name that becomes part of the inventory's structure, checked."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UnsafeValueError(
            f"the plan's {what} {str(value)[:60]!r} cannot be an Ansible host or group name",
            hint="names are lowercase letters, digits and '-'; re-plan the site from a valid spec",
        )
    return value


class _InventoryDumper(yaml.SafeDumper):
    """safe_dump, plus `!unsafe` for Unsafe strings."""


def _represent_unsafe(dumper: yaml.SafeDumper, value: Unsafe) -> yaml.ScalarNode:
    return dumper.represent_scalar(UNSAFE_TAG, str(value))


_InventoryDumper.add_representer(Unsafe, _represent_unsafe)


class _InventoryLoader(yaml.SafeLoader):
    """safe_load for the files aifactory rendered: `!unsafe` strings read back as plain strings."""


def _construct_unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!unsafe on a non-scalar", node.start_mark)
    return str(loader.construct_scalar(node))


_InventoryLoader.add_constructor(UNSAFE_TAG, _construct_unsafe)


def load_inventory_yaml(text: str) -> Any:
    """The data of an inventory file aifactory rendered (its `!unsafe` tags read as plain strings)."""
    return yaml.load(text, Loader=_InventoryLoader)  # noqa: S506 - a SafeLoader subclass


# The Slurm topology's variable (in the controller's host vars) and the group var naming that host.
SLURM_VAR = "aifactory_slurm"
SLURM_HOST_VAR = "aifactory_slurm_host"

# The front door's backends (every serving host: the front_door role's HAProxy servers) in the host
# vars of the front door's host only, and on each backend the flag that opens its listener.
FRONT_DOOR_BACKENDS_VAR = "aifactory_front_door_backends"
BEHIND_FRONT_DOOR_VAR = "aifactory_behind_front_door"

# Values held beside the inventory (module docstring): the folder (hidden, so never an inventory
# source), the site's file and each host's, and the variables each holds.
DATA_DIR = ".data"
SITE_DATA_FILE = f"{DATA_DIR}/site.json"
HOST_DATA_DIR = f"{DATA_DIR}/hosts"
SITE_DATA_VARS = ("aifactory_storage", "aifactory_economics")
HOST_DATA_VARS = ("aifactory_fabric_addresses",)

HEADER = "# Rendered by `aifactory inventory` from the site's plan; do not edit (re-render instead).\n"


def plan_digest(plan: Mapping[str, Any]) -> str:
    """The digest SitePlan.digest() gives, for a plan in its JSON form."""
    text = json.dumps(plan, indent=1, ensure_ascii=False) + "\n"
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def build_inventory(
    plan: SitePlan,
    *,
    bundle: Mapping[str, Any] | None = None,
    provisioned: Mapping[str, Any] | None = None,
    site_vars: Mapping[str, Any] | None = None,
) -> Inventory:
    """The inventory of a plan. `provisioned`: per-host outputs of provisioning (BMC state, identity);
    `site_vars`: extra group vars for every host (the site's Connection: its service manager...)."""
    by_host = _provisioned_by_host(provisioned)
    serving = serving_digests(plan)
    host_vars = {
        _name(h.name, "host name"): _unsafe(
            _host_vars(h, plan, by_host.get(h.name), serving), f"host_vars.{h.name}"
        )
        for h in plan.hosts
    }
    slurm = slurm_topology(plan)
    if slurm is not None:
        controller = _name(slurm["controller"]["name"], "Slurm controller")
        host_vars[controller][SLURM_VAR] = _unsafe(slurm, f"host_vars.{controller}.{SLURM_VAR}")
    if plan.front_door is not None:
        _place_front_door_backends(plan.front_door, host_vars)
    host_data = {host: _take(values, HOST_DATA_VARS) for host, values in host_vars.items()}
    group_vars = _site_vars(plan, bundle, site_vars)
    site_data = _take(group_vars, SITE_DATA_VARS)
    group_vars.update(_data_lookups(site_data))
    return Inventory(
        site=_name(plan.name, "site name"),
        groups=_groups(plan),
        host_vars=host_vars,
        group_vars=group_vars,
        host_data=host_data,
        site_data=site_data,
    )


def _place_front_door_backends(front_door: FrontDoorPlan, host_vars: dict[str, dict[str, Any]]) -> None:
    """The backends as the front door's host wants them, and each backend's flag: a list as long as
    the serving hosts is never copied into every host (group_vars/all keeps the door's address and
    ports, which every backend needs)."""
    door = _name(front_door.host, "front door host")
    backends = [section_dict(b) for b in front_door.backends]
    host_vars[door][FRONT_DOOR_BACKENDS_VAR] = _unsafe(
        backends, f"host_vars.{door}.{FRONT_DOOR_BACKENDS_VAR}"
    )
    for backend in front_door.backends:
        host_vars[_name(backend.name, "front door backend")][BEHIND_FRONT_DOOR_VAR] = True


def _take(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The named variables, removed from `values`."""
    return {name: values.pop(name) for name in names if name in values}


def _data_lookups(site_data: Mapping[str, Any]) -> dict[str, str]:
    """group_vars/all's definition of each variable held beside the inventory: its file read on the
    controller (`inventory_dir` is this folder; host names are checked, so the path stays in it).
    Only the site variables the plan has: a site without economics defines no `aifactory_economics`,
    so the roles' `default(...)` still sees it undefined.
    aifactory's own templates, built from constants: written plain, so that Ansible templates them."""
    site = f"lookup('ansible.builtin.file', inventory_dir ~ '/{SITE_DATA_FILE}') | from_json"
    host = (
        f"lookup('ansible.builtin.file', inventory_dir ~ '/{HOST_DATA_DIR}/' ~ inventory_hostname ~ '.json')"
        " | from_json"
    )
    return {
        **{name: f"{{{{ ({site})[{name!r}] }}}}" for name in SITE_DATA_VARS if name in site_data},
        **{name: f"{{{{ ({host})[{name!r}] }}}}" for name in HOST_DATA_VARS},
    }


def _groups(plan: SitePlan) -> dict[str, Group]:
    groups: dict[str, Group] = {}

    def add(kind: str, name: str, host: str | None = None, child: str | None = None) -> None:
        _name(name, f"{kind} name")
        group = groups.setdefault(group_name(kind, name), Group(group_name(kind, name)))
        if host and host not in group.hosts:
            group.hosts.append(host)
        if child and child not in group.children:
            group.children.append(child)

    for host in plan.hosts:
        add("pool", host.pool, host=host.name)
        add("role", host.role, host=host.name)
        add("dc", host.datacenter, host=host.name)
        for interface in host.interfaces:
            add("fabric", interface.fabric, host=host.name)
    for tenant in plan.tenants:
        _name(tenant.name, "tenant name")
        groups.setdefault(group_name("tenant", tenant.name), Group(group_name("tenant", tenant.name)))
        for pool in tenant.pools:
            add("tenant", tenant.name, child=group_name("pool", pool))
    return groups


def _host_vars(
    host: Host, plan: SitePlan, provisioned: Mapping[str, Any] | None, serving: Mapping[str, str]
) -> dict[str, Any]:
    fabrics = {f.name: f for f in plan.fabrics}
    addresses: dict[str, list[dict[str, Any]]] = {}
    for interface in host.interfaces:
        fabric = fabrics[interface.fabric]
        addresses.setdefault(interface.fabric, []).append(
            {
                "rail": interface.rail,
                "interface": interface.name,
                "address": interface.address,
                "prefixlen": interface.prefixlen,
                "kind": fabric.kind,
                "purpose": fabric.purpose,
                "mtu": fabric.mtu,
                "vlan": fabric.vlan,
            }
        )
    gpus = host.gpus
    tenants = [t.name for t in plan.tenants if host.pool in t.pools]
    bmc = host.bmc
    values: dict[str, Any] = {
        "ansible_host": (provisioned or {}).get("management_address") or host.management_address,
        "aifactory_host": host.name,
        "aifactory_pool": host.pool,
        "aifactory_role": host.role,
        "aifactory_datacenter": host.datacenter,
        "aifactory_country": host.country,
        "aifactory_region": host.region,
        "aifactory_management_address": host.management_address,
        "aifactory_compute_address": host.compute_address,
        "aifactory_fabric_addresses": addresses,
        "aifactory_mounts": [m.to_dict() for m in host.mounts],
        "aifactory_gpus": section_dict(gpus) if gpus else None,
        "aifactory_gpu_count": gpus.count if gpus else 0,
        "aifactory_nccl_env": dict(host.nccl),
        "aifactory_cpus": host.cpus,
        "aifactory_memory_gib": host.memory_gib,
        "aifactory_platform": section_dict(host.platform),
        "aifactory_tenants": tenants,
        # What the host's inference server takes from the plan (aifactory.plan.serving): the runtime
        # role restarts it when this changes, not when only other hosts or counts do (a resize).
        "aifactory_serving_digest": serving[host.name],
        # Where the BMC is; its credentials stay a secret:// reference resolved only by provisioning.
        "aifactory_bmc": {"address": bmc.address, "fabric": bmc.fabric, "protocol": bmc.protocol}
        if bmc
        else None,
    }
    if provisioned is not None:
        values["aifactory_provisioned"] = dict(provisioned)
    return values


def _site_vars(
    plan: SitePlan, bundle: Mapping[str, Any] | None, site_vars: Mapping[str, Any] | None
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "aifactory_site": plan.name,
        "aifactory_jurisdiction": plan.site.jurisdiction,
        "aifactory_jurisdiction_countries": list(plan.site.jurisdiction_countries),
        "aifactory_air_gapped": plan.site.air_gapped,
        "aifactory_plan_digest": plan.digest(),
        "aifactory_spec_digest": plan.spec_digest,
        "aifactory_control_host": plan.control_host,
        "aifactory_storage": [section_dict(s) for s in plan.storage],
        "aifactory_egress_allow": [section_dict(e) for e in plan.egress.allow],
        "aifactory_bundle": dict(bundle) if bundle else None,
        # The host whose variables hold the plan's Slurm cluster (controller, nodes, partitions,
        # accounts) as `aifactory_slurm`, or None: no Slurm (the scheduler play skips the site).
        SLURM_HOST_VAR: plan.control_host if slurm_topology(plan) is not None else None,
        # Where Prometheus runs and its intervals (the spec's monitoring section, else the defaults on
        # the control host), or None: the monitoring play (docs/telemetry.md).
        "aifactory_monitoring": monitoring_settings(plan),
        # The site's security contact (the spec's contacts.security), or None: root's mail alias on
        # every host (the base role) and the host scans' tailored value (docs/audit.md).
        "aifactory_security_contact": plan.contacts.security if plan.contacts else None,
        # Defaults of a site whose Connection says nothing else: hosts run systemd, have a kernel of
        # their own and get their packages from the bundle (site_vars, from the site's Connection,
        # replace these; docs/architecture.md).
        "aifactory_kernel_shared": False,
        "aifactory_packages_preinstalled": False,
        "aifactory_service_manager": "systemd",
    }
    # The plan's prices as the monitoring role's price rules want them (docs/economics.md); only on
    # a site with an economics section, so other sites' inventories keep their bytes.
    prices = price_settings(plan)
    if prices is not None:
        values["aifactory_economics"] = prices
    # The front door (host, its address, ports): the front_door role on that host, and each backend's
    # runtime opens its front door port (docs/runtime.md, "Front door"). Likewise only on a site that
    # has one. Its backends go to the front door's host alone (_place_front_door_backends).
    if plan.front_door is not None:
        door = section_dict(plan.front_door)
        del door["backends"]
        values["aifactory_front_door"] = door
    # The loop's timers (the loop_timer role on the control host, docs/loop.md "The timer"): per model,
    # the calendar it looks on. Likewise only on a site with a loop section.
    if plan.loop:
        values["aifactory_loop"] = [
            {"model": entry.model, "on_calendar": entry.trigger.on_calendar} for entry in plan.loop
        ]
    # What came from the plan, the bundle or provisioning is never templated; the site's own
    # variables (the lab's connection settings, the trust folder) are aifactory's, and stay plain.
    values = _unsafe(values, "group_vars")
    # Except the imported bundle's description, which aifactory wrote, not the spec: Ansible 2.19
    # turns an `!unsafe` string that looks like a number into one when a template passes it on,
    # and the bundle version (20261201.221214) must stay text.
    values.update(aifactory_bundle=dict(bundle) if bundle else None)
    values.update(site_vars or {})
    return values


def monitoring_settings(plan: SitePlan) -> dict[str, Any] | None:
    """The plan's monitoring section, or the defaults on the control host; None without either."""
    if plan.monitoring is not None:
        return section_dict(plan.monitoring)
    if plan.control_host is None:
        return None
    return {
        "host": plan.control_host,
        "retention_days": DEFAULT_METRICS_RETENTION_DAYS,
        "scrape_interval_seconds": DEFAULT_SCRAPE_INTERVAL_SECONDS,
        "evaluation_interval_seconds": DEFAULT_EVALUATION_INTERVAL_SECONDS,
    }


def _provisioned_by_host(outputs: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Provisioning outputs hold `hosts` as a mapping by name or a list of objects with `name`."""
    if not outputs:
        return {}
    hosts = outputs.get("hosts", {})
    if isinstance(hosts, Mapping):
        return {str(name): value for name, value in hosts.items() if isinstance(value, Mapping)}
    if isinstance(hosts, list):
        return {str(h["name"]): h for h in hosts if isinstance(h, Mapping) and "name" in h}
    return {}


def read_provision_outputs(path: Path) -> dict[str, Any] | None:
    """The provisioning stage's outputs file, or None where provisioning has not run."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(
            f"cannot read the provisioning outputs: {exc}",
            location=Location(file=str(path)),
            hint="re-run `aifactory provision`, or remove the file to render from the plan alone",
        ) from None
    if not isinstance(data, dict):
        raise StateError("the provisioning outputs are not a JSON object", location=Location(file=str(path)))
    return data


def _dump(data: Any) -> str:
    return HEADER + yaml.dump(
        data, Dumper=_InventoryDumper, sort_keys=True, default_flow_style=False, allow_unicode=True
    )


def _dump_json(data: Any) -> str:
    """A file under .data/: JSON, which carries no tag; what reads it (a lookup) is never templated."""
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def render_files(inventory: Inventory) -> dict[str, str]:
    """Relative path -> text of every file of the inventory folder."""
    files = {
        MARKER: f"site: {inventory.site}\n",
        "hosts.yml": _dump(inventory.as_dict()),
        "group_vars/all.yml": _dump(inventory.group_vars),
    }
    for host, values in inventory.host_vars.items():
        files[f"host_vars/{host}.yml"] = _dump(values)
    if inventory.site_data:
        files[SITE_DATA_FILE] = _dump_json(inventory.site_data)
    for host, values in inventory.host_data.items():
        if values:
            files[f"{HOST_DATA_DIR}/{host}.json"] = _dump_json(values)
    return files


def write_inventory(inventory: Inventory, directory: Path) -> list[Path]:
    """Write (or replace) an inventory folder. Refuses a non-empty folder aifactory did not write."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).is_file():
        raise UsageError(
            f"{directory} is not empty and holds no inventory aifactory rendered",
            hint="pick an empty or new folder",
        )
    files = render_files(inventory)
    for pattern in ("host_vars/*.yml", f"{HOST_DATA_DIR}/*.json", SITE_DATA_FILE):
        for stale in sorted(directory.glob(pattern)) if directory.exists() else []:
            if stale.relative_to(directory).as_posix() not in files:
                stale.unlink()
    written = []
    for relative, text in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.read_text() == text:
            written.append(target)
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
        written.append(target)
    return written
