"""How an admin (and Ansible) reaches lab hosts: keys, sshd configs, known_hosts, ssh_config, ansible.cfg,
inventory. Everything is generated from the plan, deterministic for the same keys, mode 0600 for
private keys. Host key checking stays on: known_hosts is written from the host keys (no keyscan).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from aifactory.bundle.collection import source_collections_path
from aifactory.connection import Services
from aifactory.lab.bmc import BMC_PORT
from aifactory.lab.hosts import SERVICE_BIN
from aifactory.lab.layout import LabLayout, make_dir, write_file
from aifactory.lab.system import run
from aifactory.plan.model import Host, SitePlan
from aifactory.resources import resource_dir

ADMIN_USER = "root"
PYTHON = "/usr/bin/python3"
CONTROL_PATH_DIR = "/run/aifactory-lab/ssh"  # inside the control host's private /run: short and lab-local
SERVICE_COMMAND = f"{SERVICE_BIN}/aifactory-service"
# Every lab host's units run under the lab's supervisor (docs/lab.md).
LAB_SERVICES = Services("supervised", SERVICE_COMMAND)
# How Ansible logs in to every lab host and runs its modules: as root, with the machine's Python, and
# `su` to become (the hosts have no sudo; from root, su asks for no password).
LAB_LOGIN_VARS: dict[str, Any] = {
    "ansible_user": ADMIN_USER,
    "ansible_python_interpreter": PYTHON,
    "ansible_become_method": "ansible.builtin.su",
}
# What the lab's hosts are, for the roles, which never ask whether they run in the lab (docs/lab.md,
# "What stays shared with the machine"): they share the machine's kernel and its /usr (packages are
# installed there once, and only checked), the lab wires their links and prepares their storage,
# their BMCs are sushy-tools on plain HTTP, munged seeds under each host's private /run, and Slurm
# notices a dead slurmd within the tests' patience.
LAB_HOST_VARS: dict[str, Any] = {
    "aifactory_kernel_shared": True,
    "aifactory_packages_preinstalled": True,
    "fabric_manage_links": False,
    "storage_client_prepared": True,
    "monitoring_bmc_scheme": "http",
    "monitoring_bmc_port": BMC_PORT,
    "munge_seed_file": "/run/munge/munged.seed",
    "slurm_slurmd_timeout": 10,
    "slurm_health_check_interval": 15,
}


def keygen(path: Path, comment: str) -> Path:
    """An ed25519 key pair (private 0600), kept when it already exists."""
    if not path.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)
    return path


def host_key(layout: LabLayout, host: Host) -> Path:
    return layout.host_dir(host.name) / "ssh_host_ed25519_key"


def generate_keys(layout: LabLayout, plan: SitePlan) -> None:
    make_dir(layout.ssh_dir)
    keygen(layout.private_key, f"aifactory-lab-admin@{plan.name}")
    write_file(layout.authorized_keys, Path(f"{layout.private_key}.pub").read_text(), 0o600)
    for host in plan.hosts:
        host_identity(layout, host)


def host_identity(layout: LabLayout, host: Host) -> Path:
    """A host's own sshd: its host key (kept when there; a host brought back blank has lost its
    folder, so it gets a new one) and its sshd config. known_hosts is not touched: `lab up` writes it
    for a new lab, and a host brought back later is learned by `aifactory replace`, never from here.
    Returns the public key's path."""
    make_dir(layout.host_dir(host.name), 0o755)
    key = keygen(host_key(layout, host), f"root@{host.name}")
    write_file(layout.host_dir(host.name) / "sshd_config", sshd_config(layout, host), 0o600)
    return Path(f"{key}.pub")


def lab_addresses(host: Host) -> list[str]:
    addresses = [host.management_address] + [i.address for i in host.interfaces]
    return list(dict.fromkeys(addresses))


def sshd_config(layout: LabLayout, host: Host) -> str:
    listen = "\n".join(f"ListenAddress {a}" for a in lab_addresses(host))
    return f"""# aifactory lab: sshd of {host.name} (outside the host's /etc: roles cannot lock the lab out)
Port 22
{listen}
HostKey {host_key(layout, host)}
PidFile /run/sshd.pid
AuthorizedKeysFile {layout.authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 100:30:200
MaxSessions 64
Subsystem sftp internal-sftp
"""


