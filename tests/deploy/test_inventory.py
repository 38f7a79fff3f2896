"""`aifactory inventory`: the plan rendered as an Ansible inventory that ansible-inventory reads."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifactory.cli.main import main
from aifactory.errors import UsageError
from aifactory.inventory import build_inventory, plan_digest, render_files, write_inventory
from aifactory.inventory.render import load_inventory_yaml
from aifactory.plan import SitePlan, plan_site

FIXTURES = Path(__file__).parent / "fixtures"
GPU_SITE = FIXTURES / "gpu-site.yaml"
ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")


@pytest.fixture(scope="module")
def gpu_plan() -> SitePlan:
    return plan_site(GPU_SITE, write_lock=False).plan


def ansible_inventory(directory: Path, *args: str) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "ANSIBLE_HOME": str(directory.parent / "ah"),
        "ANSIBLE_LOCAL_TEMP": str(directory.parent / "ah-tmp"),
    }
    done = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(directory), *args], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return done.stdout


def test_groups_per_pool_role_datacenter_fabric_and_tenant(gpu_plan: SitePlan) -> None:
    inventory = build_inventory(gpu_plan)
    assert inventory.group_hosts("pool_h100") == ["gputest-h100-001", "gputest-h100-002"]
    assert inventory.group_hosts("pool_cpu_lagos") == ["gputest-cpu-lagos-001"]
    assert inventory.group_hosts("role_gpu") == ["gputest-h100-001", "gputest-h100-002"]
    assert inventory.group_hosts("dc_lagos") == ["gputest-cpu-lagos-001"]
    assert inventory.group_hosts("fabric_ib") == ["gputest-h100-001", "gputest-h100-002"]
    assert inventory.group_hosts("fabric_stor") == [
        "gputest-h100-001",
        "gputest-h100-002",
        "gputest-cpu-lagos-001",
    ]
    # research may run on h100 only; health on every pool (the plan's default)
    assert inventory.groups["tenant_research"].children == ["pool_h100"]
    assert inventory.group_hosts("tenant_health") == [h.name for h in gpu_plan.hosts]


def test_host_vars_carry_rails_mounts_gpus_and_nccl(gpu_plan: SitePlan) -> None:
    inventory = build_inventory(gpu_plan)
    values = inventory.host_vars["gputest-h100-002"]
    host = gpu_plan.host("gputest-h100-002")
    assert values["ansible_host"] == host.management_address
    # the rails are held beside the inventory (.data/hosts/<host>.json), not in its host vars
    assert "aifactory_fabric_addresses" not in values
    fabrics = inventory.host_data["gputest-h100-002"]["aifactory_fabric_addresses"]
    rails = fabrics["ib"]
    assert [r["rail"] for r in rails] == [0, 1, 2, 3]
    assert [r["interface"] for r in rails] == ["ib0", "ib1", "ib2", "ib3"]
    assert [r["address"] for r in rails] == [i.address for i in host.interfaces if i.fabric == "ib"]
    assert fabrics["stor"][0]["mtu"] == 9000
    assert values["aifactory_mounts"] == [
        {"storage": "lake", "kind": "nfs", "path": "/lake", "source": "10.30.0.250:/lake", "fabric": "stor"}
    ]
    assert values["aifactory_gpu_count"] == 8
    assert values["aifactory_gpus"]["model"] == "H100-SXM5-80GB"
    assert values["aifactory_nccl_env"] == host.nccl
    assert values["aifactory_nccl_env"]["NCCL_IB_HCA"].count("mlx5_") == 4
    assert values["aifactory_tenants"] == ["health", "research"]
    # a CPU host has no GPUs: the gpu role is skipped there by this fact
    assert build_inventory(gpu_plan).host_vars["gputest-cpu-lagos-001"]["aifactory_gpu_count"] == 0


def test_group_vars_have_jurisdiction_plan_digest_and_bundle(gpu_plan: SitePlan) -> None:
    bundle = {"version": "20261122.1", "digest": "sha256:" + "a" * 64, "root": "/var/lib/aifactory/bundles/x"}
    values = build_inventory(gpu_plan, bundle=bundle).group_vars
    assert values["aifactory_jurisdiction"] == "NG"
    assert values["aifactory_jurisdiction_countries"] == ["NG"]
    assert values["aifactory_air_gapped"] is True
    assert values["aifactory_plan_digest"] == plan_site(GPU_SITE, write_lock=False).plan.digest()
    assert values["aifactory_bundle"] == bundle


def test_provisioning_outputs_are_merged_per_host(gpu_plan: SitePlan) -> None:
    outputs = {"hosts": {"gputest-h100-001": {"bmc_state": "On", "serial": "SN-1", "boot_source": "Pxe"}}}
    values = build_inventory(gpu_plan, provisioned=outputs).host_vars
    assert values["gputest-h100-001"]["aifactory_provisioned"]["serial"] == "SN-1"
    assert "aifactory_provisioned" not in values["gputest-h100-002"]


def test_same_plan_gives_the_same_bytes(gpu_plan: SitePlan) -> None:
    again = plan_site(GPU_SITE, write_lock=False).plan
    assert render_files(build_inventory(gpu_plan)) == render_files(build_inventory(again))
    as_json = json.loads(gpu_plan.to_json())
    assert plan_digest(as_json) == gpu_plan.digest()
    assert render_files(build_inventory(SitePlan.from_dict(as_json))) == render_files(
        build_inventory(gpu_plan)
    )


def test_ansible_inventory_reads_the_folder(gpu_plan: SitePlan, tmp_path: Path) -> None:
    folder = tmp_path / "inv"
    write_inventory(build_inventory(gpu_plan), folder)
    graph = ansible_inventory(folder, "--graph")
    assert "@tenant_research:" in graph and "@pool_h100:" in graph and "gputest-h100-002" in graph
    host = json.loads(ansible_inventory(folder, "--host", "gputest-h100-001"))
    assert host["aifactory_site"] == "gputest"  # group_vars/all.yml
    assert host["aifactory_gpu_count"] == 8  # host_vars/
    # held beside: ansible-inventory shows the lookup, a play its value (test below)
    assert host["aifactory_fabric_addresses"].startswith("{{ (lookup('ansible.builtin.file'")
    rails = json.loads((folder / ".data" / "hosts" / "gputest-h100-001.json").read_text())
    assert rails["aifactory_fabric_addresses"]["ib"][3]["interface"] == "ib3"
    listed = json.loads(ansible_inventory(folder, "--list"))
    assert sorted(listed["_meta"]["hostvars"]) == sorted(h.name for h in gpu_plan.hosts)


ROLES = Path(__file__).resolve().parents[2] / "playbooks" / "roles"

# What the roles make of the values held beside the inventory, on every host: the fabric role's map
# and its networkd unit per rail (its own defaults and template), the base role's chrony allow line,
# the site's storage systems, and another host's rails read through hostvars.
SEE_HELD_BESIDE = """
- name: What the roles see
  hosts: all
  gather_facts: false
  vars_files:
    - {roles}/fabric/defaults/main.yml
  vars:
    peer: "{{{{ groups['all'] | reject('equalto', inventory_hostname) | first }}}}"
  tasks:
    - name: The fabric role's map, the storage systems, a peer's rails, the chrony allow prefix
      ansible.builtin.copy:
        content: "{{{{ item.value }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.{{{{ item.name }}}}"
        mode: "0644"
      loop:
        - {{name: fabric.json, value: "{{{{ fabric_addresses | to_nice_json(sort_keys=true) }}}}\n"}}
        - {{name: storage.json, value: "{{{{ aifactory_storage | to_nice_json(sort_keys=true) }}}}"}}
        - {{name: peer.json, value: "{{{{ hostvars[peer].aifactory_fabric_addresses | to_json }}}}"}}
        - {{name: prefix, value: "{{{{ (aifactory_fabric_addresses.values() | first | first).prefixlen }}}}"}}
      loop_control:
        label: "{{{{ item.name }}}}"
    - name: The fabric role's networkd unit per rail
      ansible.builtin.template:
        src: {roles}/fabric/templates/rail.network.j2
        dest: "{out}/{{{{ inventory_hostname }}}}.{{{{ item.interface }}}}.network"
        mode: "0644"
      loop: "{{{{ fabric_addresses.values() | flatten }}}}"
      loop_control:
        label: "{{{{ item.interface }}}}"
