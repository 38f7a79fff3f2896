"""A lab host's own UTS and mount namespaces, held by an anchor process, and its private trees.

Each host gets, inside its network namespace, an anchor process started with
`unshare --mount --uts --propagation private`: it sets the planned hostname, mounts the host's
private system state and then sleeps. sshd and `lab exec` join the anchor's namespaces with
`nsenter`, so everything that runs "on" a host sees the same private view:

- `/etc` and `/var/lib`: overlays (lower: the machine's tree; upper: a per-host folder), so files
  roles write (configs, service state such as /var/lib/munge) land on that host only; the lab seeds
  `/etc/hostname`, `/etc/hosts` and an empty `/etc/resolv.conf` (air-gapped: no DNS);
- `/run`: a private tmpfs (sshd's /run/sshd, pid files, the supervisor, ssh control sockets);
- `/opt`, `/var/log`, `/var/spool`, `/var/lib/aifactory` and the plan's storage mounts: bind mounts of
  per-host (storage: per-site) folders on the machine.

A mount point the machine lacks (e.g. /srv/share) is made inside an overlay of its nearest existing
parent (e.g. /srv), so the machine's own tree is never changed. The mounts live only in the host's
mount namespace: they vanish with its last process.

Last, the host gets a root of its own, as a machine has: an overlay whose lower layer is the
machine's root file system and whose upper layer lives in the host's private /run. The mounts above
are carried into it, `/tmp`, `/root` and the state home stay the machine's (bind mounts), and the
container markers this machine may carry at its root (`/.dockerenv`: the build machine can be a
container) are hidden by a whiteout: a lab host is a machine-like environment in its own mount
namespace, not a container, and the SCAP content's "machine" platform checks exactly these files
(docs/lab.md). Everything else reads the machine's files (packages stay machine-wide); a host's
writes outside its private trees land in its own upper layer.

In that root the host has the mount layout of a hardened host (`HARDENED_LAYOUT`): /boot, /home,
/opt, /srv, /tmp, /usr, /var, /var/log and /var/tmp are each a mount of their own with the options
the hardening guide gives them, declared in the host's /etc/fstab, and every mount of a disk but
the root is nodev. A lab host has no disk to partition: a path the lab does not already give the
host privately becomes a mount by binding the host's own tree onto itself (same files), and the
kernel enforces the options on each mount as it would on a partition.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from aifactory.errors import LabError
from aifactory.lab.layout import LabLayout, make_dir
from aifactory.lab.names import LabNames
from aifactory.lab.system import wait_ready as wait_processes
from aifactory.plan.model import Host, SitePlan

# Machine paths each host gets privately, and the folder (under the host's folder) behind each.
PRIVATE_TREES = {
    "/opt": "opt",
    "/var/log": "var-log",
    "/var/spool": "var-spool",
    "/var/lib/aifactory": "var-lib-aifactory",
}
OVERLAID = ("/etc", "/var/lib")  # per-host upper layers over the machine's trees
TMPFS = ("/run",)
SERVICE_BIN = "/run/aifactory-lab/bin"
# The host's own root: an overlay of the machine's root, its upper layer in the private /run (a
# layer must not lie inside another, so not on the machine's disk), mounted here before pivot_root.
HOST_ROOT = "/run/aifactory-lab/root"
HOST_ROOT_RW = "/run/aifactory-lab/root-rw"
# Files at the machine's root that mark a container: the SCAP content's `installed_env_is_a_container`
# checks /.dockerenv and /run/.containerenv (/run is the host's own tmpfs already). Whited out.
CONTAINER_MARKERS = (".dockerenv",)
# Machine trees a host keeps writing through to the machine (where the lab's callers keep files).
SHARED_WITH_MACHINE = ("/tmp", "/root")
READY = "ready"
START_TIMEOUT = 20.0
# The mount layout of a hardened host and each mount's options (ANSSI BP-028's partitioning, which
# the SCAP profile's partition_for_* and mount_option_* rules check, in /proc/mounts and /etc/fstab).
HARDENED_LAYOUT = {
    "/boot": "nodev,nosuid,noexec",
    "/home": "nodev,nosuid,noexec",
    "/opt": "nodev,nosuid",
    "/srv": "nodev,nosuid",
    "/tmp": "nodev,nosuid,noexec",
    "/usr": "nodev",
    "/var": "nodev,nosuid,noexec",
    "/var/log": "nodev,nosuid,noexec",
    "/var/tmp": "nodev,nosuid,noexec",
}
# The plan's storage mounts: network file systems on a real site, mounted nodev,nosuid.
STORAGE_OPTIONS = "nodev,nosuid"


def machine_tool_trees() -> list[str]:
    """The machine's trees that lab hosts run programs from: the Python environment running the lab
    (the control host runs its ansible-playbook and aifactory, a host its interpreter) and the
    folder holding the aifactory package. A checkout may lie under a layout mount that is noexec
    (/tmp, /home, /var): these stay executable there (`exec_exceptions`)."""
    package_parent = Path(__file__).resolve().parent.parent.parent
    trees = sorted({str(Path(sys.prefix).resolve()), str(package_parent)}, key=lambda t: len(t))
    return [t for i, t in enumerate(trees) if not _inside(t, trees[:i])]


def exec_exceptions(host: Host, trees: list[str]) -> list[tuple[str, str]]:
    """(tree, options) for each tool tree under a noexec mount of the host's layout: bound onto itself
    with that mount's options, exec instead of noexec, so the host can run what the lab runs there."""
    found = []
    for tree in trees:
        covering = [p for p in hardened_mounts(host) if _inside(tree, [p])]
        if not covering:
            continue
        options = hardened_mounts(host)[max(covering, key=lambda p: len(PurePosixPath(p).parts))]
        if "noexec" in options.split(","):
            # `exec` said outright: mount(8) keeps a bind remount's flags it is not told to change.
            found.append((tree, ",".join(o if o != "noexec" else "exec" for o in options.split(","))))
    return found


