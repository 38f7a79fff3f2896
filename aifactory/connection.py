"""How aifactory reaches a site's hosts: the seam between the stages that act on hosts (inventory,
deploy, scheduler) and the place where those hosts are.

A `Connection` is built once, at the edge (the CLI, or `aifactory up`), and handed to the stages:

- a real site's comes from its plan (`ssh_connection`): Ansible over plain SSH from the control host
  (this machine) to each host's management address, services and timers under systemd;
- the local lab's comes from the lab package (`aifactory.lab.lab_connection`): the lab's ssh config
  and known_hosts, commands entered into the lab control host's namespaces, services and timers under
  the lab's supervisor.

The stages read only this value: none of them asks where the hosts are, or imports the lab.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

ServiceManager = Literal["systemd", "supervised"]
# ansible.cfg sections a Connection may set (deploy lays its own tuned settings over them).
ANSIBLE_SECTIONS = ("defaults", "privilege_escalation", "ssh_connection")


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Services:
    """How the hosts run services and timers: systemd, or a supervisor command that reads the same
    unit files (`COMMAND start|restart|stop|status NAME[.timer]`, docs/lab.md)."""

    manager: ServiceManager = "systemd"
    command: str | None = None

    def __post_init__(self) -> None:
        if self.manager not in ("systemd", "supervised"):
            raise ValueError(f"unknown service manager {self.manager!r}")
        if self.manager == "supervised" and not self.command:
            raise ValueError("a supervised service manager needs its command")

    def inventory_vars(self) -> dict[str, Any]:
        """The one variable every role chooses the supervisor by (and the supervisor's command)."""
        values: dict[str, Any] = {"aifactory_service_manager": self.manager}
        if self.command:
            values["aifactory_service_command"] = self.command
        return values


@dataclass(frozen=True)
class Connection:
    """How to reach a site's hosts, for Ansible and for commands on the control host.

    description     says where commands run, for messages ("this host", "the lab's control host")
    ansible_cfg     ansible.cfg settings by section (ssh config, remote tmp, become method...)
    inventory_vars  variables every host gets (ansible_user, interpreter...), besides the services'
    env             environment added to Ansible's and to commands on the control host
    control_prefix  argv that runs a command on the control host (empty: this machine is it)
    services        how services and timers are supervised on the hosts
    scan_skip_rules SCAP rules a host scan leaves out (`oscap --skip-rule`), named in its digest;
                    given to the scan only, never to the deploy's inventory
    known_hosts     the known_hosts file the ssh options check host keys against, where a
                    host-key rotation adds and drops keys (None: the admin's own ssh setup)
    control_network the control host's network namespace when this process is not on its network
                    (a control host that is a namespace of this machine: /proc/PID/ns/net); what
                    the control host reaches by address (its BMCs) is called from there
                    (aifactory.netns). None: this machine is the control host
    """

    description: str
    ansible_cfg: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    inventory_vars: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    control_prefix: tuple[str, ...] = ()
    services: Services = field(default_factory=Services)
    scan_skip_rules: tuple[str, ...] = ()
    known_hosts: Path | None = None
    control_network: Path | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ansible_cfg) - set(ANSIBLE_SECTIONS))
        if unknown:
            raise ValueError(f"unknown ansible.cfg section(s) {unknown}")
        object.__setattr__(
            self, "ansible_cfg", _frozen({k: _frozen(v) for k, v in sorted(self.ansible_cfg.items())})
        )
        object.__setattr__(self, "inventory_vars", _frozen(self.inventory_vars))
        object.__setattr__(self, "env", _frozen(self.env))
        object.__setattr__(self, "control_prefix", tuple(self.control_prefix))
        object.__setattr__(self, "scan_skip_rules", tuple(sorted(self.scan_skip_rules)))

    def host_vars(self) -> dict[str, Any]:
        """The inventory variables every host of the site gets from this connection."""
        return {**self.inventory_vars, **self.services.inventory_vars()}

    def control_command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as it runs on the control host."""
        return [*self.control_prefix, *argv]

    def run_on_control_host(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the control host, output captured (the caller judges the exit status)."""
        return subprocess.run(
            self.control_command(argv),
            env={**os.environ, **self.env},
            cwd="/",
            text=True,
            capture_output=True,
            check=False,
            timeout=timeout,
            input=input_text,
        )

    def ssh_argv(self, address: str, argv: Sequence[str], *, connect_timeout_s: int = 10) -> list[str]:
        """`argv` run on a host over SSH, as Ansible reaches it (its ssh options and user), with the
        host key checked against the known one: an unknown or changed key is refused, never learnt
        (the options given first win over an ssh config's). Run it with `run_on_control_host`."""
        ssh = self.ansible_cfg.get("ssh_connection", {})
        user = str(self.ansible_cfg.get("defaults", {}).get("remote_user", "root"))
        return [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={connect_timeout_s}",
            *shlex.split(ssh.get("ssh_common_args", "")),
            "-l",
            user,
            address,
            "--",
            *argv,
        ]


def ssh_connection(
    *,
    user: str = "root",
    ssh_config: Path | None = None,
    identity_file: Path | None = None,
    known_hosts: Path | None = None,
    remote_tmp: str | None = None,
    control_path_dir: str | None = None,
    control_path: str | None = None,
    become_method: str | None = None,
    control_prefix: Sequence[str] = (),
    services: Services | None = None,
    inventory_vars: Mapping[str, Any] | None = None,
    description: str = "this host",
) -> Connection:
    """Plain SSH from the control host to every host's management address (the inventory's
    ansible_host, from the plan), with host keys checked. The defaults are a real site's: this
    machine is the control host, the admin's own ssh setup, systemd on the hosts."""
    ssh_options = []
    if ssh_config is not None:
        ssh_options += ["-F", str(ssh_config)]
    if identity_file is not None:
        ssh_options += ["-o", f"IdentityFile={identity_file}", "-o", "IdentitiesOnly=yes"]
    if known_hosts is not None:
        ssh_options += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    defaults = {"remote_user": user}
    if remote_tmp:
        defaults["remote_tmp"] = remote_tmp
    ssh: dict[str, str] = {}
    if ssh_options:
        ssh["ssh_common_args"] = shlex.join(ssh_options)
    if control_path_dir:
        ssh["control_path_dir"] = control_path_dir
    if control_path:  # as ansible.cfg spells it (`%%C`), e.g. to share the ssh config's ControlPath
        ssh["control_path"] = control_path
    cfg: dict[str, dict[str, str]] = {"defaults": defaults, "ssh_connection": ssh}
    if become_method:
        cfg["privilege_escalation"] = {"become_method": become_method}
    host_values: dict[str, Any] = {"ansible_user": user, **(inventory_vars or {})}
    if become_method:
        host_values["ansible_become_method"] = become_method
    return Connection(
        description=description,
        ansible_cfg=cfg,
        inventory_vars=host_values,
        control_prefix=tuple(control_prefix),
        services=services or Services(),
        known_hosts=known_hosts,
    )
