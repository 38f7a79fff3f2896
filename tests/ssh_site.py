"""A site reached over plain SSH, as a real site is: the tests' way to run deploy, inventory and the
scheduler against the lab's hosts without the lab's own `Connection`, and with `aifactory.lab`
unimportable while they run (production stages must never need it).

The test builds the connection itself from what any SSH site has: an ssh config naming each host's
key, user and known_hosts (the lab's files), and a way onto the control host. The machine has no
route into the lab, so "the control host" is entered with `nsenter` into the lab control host's
namespaces, as an admin would log in there; the hosts run the lab's service supervisor (their
service manager is an inventory variable, like any site's).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aifactory
from aifactory.connection import Connection, Services, ssh_connection

# What the lab's hosts are like (docs/lab.md), written here as a site's admin would know them.
SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"
CONTROL_PATH_DIR = "/run/aifactory-lab/ssh"  # where the ssh config's ControlPath points
REMOTE_TMP = "/run/aifactory-lab/ansible-tmp"
# They share the machine's kernel and /usr, the lab wires their links and prepares their storage,
# their BMCs are emulators on plain HTTP, munged seeds under the host's private /run.
HOST_VARS = {
    "ansible_python_interpreter": "/usr/bin/python3",
    "aifactory_kernel_shared": True,
    "aifactory_packages_preinstalled": True,
    "fabric_manage_links": False,
    "storage_client_prepared": True,
    "monitoring_bmc_scheme": "http",
    "monitoring_bmc_port": 8000,
    "munge_seed_file": "/run/munge/munged.seed",
    "slurm_slurmd_timeout": 10,
    "slurm_health_check_interval": 15,
}


def ssh_connection_to(status: Any) -> Connection:
    """Plain SSH from the lab's control host to its hosts, built from the lab's access files
    (`status`: the lab's LabStatus, read before the lab is made unimportable)."""
    paths = status.paths
    control = status.host(status.control_host)
    return ssh_connection(
        user="root",
        ssh_config=Path(paths["ssh_config"]),
        remote_tmp=REMOTE_TMP,
        control_path_dir=CONTROL_PATH_DIR,
        # Ansible's control sockets where the ssh config's are, so an admin's `ssh -O exit` reaches them.
        control_path=f"{CONTROL_PATH_DIR}/%%C",
        become_method="ansible.builtin.su",
        control_prefix=("nsenter", "--target", str(control.anchor.pid), "--net", "--mount", "--uts", "--"),
        services=Services("supervised", SUPERVISOR),
        inventory_vars=HOST_VARS,
        description="ssh from the control host",
    )


# What lab_unimportable hid, innermost last: (the hidden modules, the package attribute).
_HIDDEN: list[tuple[dict[str, Any], Any]] = []


@contextmanager
def lab_unimportable() -> Iterator[None]:
    """Inside, any import of `aifactory.lab` (or of a module in it) fails with ImportError."""
    _HIDDEN.append(_hide())
    try:
        yield
    finally:
        _show(_HIDDEN.pop())


@contextmanager
def lab_back_for_the_test() -> Iterator[None]:
    """Inside lab_unimportable: the lab importable again for test code that production code calls
    back (a progress callback that cuts a host off), hidden again afterwards."""
    _show(_HIDDEN[-1])
    try:
        yield
    finally:
        _HIDDEN[-1] = _hide()


def _hide() -> tuple[dict[str, Any], Any]:
    hidden = {name: module for name, module in sys.modules.items() if _is_lab(name)}
    attribute = aifactory.__dict__.pop("lab", None)
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    sys.modules["aifactory.lab"] = None  # type: ignore[assignment]
    return hidden, attribute


def _show(saved: tuple[dict[str, Any], Any]) -> None:
    hidden, attribute = saved
    for name in [n for n in sys.modules if _is_lab(n)]:
        del sys.modules[name]
    sys.modules.update(hidden)
    if attribute is not None:
        aifactory.lab = attribute  # type: ignore[attr-defined]


def _is_lab(name: str) -> bool:
    return name == "aifactory.lab" or name.startswith("aifactory.lab.")