def private_roots(host: Host) -> list[str]:
    """Paths under which a host's view differs from the machine's."""
    return [*OVERLAID, *TMPFS, *PRIVATE_TREES, *(m.path for m in host.mounts)]


def _inside(path: str, roots: list[str]) -> bool:
    pure = PurePosixPath(path)
    return any(pure == PurePosixPath(r) or PurePosixPath(r) in pure.parents for r in roots)


@dataclass(frozen=True)
class MountPlan:
    """What the setup script mounts on one host, in order."""

    overlays: list[tuple[str, Path]]  # (machine dir, per-host folder holding upper/ and work/)
    binds: list[tuple[Path, str]]  # (machine folder, path inside the host)
    machine_dirs: list[str]  # top-level mount points the machine lacks (made, journalled, removed)


def mount_plan(layout: LabLayout, host: Host) -> MountPlan:
    folder = layout.host_dir(host.name)
    binds: list[tuple[Path, str]] = [(folder / name, path) for path, name in PRIVATE_TREES.items()]
    binds += [(layout.storage_dir(m.storage), m.path) for m in host.mounts]
    overlays = [(path, folder / path.strip("/").replace("/", "-")) for path in OVERLAID]
    machine_dirs: list[str] = []
    for _, target in binds:
        already_private = (
            [d for d, _ in overlays]
            + list(TMPFS)
            + [t for _, t in binds if t != target and _inside(target, [t])]
        )
        if Path(target).is_dir() or _inside(target, already_private):
            continue
        parent = PurePosixPath(target).parent
        while not Path(parent).is_dir():
            parent = parent.parent
        if str(parent) == "/":
            machine_dirs.append(str(PurePosixPath(target).parents[-2]))
        else:
            overlays.append((str(parent), folder / "overlays" / str(parent).strip("/").replace("/", "-")))
    binds.sort(key=lambda b: len(PurePosixPath(b[1]).parts))
    overlays.sort(key=lambda o: len(PurePosixPath(o[0]).parts))
    outermost: list[tuple[str, Path]] = []
    for lower, folder in overlays:
        if not _inside(lower, [d for d, _ in outermost]):
            outermost.append((lower, folder))
    return MountPlan(outermost, binds, sorted(set(machine_dirs)))


def check_state_location(layout: LabLayout, plan: SitePlan) -> None:
    """The lab's own folder must stay visible, unchanged, from inside every host."""
    root = str(layout.root.resolve())
    if any(c in root for c in ",:\n"):
        raise LabError(
            f"the lab state folder {root} has a ',' or ':' in its path (overlayfs cannot use it)",
            hint="set AIFACTORY_STATE_HOME to a plain path",
        )
    for host in plan.hosts:
        shadowed = private_roots(host) + [d for d, _ in mount_plan(layout, host).overlays]
        if _inside(root, shadowed):
            raise LabError(
                f"the lab state folder {root} lies under a path lab hosts get privately",
                hint="set AIFACTORY_STATE_HOME outside " + ", ".join(sorted(set(shadowed))),
            )