"""


def _what_the_roles_see(inventory: Path, out: Path, play: str = SEE_HELD_BESIDE) -> dict[str, str]:
    out.mkdir(parents=True)
    playbook = out.parent / f"{out.name}.yml"
    playbook.write_text(play.format(roles=ROLES, out=out))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "ANSIBLE_HOME": str(out.parent / "ah"),
        "ANSIBLE_LOCAL_TEMP": str(out.parent / "ah-tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            "-c",
            "local",
            str(playbook),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {p.name: p.read_text() for p in sorted(out.iterdir())}


def test_roles_see_the_values_held_beside_the_inventory_as_they_saw_them_inline(
    gpu_plan: SitePlan, tmp_path: Path
) -> None:
    """The rails and the storage systems moved out of the inventory's variables (issue 31): what a
    play makes of them (the fabric role's map and networkd units, the chrony prefix, a peer's rails
    through hostvars) is byte for byte what it made of the former inline layout."""
    inventory = build_inventory(gpu_plan)
    write_inventory(inventory, tmp_path / "beside")
    write_inventory(inventory.inlined(), tmp_path / "inline")
    assert not (tmp_path / "inline" / ".data").exists()
    beside = _what_the_roles_see(tmp_path / "beside", tmp_path / "seen-beside")
    inline = _what_the_roles_see(tmp_path / "inline", tmp_path / "seen-inline")
    assert beside == inline
    # and it is the plan's: every rail has its unit with its address, the map holds every rail
    host = gpu_plan.host("gputest-h100-001")
    for interface in host.interfaces:
        unit = beside[f"{host.name}.{interface.name}.network"]
        assert f"Address={interface.address}/{interface.prefixlen}" in unit
    fabrics = json.loads(beside[f"{host.name}.fabric.json"])
    assert sorted(r["interface"] for rails in fabrics.values() for r in rails) == sorted(
        i.name for i in host.interfaces
    )
    assert [s["name"] for s in json.loads(beside[f"{host.name}.storage.json"])] == [
        s.name for s in gpu_plan.storage
    ]


LAB_SITE = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"

# The monitoring role's price rules (its defaults and template) on the monitoring host, where a site
# has prices; on every host, whether `aifactory_economics` is defined at all.
SEE_PRICES = """
- name: What the monitoring role makes of the prices
  hosts: all
  gather_facts: false
  vars_files:
    - {roles}/monitoring/defaults/main.yml
  tasks:
    - name: Whether the prices are defined here
      ansible.builtin.copy:
        content: "{{{{ aifactory_economics is defined }}}} {{{{ monitoring_economics | length }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.defined"
        mode: "0644"
    - name: The price rules
      ansible.builtin.template:
        src: {roles}/monitoring/templates/economics-prices.rules.yml.j2
        dest: "{out}/{{{{ inventory_hostname }}}}.rules.yml"
        mode: "0644"
      when: inventory_hostname == monitoring_server_host and monitoring_economics | length > 0