def known_hosts(layout: LabLayout, plan: SitePlan) -> str:
    lines = []
    for host in plan.hosts:
        key_type, key = Path(f"{host_key(layout, host)}.pub").read_text().split()[:2]
        lines.append(f"{','.join([host.name, *lab_addresses(host)])} {key_type} {key}")
    return "\n".join(lines) + "\n"


def ssh_config(layout: LabLayout, plan: SitePlan) -> str:
    blocks = [
        f"# aifactory lab {plan.name}: use it on the control host (`aifactory lab exec {plan.name} --"
        " ssh HOST`);\n# the machine itself has no route into the lab."
    ]
    blocks += [f"Host {h.name}\n    HostName {h.management_address}" for h in plan.hosts]
    blocks.append(f"""Host *
    User {ADMIN_USER}
    IdentityFile {layout.private_key}
    IdentitiesOnly yes
    UserKnownHostsFile {layout.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
    ControlMaster auto
    ControlPath {CONTROL_PATH_DIR}/%C
    ControlPersist 600
    LogLevel ERROR""")
    return "\n\n".join(blocks) + "\n"


def ansible_cfg(layout: LabLayout) -> str:
    home = layout.ansible_dir
    return f"""# aifactory lab: Ansible settings measured fastest on lab hosts (docs/lab.md)
[defaults]
inventory = {layout.inventory}
home = {home}
# the collection aifactory.factory (the roles' modules, by FQCN): this aifactory's playbooks
collections_path = {home}/collections
local_tmp = {home}/tmp
remote_tmp = /run/aifactory-lab/ansible-tmp
forks = 20
host_key_checking = True
gathering = smart
fact_caching = ansible.builtin.jsonfile
fact_caching_connection = {home}/facts
fact_caching_timeout = 86400
interpreter_python = {PYTHON}
retry_files_enabled = False
timeout = 20
remote_user = {ADMIN_USER}

[privilege_escalation]
# lab hosts have no sudo; the admin already is root, and `su` from root asks for no password
become_method = ansible.builtin.su

[ssh_connection]
pipelining = True
ssh_args = -F {layout.ssh_config} -o ControlMaster=auto -o ControlPersist=600s
control_path_dir = {CONTROL_PATH_DIR}
control_path = {CONTROL_PATH_DIR}/%%C
"""


def _group(name: str) -> str:
    return name.replace("-", "_")


def inventory(plan: SitePlan) -> dict[str, Any]:
    hosts = {
        h.name: {
            "ansible_host": h.management_address,
            "aifactory_pool": h.pool,
            "aifactory_role": h.role,
            "aifactory_management_address": h.management_address,
            "aifactory_compute_address": h.compute_address,
        }
        for h in plan.hosts
    }
    children: dict[str, dict[str, Any]] = {}
    for host in plan.hosts:
        for group in (_group(host.role), f"pool_{_group(host.pool)}"):
            children.setdefault(group, {"hosts": {}})["hosts"][host.name] = None
    return {
        "all": {
            # What the lab's Connection (lab/connection.py) gives deploy's inventory, for
            # ansible-playbook run by hand against the lab.
            "vars": {
                **LAB_LOGIN_VARS,
                "aifactory_site": plan.name,
                **LAB_HOST_VARS,
                **LAB_SERVICES.inventory_vars(),
            },
            "hosts": hosts,
            "children": dict(sorted(children.items())),
        }
    }


def write_access_files(layout: LabLayout, plan: SitePlan) -> None:
    make_dir(layout.ansible_dir)
    make_dir(layout.ansible_dir / "tmp")
    make_dir(layout.ansible_dir / "facts")
    write_file(layout.known_hosts, known_hosts(layout, plan))
    write_file(layout.ssh_config, ssh_config(layout, plan))
    write_file(layout.ansible_cfg, ansible_cfg(layout))
    source_collections_path(resource_dir("playbooks"), layout.ansible_dir / "collections")
    text = "# aifactory lab inventory: generated by `aifactory lab up`\n" + yaml.safe_dump(
        inventory(plan), sort_keys=False, default_flow_style=False
    )
    write_file(layout.inventory, text)