def hosts_file(plan: SitePlan) -> str:
    lines = [
        "# written by aifactory lab: every lab host by its management address",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    lines += [f"{h.management_address}\t{h.name}" for h in plan.hosts]
    return "\n".join(lines) + "\n"


def hardened_mounts(host: Host) -> dict[str, str]:
    """Each mount point of the host's hardened layout (its storage mounts included) and its options."""
    storage = {m.path: STORAGE_OPTIONS for m in host.mounts}
    return dict(sorted({**HARDENED_LAYOUT, **storage}.items(), key=lambda item: PurePosixPath(item[0]).parts))


def fstab(host: Host) -> str:
    """The host's /etc/fstab: the mounts of its layout as the lab makes them (binds, no disk)."""
    lines = [
        f"# written by aifactory lab: the mount layout of {host.name}. A lab host has no disk of its",
        "# own: the lab mounts each of these by binding a tree (the machine's, a private one, or the",
        "# host's own) onto the mount point, with these options.",
        "# <file system> <mount point> <type> <options> <dump> <pass>",
    ]
    lines += [
        f"{path}\t{path}\tnone\tbind,{options}\t0\t0" for path, options in hardened_mounts(host).items()
    ]
    return "\n".join(lines) + "\n"


def seed_etc(layout: LabLayout, plan: SitePlan, host: Host) -> None:
    """Files the host's /etc overlay starts with (written before the overlay is mounted)."""
    upper = make_dir(layout.host_dir(host.name) / "etc" / "upper", 0o755)
    (upper / "hostname").write_text(host.name + "\n")
    (upper / "hosts").write_text(hosts_file(plan))
    (upper / "resolv.conf").write_text("# aifactory lab: air-gapped, no DNS\n")
    (upper / "fstab").write_text(fstab(host))
    for name in ("hostname", "hosts", "resolv.conf", "fstab"):
        os.chmod(upper / name, 0o644)


def setup_script(layout: LabLayout, host: Host, mounts: MountPlan) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"# aifactory lab: private system state of {host.name}; runs inside its own mount and UTS"
        " namespaces, then holds them.",
        "set -eu",
        f"echo {q(host.name)} > /proc/sys/kernel/hostname",
    ]
    for lower, folder in mounts.overlays:
        upper, work = folder / "upper", folder / "work"
        lines.append(f"mkdir -p {q(str(upper))} {q(str(work))}")
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        lines.append(f"mount -t overlay aifactory-lab -o {q(options)} {q(lower)}")
    for path in TMPFS:
        lines.append(f"mount -t tmpfs -o mode=0755,nosuid,nodev aifactory-lab {q(path)}")
    lines.append("mkdir -p /run/sshd /run/lock " + q(SERVICE_BIN) + " /run/aifactory-lab/ssh")
    for source, target in mounts.binds:
        lines.append(f"mkdir -p {q(str(source))} {q(target)}")
        lines.append(f"mount --bind {q(str(source))} {q(target)}")
    supervisor = layout.bin_dir / "aifactory-service"
    lines.append(f"cp {q(str(supervisor))} {q(SERVICE_BIN + '/aifactory-service')}")
    lines.append(f"chmod 0755 {q(SERVICE_BIN + '/aifactory-service')}")
    lines += own_root_lines(layout, host)
    lines.append(f"touch {q(str(layout.host_dir(host.name) / READY))}")
    lines.append("exec sleep infinity")
    return "\n".join(lines) + "\n"


def shared_paths(layout: LabLayout) -> list[str]:
    """Machine folders bound into the host's root: /tmp, /root and the state home holding the lab."""
    state_home = str(layout.root.resolve().parent.parent)
    extra = [] if _inside(state_home, list(SHARED_WITH_MACHINE)) else [state_home]
    return [*SHARED_WITH_MACHINE, *extra]


