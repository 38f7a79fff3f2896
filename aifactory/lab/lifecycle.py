"""`lab up` and `lab down`: build a lab from a plan, and remove every trace of it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from aifactory.errors import LabError, SecretError
from aifactory.lab import access, bmc, hosts, network
from aifactory.lab.journal import Entry, Journal, process_start_time
from aifactory.lab.layout import LabLayout, make_dir, write_file
from aifactory.lab.names import PREFIX, LabNames, site_prefix
from aifactory.lab.status import (
    BmcStatus,
    HostStatus,
    LabStatus,
    ProcessRef,
    access_paths,
    read_status,
    write_record,
)
from aifactory.lab.system import (
    NETNS_DIR,
    check_prerequisites,
    ip,
    list_netns,
    listening,
    netns_inode,
    pids_in_netns,
    terminate,
    wait_ready,
)
from aifactory.plan import PlannedSite
from aifactory.plan.model import Host, SitePlan
from aifactory.secrets import SecretStore, read_passphrase
from aifactory.state import SiteState

log = logging.getLogger(__name__)
SSHD_TIMEOUT = 15.0


def lab_up(planned: PlannedSite, *, lock: bool = True) -> LabStatus:
    """Bring the site's lab up (idempotent: an identical running lab is left as it is).

    `lock=False` when the caller already holds the site lock (e.g. `aifactory up`)."""
    plan = planned.plan
    tools = check_prerequisites()
    state = SiteState.for_site(plan.name)
    layout = LabLayout.for_site(plan.name)
    with site_lock(state, "lab up", lock):
        current = read_status(plan.name, layout)
        if current.up and current.plan_digest == plan.digest():
            return current
        if _only_sshd_died(current, plan):
            for host in current.hosts:
                if host.sshd_state != "listening":
                    _restart_sshd(layout, host.name, tools["sshd"])
            healed = read_status(plan.name, layout)
            if healed.up:
                state.record(
                    command="lab up",
                    result="ok",
                    spec_digest=plan.spec_digest,
                    detail={"restarted_sshd": [h.name for h in current.hosts if h.sshd_state != "listening"]},
                )
                return healed
            current = healed
        running = any(h.anchor.running() for h in current.hosts)
        if running and current.plan_digest != plan.digest():
            raise LabError(
                f"the lab of site {plan.name!r} is running a different plan",
                hint=f"run `aifactory lab down {plan.name}` first",
            )
        if current.state == "foreign":
            raise _foreign(plan.name, current)
        if current.state != "down":
            _teardown(plan.name, layout)
            layout = LabLayout.for_site(plan.name)
        try:
            status = _build(plan, layout, tools)
        except BaseException as exc:
            _teardown(plan.name, layout)
            state.record(
                command="lab up",
                result="failed",
                spec_digest=plan.spec_digest,
                detail={"error": type(exc).__name__},
            )
            raise
        state.record(
            command="lab up",
            result="ok",
            spec_digest=plan.spec_digest,
            detail={"hosts": len(plan.hosts), "plan_digest": plan.digest()},
        )
        return status


def lab_down(site_name: str, *, lock: bool = True, force: bool = False) -> LabStatus:
    """Remove every namespace, process, mount, secret and file the site's lab made (idempotent).

    Namespaces named for the site that this state folder did not make (another AIFACTORY_STATE_HOME)
    are left alone unless `force`."""
    check_prerequisites()
    state = SiteState.for_site(site_name)
    layout = LabLayout.for_site(site_name)
    with site_lock(state, "lab down", lock):
        before = read_status(site_name, layout)
        if before.state == "foreign" and not force:
            raise _foreign(site_name, before)
        _teardown(site_name, layout)
        left = list_netns(site_prefix(site_name))
        if left:
            raise LabError(f"namespaces remain after lab down: {', '.join(left)}")
        if before.state != "down":
            state.record(command="lab down", result="ok")
        return LabStatus(site_name, "down", str(layout.root))


def _foreign(site: str, status: LabStatus) -> LabError:
    return LabError(
        f"namespaces of a lab named {site!r} exist ({', '.join(status.leftovers)}), but this state folder"
        f" ({status.root}) did not make them",
        hint="use the AIFACTORY_STATE_HOME that made them, or `aifactory lab down --force SITE`",
    )


@contextlib.contextmanager
def site_lock(state: SiteState, command: str, lock: bool) -> Iterator[None]:
    if lock:
        with state.lock(command):
            yield
    else:
        yield


def _install_supervisor(layout: LabLayout) -> None:
    make_dir(layout.bin_dir, 0o755)
    source = resources.files("aifactory.lab").joinpath("files/aifactory-service").read_text()
    write_file(layout.bin_dir / "aifactory-service", source, 0o755)


def _build(plan: SitePlan, layout: LabLayout, tools: dict[str, str]) -> LabStatus:
    site = plan.name
    names = LabNames(site)
    journal = Journal(layout.root)
    mount_plans = _prepare_files(plan, layout, journal)
    network.build_network(plan, names, journal)
    bmc_namespaces = {b.fabric: b.namespace for b in network.bmc_fabrics(plan, names)}
    secrets = bmc.ensure_credentials(site, plan, layout, journal)
    credentials = secrets.credentials if secrets else {}
    emulators = _start_bmcs(plan, layout, names, journal, credentials, bmc_namespaces)  # slowest: first
    anchors = _start_anchors(plan, layout, names, journal, mount_plans)
    sshds = {
        h.name: start_sshd(layout, journal, h.name, anchors[h.name].pid, tools["sshd"]) for h in plan.hosts
    }
    _wait_sshd(layout, plan, sshds)
    bmc.wait_listening(layout, emulators)

    status = LabStatus(
        site=site,
        state="up",
        root=str(layout.root),
        plan_digest=plan.digest(),
        control_host=plan.control_host,
        fabric_netns=names.fabric_ns,
        bridges={f: names.bridge(plan, f) for f in network.fabrics_in_use(plan)},
        hosts=[
            _host_status(plan, names, h.name, anchors, sshds, emulators, bmc_namespaces) for h in plan.hosts
        ],
        paths=access_paths(layout),
        secrets=secrets.as_dict() if secrets else {},
    )
    write_record(layout, status)
    return read_status(site, layout)


def _prepare_files(plan: SitePlan, layout: LabLayout, journal: Journal) -> dict[str, hosts.MountPlan]:
    """Keys, configs, the supervisor, seeded /etc files, storage folders; returns each host's mounts."""
    hosts.check_state_location(layout, plan)
    write_file(layout.plan_file, plan.to_json(), 0o600)
    _install_supervisor(layout)
    access.generate_keys(layout, plan)
    access.write_access_files(layout, plan)
    # Every host's mounts are planned before any mount point is made: all of them see the machine
    # as it was (a mount point one host's plan makes is not another's existing folder).
    mount_plans = {h.name: hosts.mount_plan(layout, h) for h in plan.hosts}
    for host in plan.hosts:
        host_files(layout, plan, host, mount_plans[host.name], journal)
    return mount_plans


