"""One host of a running lab lost and brought back, as a machine dies and its replacement arrives.

`destroy_host` is the dead machine: the host's network namespace (its wires go with it), every process
in it (its sshd, its services), and its disk state (its folder: the host key, its /etc, /opt, /var/lib
and logs) are gone. Its BMC keeps running, as a board's management controller does when the machine
behind it fails (and as a replacement machine's BMC answers on the planned BMC address); the site's
storage is the site's, not the host's, and is kept.

`recreate_host` is the replacement arriving blank: a new namespace with the host's planned name and
addresses, a fresh /etc seeded as `lab up` seeds it, and a new sshd with a NEW host key. The lab's
known_hosts (what `lab up` wrote and the lab's Connection checks hosts against) is not touched: the
control host does not trust the new machine until `aifactory replace` learns its key from a channel it
trusts (docs/operations.md, "Replacing a dead host"). The public key is the lab's provisioning
record (`hosts/<host>/ssh_host_ed25519_key.pub`): the lab made the machine, as a site's provisioning
system installs one, and says which key it gave it.

Both reuse what `lab up` does for each host (aifactory.lab.lifecycle, access, network).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from aifactory.errors import LabError
from aifactory.lab import access, hosts, network
from aifactory.lab.journal import Journal
from aifactory.lab.layout import LabLayout
from aifactory.lab.lifecycle import (
    host_files,
    record_processes,
    site_lock,
    start_anchor,
    start_sshd,
    wait_sshd,
)
from aifactory.lab.names import LabNames
from aifactory.lab.status import HostStatus, LabStatus, read_status
from aifactory.lab.system import check_prerequisites, ip, netns_inode, pids_in_netns, terminate
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState


def destroy_host(site: str, host: str, *, lock: bool = True) -> LabStatus:
    """The host dies: its namespace, processes and disk state gone (its BMC and the site's storage
    stay). Idempotent: a host already gone stays gone."""
    check_prerequisites()
    layout, state = LabLayout.for_site(site), SiteState.for_site(site)
    with site_lock(state, "lab host destroy", lock):
        _lab_host(read_status(site, layout), site, host)
        _remove_host(layout, site, host)
        state.record(command="lab host destroy", result="ok", detail={"host": host})
    return read_status(site, layout)


def recreate_host(site: str, host: str, *, lock: bool = True, replace_running: bool = False) -> Path:
    """A blank machine in the host's place: same name and addresses, a new host key. A host that
    still runs is refused unless `replace_running` (a swap of a live machine: it is destroyed first).
    Returns the path of the new host key's public half (the lab's provisioning record)."""
    tools = check_prerequisites()
    layout, state = LabLayout.for_site(site), SiteState.for_site(site)
    with site_lock(state, "lab host recreate", lock):
        entry = _lab_host(read_status(site, layout), site, host)
        if entry.state == "running" and not replace_running:
            raise LabError(
                f"{host} still runs in the lab of site {site!r}",
                code="lab-host-running",
                hint=f"destroy it first: aifactory lab host destroy {site} {host}",
            )
        _remove_host(layout, site, host)  # what a killed recreate left, or the machine being swapped
        plan = SitePlan.load(layout.plan_file)
        planned, names, journal = plan.host(host), LabNames(site), Journal(layout.root)
        public = access.host_identity(layout, planned)
        mounts = hosts.mount_plan(layout, planned)  # as the machine is now (lab up made its mount points)
        host_files(layout, plan, planned, mounts, journal)
        network.add_host(plan, names, planned, journal)
        anchor = start_anchor(layout, names, journal, planned, mounts)
        hosts.wait_ready(layout, {host: anchor})
        sshd = start_sshd(layout, journal, host, anchor.pid, tools["sshd"])
        wait_sshd(layout, host, planned.management_address, sshd)
        record_processes(layout, host, anchor=anchor.pid, sshd=sshd.pid)
        state.record(command="lab host recreate", result="ok", detail={"host": host})
    return public


def _lab_host(status: LabStatus, site: str, host: str) -> HostStatus:
    if status.state not in ("up", "degraded"):
        raise LabError(
            f"the lab of site {site!r} is not up ({status.state})",
            code="lab-not-up",
            hint="run `aifactory lab up SITE.yaml` first",
        )
    if host == status.control_host:
        raise LabError(
            f"{host} is the lab's control host: it runs Ansible and the site's state",
            code="lab-control-host",
            hint="a control host is restored from backup (aifactory backup, aifactory restore), not replaced",
        )
    try:
        return status.host(host)
    except KeyError:
        raise LabError(
            f"{host} is not a host of the lab of site {site!r}",
            code="lab-host-missing",
            hint=f"see `aifactory lab status {site}`",
        ) from None


def _remove_host(layout: LabLayout, site: str, host: str) -> None:
    """End every process in the host's namespace, delete the namespace (its veths go with it) and the
    host's folder, and record that it runs nothing."""
    namespace = LabNames(site).host_ns(host)
    inode = netns_inode(namespace)
    if inode is not None:
        terminate(pids_in_netns([inode]))
        ip("netns", "del", namespace, check=False)
        terminate(pids_in_netns([inode]))  # a child that joined while the first ones died
    shutil.rmtree(layout.host_dir(host), ignore_errors=True)
    if layout.host_dir(host).exists():
        raise LabError(
            f"the disk state of {host} ({layout.host_dir(host)}) could not be removed",
            code="lab-host-busy",
            hint="something outside the lab holds it (a shell in it?); close it and run the command again",
        )
    record_processes(layout, host, anchor=None, sshd=None)


@dataclass(frozen=True)
class LabBlankHost:
    """The lab's provisioning of a replacement machine (the edge's choice for `aifactory replace`,
    aifactory.lifecycle.replace's BlankMachine): it brings the blank host up, and its record of the
    key it gave the machine is the provisioning channel the control host trusts."""

    site: str
    proves_host_key: bool = True

    def bring_up(self, host: str) -> str:
        """A blank machine in `host`'s place (a running one is swapped); its new public host key."""
        public = recreate_host(self.site, host, replace_running=True)
        kind, blob = public.read_text().split()[:2]
        return f"{kind} {blob}"