def own_root_lines(layout: LabLayout, host: Host) -> list[str]:
    """Shell lines that give the host its own root (see the module's docstring) and pivot into it.

    The layout's mount points that nothing else mounts are bound onto themselves in the new root
    first, so that what is carried in next lands on them rather than under them (a mount hidden
    under another still shows in /proc/mounts). Every mount whose parent is the root mount (the
    /proc, /sys, /dev of the machine and the host's private mounts above) is carried over with
    `mount --rbind`, unless a later one covers it (the machine's /run/netns under the private
    /run). The new root is unbindable, so carrying /run (which holds it) does not copy it into
    itself. Once inside, the layout's options are set (`layout_lines`)."""
    q = shlex.quote
    new, rw = HOST_ROOT, HOST_ROOT_RW
    lines = [
        f"mkdir -p {new} {rw}/upper {rw}/work",
    ]
    for marker in CONTAINER_MARKERS:
        lines.append(f"if [ -e /{marker} ]; then mknod {rw}/upper/{marker} c 0 0; fi")
    lines.append(
        f"mount -t overlay aifactory-lab-root -o lowerdir=/,upperdir={rw}/upper,workdir={rw}/work {new}"
    )
    shared = shared_paths(layout)
    for path in hardened_mounts(host):
        if path in shared:
            continue  # bound in from the machine below
        target = q(new + path)
        # A path the host's setup or the machine already mounts is carried in below as it is.
        lines.append(f"mountpoint -q {q(path)} || {{ mkdir -p {target} && mount --bind {target} {target}; }}")
    lines += [
        f"mount --make-unbindable {new}",
        # Top-level mounts in mount order; a later one at or above a path covers the earlier.
        "root_id=$(awk '$5 == \"/\" { id = $1 } END { print id }' /proc/self/mountinfo)",
        'awk -v root="$root_id" \'$2 == root && $5 != "/" { print $5 }\' /proc/self/mountinfo'
        " > /run/aifactory-lab/top-mounts",
        "n=0",
        "while read -r path; do",
        "  n=$((n + 1))",
        "  covered=$(tail -n +$((n + 1)) /run/aifactory-lab/top-mounts | while read -r later; do",
        '    case "$path/" in "$later"/*) echo yes; break ;; esac; done)',
        '  [ -n "$covered" ] && continue',
        f'  mkdir -p "{new}$path"',
        f'  mount --rbind "$path" "{new}$path"',
        "done < /run/aifactory-lab/top-mounts",
    ]
    for path in shared_paths(layout):
        lines.append(f"mkdir -p {q(new + path)}")
        lines.append(f"mount --rbind {q(path)} {q(new + path)}")
    lines += [
        f"mkdir -p {new}/.lab-old-root",
        f"cd {new}",
        "pivot_root . .lab-old-root",
        "cd /",
        "umount -l /.lab-old-root",
        "rmdir /.lab-old-root",
        *layout_lines(host, machine_tool_trees()),
    ]
    return lines


def layout_lines(host: Host, tool_trees: list[str]) -> list[str]:
    """Shell lines, run inside the host's own root, that set each layout mount's options, keep the
    machine's tool trees executable (`exec_exceptions`), and add nodev to every other mount of a
    disk but the root (as the hardening guide asks of local file systems), keeping its options."""
    q = shlex.quote
    lines = [
        f"mount -o {q('remount,bind,' + options)} {q(path)}"
        for path, options in hardened_mounts(host).items()
    ]
    for tree, options in exec_exceptions(host, tool_trees):
        lines.append(f"mount --bind {q(tree)} {q(tree)}")
        lines.append(f"mount -o {q('remount,bind,' + options)} {q(tree)}")
    lines += [
        "findmnt -rn -o TARGET,SOURCE,VFS-OPTIONS | while read -r target source options; do",
        '  case "$source" in /dev/*) ;; *) continue ;; esac',
        '  case ",$options," in *,nodev,*) continue ;; esac',
        '  [ "$target" = / ] && continue',
        '  mount -o "remount,bind,nodev,$options" "$(printf \'%b\' "$target")"',
        "done",
    ]
    return lines


def start_anchor(layout: LabLayout, names: LabNames, host: Host, script: str) -> subprocess.Popen[bytes]:
    folder = make_dir(layout.host_dir(host.name), 0o755)
    (folder / READY).unlink(missing_ok=True)
    path = folder / "setup.sh"
    path.write_text(script)
    log = open(folder / "anchor.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                names.host_ns(host.name),
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                str(path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
        )
    finally:
        log.close()


def wait_ready(layout: LabLayout, anchors: dict[str, subprocess.Popen[bytes]]) -> None:
    wait_processes(
        anchors,
        lambda name, _: (layout.host_dir(name) / READY).exists(),
        what="the namespaces",
        log_of=lambda name: layout.host_dir(name) / "anchor.log",
        timeout=START_TIMEOUT,
    )


def enter_argv(anchor_pid: int) -> list[str]:
    """The prefix that runs a command on a host: in its network, mount and UTS namespaces."""
    return ["nsenter", "--target", str(anchor_pid), "--net", "--mount", "--uts", "--"]