def host_files(
    layout: LabLayout, plan: SitePlan, host: Host, mounts: hosts.MountPlan, journal: Journal
) -> None:
    """What one host needs on the machine before its namespaces start (its sshd's key and config are
    access.host_identity's): the mount points the machine lacks, its seeded /etc, its storage
    folders (shared with the hosts that mount the same storage: kept when there)."""
    for directory in mounts.machine_dirs:
        journal.add("machine-dir", directory)
        os.makedirs(directory, mode=0o755, exist_ok=True)
    hosts.seed_etc(layout, plan, host)
    for mount in host.mounts:
        make_dir(layout.storage_dir(mount.storage), 0o755)


def _start_anchors(
    plan: SitePlan,
    layout: LabLayout,
    names: LabNames,
    journal: Journal,
    mount_plans: dict[str, hosts.MountPlan],
) -> dict[str, subprocess.Popen[bytes]]:
    anchors = {h.name: start_anchor(layout, names, journal, h, mount_plans[h.name]) for h in plan.hosts}
    hosts.wait_ready(layout, anchors)
    return anchors


def start_anchor(
    layout: LabLayout, names: LabNames, journal: Journal, host: Host, mounts: hosts.MountPlan
) -> subprocess.Popen[bytes]:
    """The process holding one host's mount and UTS namespaces (hosts.wait_ready waits for it)."""
    anchor = hosts.start_anchor(layout, names, host, hosts.setup_script(layout, host, mounts))
    journal.add_process(f"anchor:{host.name}", anchor.pid)
    return anchor