"""


def test_the_prices_are_held_beside_the_inventory_and_the_price_rules_are_unchanged(tmp_path: Path) -> None:
    """A cost per second for every host grows with the site (66 KB at 1,271 hosts), and only the
    monitoring host reads it: held beside the inventory, not copied into every host. The price rules
    the monitoring role writes from it are byte for byte those of the inline layout; a site without
    prices defines no `aifactory_economics`, so the role writes none."""
    plan = plan_site(LAB_SITE, write_lock=False).plan
    inventory = build_inventory(plan)
    assert "aifactory_economics" in inventory.site_data
    write_inventory(inventory, tmp_path / "beside")
    write_inventory(inventory.inlined(), tmp_path / "inline")
    listed = json.loads(ansible_inventory(tmp_path / "beside", "--list"))["_meta"]["hostvars"]
    assert all(v["aifactory_economics"].startswith("{{ (lookup(") for v in listed.values())
    beside = _what_the_roles_see(tmp_path / "beside", tmp_path / "seen-beside", SEE_PRICES)
    inline = _what_the_roles_see(tmp_path / "inline", tmp_path / "seen-inline", SEE_PRICES)
    assert beside == inline
    rules = yaml.safe_load(beside[f"{plan.control_host}.rules.yml"])
    recorded = [r for g in rules["groups"] for r in g["rules"] if "host_cost_per_second" in r["record"]]
    assert sorted(r["labels"]["host"] for r in recorded) == sorted(h.name for h in plan.hosts)
    assert {name for name in beside if name.endswith(".rules.yml")} == {f"{plan.control_host}.rules.yml"}
    # a site without prices: nothing defined, no price rules
    gpu = plan_site(GPU_SITE, write_lock=False).plan
    assert gpu.economics is None
    write_inventory(build_inventory(gpu), tmp_path / "no-prices")
    seen = _what_the_roles_see(tmp_path / "no-prices", tmp_path / "seen-no-prices", SEE_PRICES)
    assert {seen[f"{h.name}.defined"] for h in gpu.hosts} == {"False 0"}
    assert not [name for name in seen if name.endswith(".rules.yml")]


def test_rewriting_removes_hosts_that_left_and_refuses_foreign_folders(
    gpu_plan: SitePlan, tmp_path: Path
) -> None:
    folder = tmp_path / "inv"
    write_inventory(build_inventory(gpu_plan), folder)
    smaller = replace(gpu_plan, hosts=tuple(h for h in gpu_plan.hosts if h.name != "gputest-h100-002"))
    assert (folder / ".data" / "hosts" / "gputest-h100-002.json").is_file()
    write_inventory(build_inventory(smaller), folder)
    assert not (folder / "host_vars" / "gputest-h100-002.yml").exists()
    assert not (folder / ".data" / "hosts" / "gputest-h100-002.json").exists()
    assert (folder / ".data" / "hosts" / "gputest-h100-001.json").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not an inventory")
    with pytest.raises(UsageError):
        write_inventory(build_inventory(gpu_plan), foreign)


def test_cli_renders_the_lab_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    spec = tmp_path / "site.yaml"
    spec.write_text(GPU_SITE.read_text())
    (tmp_path / "site.alloc.json").write_text((FIXTURES / "gpu-site.alloc.json").read_text())
    assert main(["inventory", str(spec), "-o", str(tmp_path / "out"), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hosts"] == 4 and "tenant_research" in summary["groups"] and summary["bundle"] is None
    hosts = yaml.safe_load((tmp_path / "out" / "hosts.yml").read_text())
    assert set(hosts["all"]["children"]["pool_h100"]["hosts"]) == {"gputest-h100-001", "gputest-h100-002"}


NATIONAL_SITE = Path(__file__).resolve().parents[2] / "inventory" / "examples" / "national" / "site.yaml"


@pytest.fixture(scope="module")
def national_inventory(tmp_path_factory: pytest.TempPathFactory) -> tuple[SitePlan, Path]:
    plan = plan_site(NATIONAL_SITE, write_lock=False).plan
    folder = tmp_path_factory.mktemp("national") / "inventory"
    write_inventory(build_inventory(plan), folder)
    return plan, folder


@pytest.fixture(scope="module")
def national_hostvars(national_inventory: tuple[SitePlan, Path]) -> dict[str, dict[str, Any]]:
    """Every host's variables as `ansible-inventory --list` resolves them (once: seconds)."""
    _, folder = national_inventory
    hostvars: dict[str, dict[str, Any]] = json.loads(ansible_inventory(folder, "--list"))["_meta"]["hostvars"]
    return hostvars


