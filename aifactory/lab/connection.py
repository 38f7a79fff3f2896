"""The lab's `Connection` (aifactory/connection.py): how the stages reach the hosts of a running lab.

Ansible and the Slurm client run inside the lab control host's namespaces (the machine itself has no
route into the lab), reach the hosts through the lab's ssh config and known_hosts, and the hosts run
services and timers under the lab's supervisor (docs/lab.md). Built by the edge (the CLI, `aifactory
up`); the stages only read it.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Sequence
from pathlib import Path

from aifactory.connection import ANSIBLE_SECTIONS, Connection
from aifactory.errors import AifactoryError, LabError
from aifactory.lab.access import LAB_HOST_VARS, LAB_LOGIN_VARS, LAB_SERVICES
from aifactory.lab.execute import lab_env, path_with_tools
from aifactory.lab.hosts import enter_argv
from aifactory.lab.query import lab_status
from aifactory.lab.status import LabStatus

LIVE_STATES = ("up", "degraded")  # degraded: some lab process died; the others are reached as ever

# SCAP rules a lab scan leaves out (`oscap --skip-rule`; they come out `notselected` and the scan's
# digest names them): each walks every local file system, which from a lab host is the whole machine
# (every work tree, cache and test folder under the shared /tmp and /root: over a million files),
# for tens of minutes per host, and what it finds describes the machine, not the host (docs/lab.md).
SCAN_SKIP_RULES = (
    "dir_perms_world_writable_root_owned",
    "dir_perms_world_writable_sticky_bits",
    "file_permissions_unauthorized_world_writable",
    "file_permissions_ungroupowned",
    "no_files_unowned_by_user",
)


def lab_is_up(site: str) -> bool:
    """Whether a lab of this site runs on this machine (up, or degraded)."""
    try:
        return lab_status(site).state in LIVE_STATES
    except AifactoryError:  # no lab record of this site
        return False


def lab_connection(site: str) -> Connection:
    """How to reach the hosts of the site's running lab. Fails when no lab of the site is up."""
    status = lab_status(site)
    if status.state not in LIVE_STATES or not status.control_host:
        raise LabError(
            f"the lab of site {site!r} is not up ({status.state})",
            code="lab-not-up",
            hint="run `aifactory lab up SITE.yaml` first",
        )
    control = status.host(status.control_host)
    if not control.anchor.running():
        raise LabError(
            f"the lab's control host {status.control_host} is not running",
            code="lab-control-host-down",
            hint="run `aifactory lab down SITE` and `aifactory lab up SITE.yaml` again",
        )
    env = {k: v for k, v in lab_env(status).items() if k not in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY")}
    env["PATH"] = path_with_tools(os.environ.get("PATH", ""))
    return Connection(
        description="the lab's control host",
        ansible_cfg=_ansible_settings(status),
        inventory_vars={**LAB_LOGIN_VARS, **LAB_HOST_VARS},
        env=env,
        control_prefix=tuple(enter_argv(control.anchor.pid)),
        services=LAB_SERVICES,
        scan_skip_rules=SCAN_SKIP_RULES,
        known_hosts=Path(status.paths["known_hosts"]),
        # The machine has no route into the lab (and a default route out): the BMC fabric is
        # reached from the control host's network only.
        control_network=Path(f"/proc/{control.anchor.pid}/ns/net"),
    )


def _ansible_settings(status: LabStatus) -> dict[str, dict[str, str]]:
    """The lab's ansible.cfg as settings: its own inventory and collections path left out (deploy
    renders one and links the other), and its ssh config kept apart from the ssh options deploy
    tunes."""
    config = configparser.ConfigParser(interpolation=None)  # ansible.cfg keys are lower case already
    config.read(status.paths["ansible_cfg"])
    settings = {name: dict(config[name]) for name in ANSIBLE_SECTIONS if config.has_section(name)}
    settings.get("defaults", {}).pop("inventory", None)
    settings.get("defaults", {}).pop("collections_path", None)  # a deploy links its own
    ssh = settings.get("ssh_connection", {})
    ssh_args = ssh.pop("ssh_args", "").split()
    if "-F" in ssh_args[:-1]:
        ssh["ssh_common_args"] = f"-F {ssh_args[ssh_args.index('-F') + 1]}"
    return settings


class LabHosts:
    """A resize's added hosts on the lab (the edge's choice, aifactory.lifecycle.resize's NewHosts):
    their namespaces must run. The lab is brought up from a plan and cannot yet add a host to a
    running lab, so a lab meant to grow is brought up with the grown plan's hosts first (docs/lab.md)."""

    def __init__(self, site: str) -> None:
        self.site = site

    def ready(self, hosts: Sequence[str]) -> None:
        running = {h.name for h in lab_status(self.site).hosts if h.state == "running"}
        missing = [h for h in hosts if h not in running]
        if missing:
            raise LabError(
                f"the lab of site {self.site!r} has no running namespace for {', '.join(missing)}",
                code="lab-host-missing",
                hint="bring the lab up with the grown plan's hosts (`aifactory lab down`, then "
                "`aifactory lab up` with the grown spec, then deploy the smaller one), as "
                "tests/pipeline/test_resize_lab.py does",
            )