def _start_bmcs(
    plan: SitePlan,
    layout: LabLayout,
    names: LabNames,
    journal: Journal,
    credentials: dict[str, bmc.BmcCredential],
    bmc_namespaces: dict[str, str],
) -> dict[str, tuple[str, subprocess.Popen[bytes]]]:
    emulators: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    for host in plan.hosts:
        if host.bmc is not None:
            namespace = bmc_namespaces[host.bmc.fabric]
            proc = bmc.start_emulator(
                plan.name,
                host,
                namespace,
                layout,
                credentials[host.name],
                host_namespace=str(NETNS_DIR / names.host_ns(host.name)),  # its power follows this
            )
            journal.add_process(f"bmc:{host.name}", proc.pid)
            emulators[host.name] = (host.bmc.address, proc)
    return emulators


def _host_status(
    plan: SitePlan,
    names: LabNames,
    name: str,
    anchors: dict[str, subprocess.Popen[bytes]],
    sshds: dict[str, subprocess.Popen[bytes]],
    emulators: dict[str, tuple[str, subprocess.Popen[bytes]]],
    bmc_namespaces: dict[str, str],
) -> HostStatus:
    host = plan.host(name)
    bmc_status = None
    if host.bmc is not None:
        bmc_status = BmcStatus(
            host.bmc.address,
            bmc.BMC_PORT,
            bmc.bmc_url(host),
            host.bmc.fabric,
            bmc_namespaces[host.bmc.fabric],
            host.bmc.credentials,
            bmc.system_uuid(plan.name, name),
            ProcessRef.of(emulators[name][1].pid),
        )
    return HostStatus(
        name,
        host.role,
        host.pool,
        names.host_ns(name),
        name,
        host.management_address,
        host.compute_address,
        [i.to_dict() for i in host.interfaces],
        ProcessRef.of(anchors[name].pid),
        ProcessRef.of(sshds[name].pid),
        bmc_status,
    )


def _only_sshd_died(current: LabStatus, plan: SitePlan) -> bool:
    """A lab of this plan whose hosts and BMCs run, but where some sshd is gone (killed by an admin
    or a test): restarting those sshds heals it without rebuilding the hosts."""
    if current.state != "degraded" or current.plan_digest != plan.digest() or not current.hosts:
        return False
    return all(h.state == "running" and (h.bmc is None or h.bmc.state == "running") for h in current.hosts)


def restart_sshd(site: str, host: str, *, lock: bool = True) -> LabStatus:
    """Start a lab host's sshd again (in the host's namespaces) and record it; a no-op if it listens."""
    tools = check_prerequisites()
    layout = LabLayout.for_site(site)
    with site_lock(SiteState.for_site(site), "lab restart-sshd", lock):
        current = read_status(site, layout)
        entry = next((h for h in current.hosts if h.name == host), None)
        if entry is None or entry.state != "running":
            raise LabError(
                f"{host} is not a running host of the lab of site {site!r}",
                hint="run `aifactory lab up` for the site",
            )
        if entry.sshd_state != "listening":
            _restart_sshd(layout, host, tools["sshd"])
    return read_status(site, layout)


def _restart_sshd(layout: LabLayout, host: str, sshd: str) -> None:
    data = json.loads(layout.status_file.read_text())
    raw = next(h for h in data["hosts"] if h["name"] == host)
    anchor_pid = int(data["processes"][host]["anchor"]["pid"])
    proc = start_sshd(layout, Journal(layout.root), host, anchor_pid, sshd)
    wait_sshd(layout, host, raw["management_address"], proc)
    record_processes(layout, host, sshd=proc.pid)