def test_national_inventory_holds_the_slurm_topology_once(
    national_inventory: tuple[SitePlan, Path], national_hostvars: dict[str, dict[str, Any]]
) -> None:
    """Not a timing test: the structure that keeps `ansible-inventory --list` small at national scale
    (benchmarks/inventory_bench.py prints its time and memory)."""
    plan, folder = national_inventory
    assert len(plan.hosts) > 1000
    all_vars = yaml.safe_load((folder / "group_vars" / "all.yml").read_text().replace("!unsafe ", ""))
    assert "aifactory_slurm" not in all_vars
    assert all_vars["aifactory_slurm_host"] == plan.control_host
    # nothing in every host's variables grows with the site
    assert (folder / "group_vars" / "all.yml").stat().st_size < 8_000
    hostvars = national_hostvars
    holders = [h for h, values in hostvars.items() if "aifactory_slurm" in values]
    assert holders == [plan.control_host]
    topology = hostvars[plan.control_host]["aifactory_slurm"]
    assert len(topology["nodes"]) == len([h for h in plan.hosts if h.role in ("gpu", "cpu")])
    biggest = max(len(json.dumps(v)) for h, v in hostvars.items() if h != plan.control_host)
    assert biggest < 16_000


# Serialized sizes (JSON) for the test below: a large value; a value of group_vars/all, which every
# host gets a copy of (the site's storage systems were 1.5 KB); all of one host's variables (4 KB a
# host is about 5 MB of --list output at 1,271 hosts; the former layout put 6.9 KB into each GPU host,
# its rails and the storage systems, and 244 KB before that, the Slurm topology).
LARGE_VALUE = 16_000
SITE_VALUE = 1_000
HOST_BUDGET = 4_000


def test_national_inventory_copies_no_large_value_into_every_host(
    national_inventory: tuple[SitePlan, Path], national_hostvars: dict[str, dict[str, Any]]
) -> None:
    """Not a timing test: `ansible-inventory --list` (and every play) resolves each host's variables,
    so at 1,271 hosts its time and memory follow what one host holds. group_vars/all holds no large
    value; no host but the Slurm controller (which holds the topology, once) holds one or more than
    HOST_BUDGET in all; what moved beside the inventory is there, one file for each host."""
    plan, folder = national_inventory
    all_vars = load_inventory_yaml((folder / "group_vars" / "all.yml").read_text())
    assert {
        name: len(json.dumps(value))
        for name, value in all_vars.items()
        if len(json.dumps(value)) > SITE_VALUE
    } == {}
    others = {h: values for h, values in national_hostvars.items() if h != plan.control_host}
    assert len(others) == len(plan.hosts) - 1
    large = {
        (host, name)
        for host, values in others.items()
        for name, value in values.items()
        if len(json.dumps(value)) > LARGE_VALUE
    }
    assert large == set()
    over = {
        host: len(json.dumps(values))
        for host, values in others.items()
        if len(json.dumps(values)) > HOST_BUDGET
    }
    assert over == {}
    held = sorted(p.stem for p in (folder / ".data" / "hosts").iterdir())
    assert held == sorted(h.name for h in plan.hosts)
    gpu_host = next(h for h in plan.hosts if h.role == "gpu")
    rails = json.loads((folder / ".data" / "hosts" / f"{gpu_host.name}.json").read_text())
    assert sum(len(r) for r in rails["aifactory_fabric_addresses"].values()) == len(gpu_host.interfaces)


def test_slurm_role_reads_the_topology_from_the_controller(
    national_inventory: tuple[SitePlan, Path], tmp_path: Path
) -> None:
    """A compute host's `slurm_cluster` (the role's default) resolves to the controller's copy."""
    plan, folder = national_inventory
    node = next(h.name for h in plan.hosts if h.role in ("gpu", "cpu"))
    defaults = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "slurm" / "defaults" / "main.yml"
    playbook = tmp_path / "read.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": node,
                    "gather_facts": False,
                    "vars_files": [str(defaults)],
                    "tasks": [
                        {
                            "ansible.builtin.copy": {
                                "content": "{{ {'nodes': slurm_cluster.nodes | length, "
                                "'controller': slurm_cluster.controller.name} | to_json }}",
                                "dest": str(tmp_path / "seen.json"),
                            },
                            "delegate_to": "localhost",
                        }
                    ],
                }
            ]
        )
    )
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "ANSIBLE_HOME": str(tmp_path / "ah"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ah-tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(folder), str(playbook)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen == {
        "nodes": len([h for h in plan.hosts if h.role in ("gpu", "cpu")]),
        "controller": plan.control_host,
    }