def wait_sshd(layout: LabLayout, host: str, address: str, proc: subprocess.Popen[bytes]) -> None:
    wait_ready(
        {host: proc},
        lambda name, pid: listening(pid, address, 22),
        what="sshd",
        log_of=lambda name: layout.host_dir(name) / "sshd.log",
        timeout=SSHD_TIMEOUT,
    )


def record_processes(layout: LabLayout, host: str, **pids: int | None) -> None:
    """Set a host's processes (anchor, sshd) in the running lab's record; None: it has none now."""
    data = json.loads(layout.status_file.read_text())
    entry = data["processes"].setdefault(host, {"anchor": None, "sshd": None, "bmc": None})
    for name, pid in pids.items():
        entry[name] = None if pid is None else {"pid": pid, "start": process_start_time(pid)}
    tmp = layout.status_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(layout.status_file)


def start_sshd(
    layout: LabLayout, journal: Journal, host: str, anchor_pid: int, sshd: str
) -> subprocess.Popen[bytes]:
    """A host's sshd, in its namespaces, journalled (lab down ends it)."""
    proc = _sshd_process(layout, host, anchor_pid, sshd)
    journal.add_process(f"sshd:{host}", proc.pid)
    return proc


def _sshd_process(layout: LabLayout, host: str, anchor_pid: int, sshd: str) -> subprocess.Popen[bytes]:
    folder = layout.host_dir(host)
    return subprocess.Popen(
        hosts.enter_argv(anchor_pid)
        + [sshd, "-D", "-f", str(folder / "sshd_config"), "-E", str(folder / "sshd.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        start_new_session=True,
    )


def _wait_sshd(layout: LabLayout, plan: SitePlan, sshds: dict[str, subprocess.Popen[bytes]]) -> None:
    wait_ready(
        sshds,
        lambda name, pid: listening(pid, plan.host(name).management_address, 22),
        what="sshd",
        log_of=lambda name: layout.host_dir(name) / "sshd.log",
        timeout=SSHD_TIMEOUT,
    )


def _teardown(site: str, layout: LabLayout) -> None:
    """Undo everything the journal lists, plus any namespace carrying the site's prefix."""
    journal = Journal(layout.root)
    entries = list(journal.entries())
    namespaces = set(list_netns(site_prefix(site))) | {e.name for e in entries if e.kind == "netns"}
    inodes = [i for i in (netns_inode(n) for n in namespaces) if i is not None]
    journalled = [int(e.detail["pid"]) for e in entries if e.kind == "process" and journal.same_process(e)]
    terminate(journalled + pids_in_netns(inodes))
    terminate(pids_in_netns(inodes))  # anything a dying supervisor started meanwhile
    for name in sorted(namespaces):
        ip("netns", "del", name, check=False)
    # a child of a killed `up` that joined a namespace after the scan keeps it alive, unnamed: catch it
    terminate(pids_in_netns(inodes))
    _remove_secrets([e for e in entries if e.kind in ("secret", "secret-store")])
    _remove_machine_dirs([e.name for e in entries if e.kind == "machine-dir"])
    shutil.rmtree(layout.root, ignore_errors=True)


def _remove_secrets(entries: list[Entry]) -> None:
    """Delete the store the lab created; from a store it found, remove only the references it added
    (opened with the passphrase file `up` used, else AIFACTORY_PASSPHRASE_FILE; never a prompt)."""
    created = {e.name for e in entries if e.kind == "secret-store"}
    for path in created:
        Path(path).unlink(missing_ok=True)
    added = [e for e in entries if e.kind == "secret" and e.detail.get("store") not in created]
    if not added:
        return
    sources = [added[0].detail.get("passphrase_file"), os.environ.get("AIFACTORY_PASSPHRASE_FILE")]
    for passphrase_source in [p for p in sources if p]:
        try:
            store = SecretStore(Path(added[0].detail["store"]), read_passphrase(passphrase_source))
            for entry in added:
                store.remove(entry.name)
            return
        except SecretError:
            continue
    log.warning("could not remove the lab's BMC credentials from the site's secret store")


def _remove_machine_dirs(directories: list[str]) -> None:
    if list_netns(PREFIX):
        return  # another lab may use them as mount points
    for directory in sorted(set(directories), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
