"""How fast does `aifactory deploy` install the runtime, and what does a no-op re-run cost?

    .venv/bin/python benchmarks/deploy_bench.py floor [--hosts 3] [--processes] [--keep]
    .venv/bin/python benchmarks/deploy_bench.py scale [--hosts 8] [--keep]

`floor` (issue 31): brings up the lab site under another name with `--hosts` hosts in all (1 control
host + the rest CPU hosts; 3 is the lab), builds and imports one bundle with the prebuilt runtime
tree, and measures in one run:
- the first deploy of every host (wall), against 232 s, the lab's 3-host first deploy measured for
  issue 31 before the runtime tree and the site store;
- its floor: on every host at once, stock `tar --zstd -x` of the runtime tree from the host's
  verified bundle into a scratch folder, then a restart of every service the deploy left running
  there and the wait until the inference service's health check answers (what a deploy cannot do
  without); the ratio first deploy / floor
  (target: at most 2x), and each one's busy CPU-seconds on the machine (/proc/stat: the controller's
  and the hosts' work together, as they share the machine's cores), the bound on the deploy's wall;
- the bytes the control host's namespace sent during the first deploy (tx_bytes of its interfaces
  but loopback), per host, against the bundle's size (target: at most 5% of it per host; issue 31
  measures it with 8 hosts: `--hosts 8`);
- with `--processes`, where the first deploy's CPU went: Linux process accounting (`accton`, Debian's
  `acct`) on during the first deploy, then the CPU of every process it started, on the controller and
  in the lab's hosts, summed by command name (benchmarks/process_cpu.py; machine-wide, so run it on
  a quiet machine).

`path` (issue 31's measured path to 10,000 hosts): for each count of `--points` (default 3,8,32
hosts in all), brings up a lab of that many hosts and deploys it (the bundle with the runtime tree),
the labs all up at once, then measures the converged probe (`check_converged`, what `aifactory up`
and a re-run do first) and a no-op `deploy --full`: wall, controller CPU (ansible and its ssh
clients) and the machine's busy CPU (/proc/stat: the controller's, the lab hosts' and aifactory's
own work on the shared cores). Lines a + b*N fitted through the first two points project the last
one (target: within 25% of what is measured): its controller CPU on the line through the two CPU
figures; its wall on the larger of the line through the two walls and the line through the two busy
CPU figures over this machine's cores (the lab's hosts run on the controller's cores: from some host
count on, a run waits for the cores, not for its hosts). The projection to 10,000 hosts takes the
controller CPU-seconds spread over the control host's cores, at most forks at once, and rounds of
forks hosts: method in docs/deploy.md. Every run uses `--forks` (default 100, what docs/deploy.md
tells a national site to give `aifactory deploy`), so that all the hosts of every point are worked
on at once, as the projection assumes. The probe (under Ansible's linear strategy, as `aifactory
deploy` runs it) is the median of fifteen runs, followed by five under Mitogen's strategy for
comparison, the labs' probes interleaved (one probe of each lab a round, their order turned each
round), so that a slow stretch of this shared machine falls on every point alike; the no-op deploy
the median of three. The deploys run with slurmd's node check off (PATH_EXTRA_VARS: a host load that
the lab puts on the controller's cores), and each probe series and each no-op deploy start once the
machine is quiet (wait_until_quiet: the hosts' services starting).

`scale`:
Needs root and the lab's prerequisites (docs/lab.md). Grows a copy of the lab site under another
site name (`bench<pid>`) to 1 control host + (hosts + 1) CPU hosts, builds and imports one bundle for
it, then measures in one run:
- 1 host:  first deploy, the no-op re-run (`aifactory deploy` as an admin re-runs it: converged hosts
           are read and left out, docs/deploy.md), and the no-op re-run of every role (`--full`),
           each `--limit`ed to the last CPU host;
- N hosts: the same three runs, `--limit`ed to the other N CPU hosts;
- N hosts: the `--full` no-op re-run with Ansible's stock settings (forks 5, pipelining off, default
  ssh_args, no fact cache, default poll interval).
The lab's hosts share this machine's cores with the controller, so wall times are reported and the
runs are judged by the controller's CPU-seconds (ansible-playbook and its ssh clients) per host.
Targets: CPU-s per host at N hosts <= 1.2x that at 1 host; the no-op re-run under 30% of the first
run; the tuned no-op re-run at least 1.5x faster than with stock settings (both with every role,
`--full`: the settings are what is compared). Exit status 0 whether or not the targets are met: it
measures. The lab is taken down at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.deploy import DeployOptions, DeployResult, DeploySettings, deploy_site  # noqa: E402
from aifactory.deploy.settings import MITOGEN_STRATEGY  # noqa: E402
from aifactory.plan import plan_site  # noqa: E402
from benchmarks.process_cpu import (  # noqa: E402
    AccountingError,
    CommandCpu,
    accounting,
    accton,
    cpu_by_command,
    read_records,
)

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
LAB_SPEC = REPO / "inventory" / "lab" / "site.yaml"
CPU_SHARE_TARGET = 1.2
NOOP_TARGET = 0.30
STOCK_TARGET = 1.5
FLOOR_TARGET = 2.0  # first deploy / floor
BYTES_TARGET = 0.05  # control host's bytes sent per host / bundle size
BEFORE_SECONDS = 232.0  # the lab's 3-host first deploy when issue 31 was filed
NATIONAL_FORKS = 100  # the forks docs/deploy.md gives a national site's `aifactory deploy`
# path: the lab's hosts run on the controller's cores, and slurmd's node check (every 15 s on each
# compute node in the lab, docs/health.md) would take about one of this machine's two cores at 32
# hosts, a load a real site's hosts carry on their own CPUs: the path's deploys turn it off, so that
# what grows with the host count is the deploy's own cost.
PATH_EXTRA_VARS = {"slurm_health_check_interval": 0}
# path: the probe is short (2-3 s at the small points, where a few tenths of a second on this shared
# machine move the fitted line's slope by half: run 8 in docs/deploy.md, with five), so each point
# takes the median of fifteen runs of it; the no-op --full deploy the median of three.
PROBE_REPEATS = 15
MITOGEN_PROBE_REPEATS = 5
FULL_REPEATS = 3
PROJECTION_TARGET = 0.25  # the last point within 25% of its projection from the first two
# path: after a first deploy the lab's hosts start their services (each compute host's inference
# service loads torch) on the controller's own cores, for a minute or more at 32 hosts; a probe or a
# no-op deploy measured then pays for that start-up, a host load a real site's hosts carry on their
# own CPUs. So each waits until this machine is quiet: busy under QUIET_BUSY over QUIET_WINDOW s, for
# at most QUIET_LIMIT s (what was waited and the last busy share are printed with the point).
QUIET_BUSY = 0.3
QUIET_WINDOW = 2.0
QUIET_LIMIT = 120.0


@dataclass(frozen=True)
class Measure:
    label: str
    hosts: int
    wall: float
    cpu: float
    changed: int
    exit_code: int

    @property
    def cpu_per_host(self) -> float:
        return self.cpu / self.hosts

    def row(self) -> str:
        return (
            f"{self.label:<34} {self.hosts:>5} {self.wall:>8.1f} {self.cpu:>8.1f} "
            f"{self.cpu_per_host:>10.2f} {self.changed:>7} {self.exit_code:>4}"
        )


def grown_spec(folder: Path, site: str, cpu_hosts: int) -> Path:
    """The lab spec under another site name, with `cpu_hosts` hosts in its CPU pool."""
    text = LAB_SPEC.read_text()
    text, named = re.subn(r"(?m)^site:\n  name: lab$", f"site:\n  name: {site}", text)
    pool_count = r"(?m)(^  - name: cpu\b.*\n(?:    .*\n)*?    count: )2$"
    text, grown = re.subn(pool_count, rf"\g<1>{cpu_hosts}", text)
    if named != 1 or grown != 1:
        raise SystemExit("inventory/lab/site.yaml changed shape: cannot grow it for the benchmark")
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "site.yaml"
    spec.write_text(text)
    return spec


def measure(
    label: str, spec: Path, hosts: int, limit: str, settings: DeploySettings, *, full: bool = False
) -> Measure:
    from aifactory.lab import lab_connection
    from aifactory.plan import plan_site

    planned = plan_site(spec, write_lock=False)
    result: DeployResult = deploy_site(
        planned,
        connection=lab_connection(planned.plan.name),
        options=DeployOptions(limit=limit, settings=settings, full=full),
    )
    measured = Measure(
        label,
        hosts,
        result.wall_seconds,
        result.controller_cpu_seconds,
        result.changed,
        int(result.exit_code),
    )
    print(measured.row(), flush=True)
    if result.exit_code != 0:
        print(f"  failed hosts: {result.failed_hosts}; event log {result.event_log}", flush=True)
    return measured


def verdict(name: str, value: float, target: float, *, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    bound = "<=" if at_most else ">="
    return f"{name:<58} {value:6.2f}  target {bound} {target:<5} {'met' if met else 'NOT met'}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=("floor", "path", "scale"), default="scale")
    parser.add_argument("--points", default="3,8,32", help="path: host counts (default 3,8,32)")
    parser.add_argument("--cores", type=int, default=32, help="path: the projected control host's cores")
    parser.add_argument(
        "--forks",
        type=int,
        default=NATIONAL_FORKS,
        help=f"path: the runs' and the projection's forks (deploy --forks; default {NATIONAL_FORKS})",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        help="floor: hosts in all (default 3); scale: hosts of the large runs (default 8)",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="floor: the first deploy's CPU by process (Linux process accounting: accton, Debian's acct)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (the lab uses namespaces)")
    if args.mode == "floor":
        try:
            if args.processes:
                accton()  # before the lab comes up: say what is missing at once
            return floor(args.hosts or 3, keep=args.keep, processes=args.processes)
        except AccountingError as exc:
            raise SystemExit(f"--processes: {exc}") from None
    if args.mode == "path":
        points = [int(n) for n in args.points.split(",")]
        return path(points, cores=args.cores, forks=args.forks, keep=args.keep)
    args.hosts = args.hosts or 8
    from aifactory.lab import lab_down, lab_up
    from tests.conftest import build_and_import

    site = f"bench{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    os.environ["AIFACTORY_STATE_HOME"] = str(work / "state")
    os.environ["AIFACTORY_BUNDLES_HOME"] = str(work / "bundles")
    cpu_hosts = args.hosts + 1
    spec = grown_spec(work / "spec", site, cpu_hosts)
    planned = plan_site(spec)
    names = [h.name for h in planned.plan.hosts if h.pool == "cpu"]
    single = names[-1]
    print(f"lab {site}: 1 control host + {cpu_hosts} CPU hosts on {os.cpu_count()} cores; state in {work}")
    lab_up(planned)
    try:
        bundle = build_and_import(spec, site, work)
        print(f"bundle {bundle.version} imported\n")
        print(
            f"{'run':<34} {'hosts':>5} {'wall s':>8} {'cpu s':>8} {'cpu s/host':>10} {'changed':>7} "
            f"{'exit':>4}"
        )
        tuned, stock = DeploySettings(), DeploySettings.stock()
        many_limit = f"pool_cpu:!{single}"
        n = args.hosts
        first_1 = measure("first deploy, 1 host", spec, 1, single, tuned)
        noop_1 = measure("no-op re-run, 1 host", spec, 1, single, tuned)
        full_1 = measure("no-op re-run --full, 1 host", spec, 1, single, tuned, full=True)
        first_n = measure(f"first deploy, {n} hosts", spec, n, many_limit, tuned)
        noop_n = measure(f"no-op re-run, {n} hosts", spec, n, many_limit, tuned)
        full_n = measure(f"no-op re-run --full, {n} hosts", spec, n, many_limit, tuned, full=True)
        stock_n = measure(f"no-op re-run --full, {n} hosts, stock", spec, n, many_limit, stock, full=True)
    finally:
        if not args.keep:
            lab_down(site)
    print()
    print(
        verdict(
            f"CPU-s per host, {args.hosts} hosts / 1 host (first deploy)",
            first_n.cpu_per_host / first_1.cpu_per_host,
            CPU_SHARE_TARGET,
            at_most=True,
        )
    )
    print(
        verdict(
            f"CPU-s per host, {args.hosts} hosts / 1 host (no-op re-run)",
            noop_n.cpu_per_host / noop_1.cpu_per_host,
            CPU_SHARE_TARGET,
            at_most=True,
        )
    )
    print(
        verdict(
            f"CPU-s per host, {args.hosts} hosts / 1 host (no-op re-run --full)",
            full_n.cpu_per_host / full_1.cpu_per_host,
            CPU_SHARE_TARGET,
            at_most=True,
        )
    )
    print(
        verdict(
            f"no-op / first, wall, {args.hosts} hosts", noop_n.wall / first_n.wall, NOOP_TARGET, at_most=True
        )
    )
    print(verdict("no-op / first, wall, 1 host", noop_1.wall / first_1.wall, NOOP_TARGET, at_most=True))
    print(
        f"(every role, --full: no-op / first, wall, {args.hosts} hosts {full_n.wall / first_n.wall:.2f}; "
        f"1 host {full_1.wall / first_1.wall:.2f})"
    )
    print(
        verdict(
            f"stock / tuned no-op --full, controller CPU-s, {args.hosts} hosts",
            stock_n.cpu / full_n.cpu,
            STOCK_TARGET,
            at_most=False,
        )
    )
    print(
        verdict(
            f"stock / tuned no-op --full, wall, {args.hosts} hosts",
            stock_n.wall / full_n.wall,
            STOCK_TARGET,
            at_most=False,
        )
    )
    return 0


def sent_bytes(pid: int) -> int:
    """Bytes sent by the interfaces of the network namespace of `pid`, loopback left out."""
    total = 0
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, counters = line.split(":", 1)
        if name.strip() != "lo":
            total += int(counters.split()[8])
    return total


# Run on each host (arguments, never interpolated): extract the tree as the runtime role does, then
# restart, one after another as the deploy starts them, every service the deploy left running on the
# host (munge, slurmd or slurmctld, the inference service...: each unit in /etc/systemd/system the
# supervisor reports running), and wait for the inference service's health check (https as
# deployed, else http).
FLOOR_SCRIPT = """
set -e
scratch=$(mktemp -d /var/tmp/deploy-floor.XXXXXX)
tar --zstd --extract --no-same-owner --file "$1" --directory "$scratch"
rm -rf "$scratch"
for unit in /etc/systemd/system/*.service; do
  name=${unit##*/}
  if "$2" status "$name" >/dev/null 2>&1; then
    "$2" restart "$name" >/dev/null
  fi
done
for _ in $(seq 600); do
  for scheme in https http; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$scheme://$3:8600/healthz" || true)
    [ "$code" = 200 ] && exit 0
  done
  sleep 0.2
done
echo "the inference service on $3 did not answer its health check" >&2
exit 1
"""


def measure_floor(site: str, planned_hosts: list[tuple[str, str]], archive: str) -> float:
    """Wall seconds of FLOOR_SCRIPT on every host at once."""
    import subprocess

    from aifactory.lab.access import SERVICE_COMMAND
    from aifactory.lab.hosts import enter_argv
    from aifactory.lab.query import lab_status

    status = lab_status(site)
    started = time.monotonic()
    children = [
        subprocess.Popen(
            [
                *enter_argv(status.host(name).anchor.pid),
                "sh",
                "-c",
                FLOOR_SCRIPT,
                "floor",
                archive,
                SERVICE_COMMAND,
                address,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, address in planned_hosts
    ]
    for (name, _), child in zip(planned_hosts, children, strict=True):
        _, err = child.communicate(timeout=900)
        if child.returncode != 0:
            raise SystemExit(f"the floor failed on {name}: {err.strip()}")
    return time.monotonic() - started


def floor(hosts: int, *, keep: bool, processes: bool = False) -> int:
    """The first deploy of `hosts` lab hosts against its floor, and the control host's bytes sent."""
    import json

    from aifactory.lab import lab_connection, lab_down, lab_up
    from aifactory.lab.query import lab_status
    from tests.conftest import build_and_import

    if hosts < 2:
        raise SystemExit("--hosts: at least 2 (the control host and one CPU host)")
    site = f"bench{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    os.environ["AIFACTORY_STATE_HOME"] = str(work / "state")
    os.environ["AIFACTORY_BUNDLES_HOME"] = str(work / "bundles")
    spec = grown_spec(work / "spec", site, hosts - 1)
    planned = plan_site(spec)
    print(f"lab {site}: {hosts} hosts (1 control) on {os.cpu_count()} cores; state in {work}", flush=True)
    lab_up(planned)
    try:
        bundle = build_and_import(spec, site, work, runtime_trees=True)
        size = (work / f"{site}.tar").stat().st_size
        manifest = json.loads((bundle.root / "manifest.json").read_text())
        trees = manifest["contents"]["runtime_trees"]
        print(
            f"bundle {bundle.version} with runtime tree(s) {', '.join(trees)}: {size / 1e6:.0f} MB",
            flush=True,
        )
        control = lab_status(site)
        control_pid = control.host(control.control_host or "").anchor.pid
        before = sent_bytes(control_pid)
        busy_before = machine_busy_cpu()
        with accounting(work / "first-deploy.pacct") if processes else nullcontext() as pacct:
            started = time.time()
            first: DeployResult = deploy_site(
                plan_site(spec, write_lock=False),
                connection=lab_connection(site),
                options=DeployOptions(),
            )
            ended = time.time()
        sent = sent_bytes(control_pid) - before
        first_busy = machine_busy_cpu() - busy_before
        by_command = cpu_by_command(read_records(pacct), started, ended) if pacct else []
        if first.exit_code != 0:
            raise SystemExit(f"the first deploy failed: {first.failed_hosts}; event log {first.event_log}")
        targets = [(h.name, h.management_address) for h in planned.plan.hosts]
        tag = next(iter(trees))
        archive = f"/var/lib/aifactory/bundle/{bundle.version}/{trees[tag]['archive']}"
        busy_before = machine_busy_cpu()
        floor_seconds = measure_floor(site, targets, archive)
        floor_busy = machine_busy_cpu() - busy_before
    finally:
        if not keep:
            lab_down(site)
    print()
    cores = os.cpu_count() or 1
    print(
        f"first deploy, {hosts} hosts: {first.wall_seconds:.1f} s wall, "
        f"{first.controller_cpu_seconds:.1f} s controller CPU, {first_busy:.1f} s busy CPU on the machine"
    )
    print(
        f"floor (tar -x of the tree, services restarted, healthy; all hosts at once): {floor_seconds:.1f} s"
        f" wall, {floor_busy:.1f} s busy CPU on the machine"
    )
    print(verdict("first deploy / floor", first.wall_seconds / floor_seconds, FLOOR_TARGET, at_most=True))
    # Where the lab's hosts and the controller share this machine's cores, no deploy's wall is below
    # its busy CPU-seconds spread over them: the bound the target sets on that CPU.
    print(
        f"  the machine's busy CPU during the first deploy over its {cores} cores: at least "
        f"{first_busy / cores:.1f} s of wall; {FLOOR_TARGET:g}x the floor allows "
        f"{FLOOR_TARGET * floor_seconds * cores:.0f} CPU-s on {cores} cores, the deploy used {first_busy:.0f}"
    )
    print_by_command(by_command)
    print(
        f"against the {BEFORE_SECONDS:.0f} s measured for issue 31: "
        f"{first.wall_seconds / BEFORE_SECONDS:.2f}x"
    )
    per_host = sent / hosts
    print(
        f"bytes sent from the control host's namespace: {sent / 1e6:.1f} MB, {per_host / 1e6:.2f} MB per host"
    )
    print(verdict("bytes per host / bundle size", per_host / size, BYTES_TARGET, at_most=True))
    return 0


def print_by_command(by_command: list[CommandCpu], most: int = 12) -> None:
    if not by_command:
        return
    total = sum(c.cpu_seconds for c in by_command)
    processes = sum(c.processes for c in by_command)
    print(f"  the first deploy's processes (process accounting): {processes}, {total:.1f} CPU-s; by command:")
    for entry in by_command[:most]:
        print(f"    {entry.cpu_seconds:7.1f} CPU-s  {entry.processes:6d}  {entry.command}")
    rest = by_command[most:]
    if rest:
        rest_cpu, rest_count = sum(c.cpu_seconds for c in rest), sum(c.processes for c in rest)
        print(f"    {rest_cpu:7.1f} CPU-s  {rest_count:6d}  (the rest)")


@dataclass(frozen=True)
class Timed:
    """One run: its wall, the controller's CPU-seconds (ansible and its ssh clients) and the machine's
    busy CPU-seconds (the controller's, the lab hosts' and aifactory's own, on the shared cores)."""

    wall: float
    cpu: float
    busy: float


def medians(runs: list[Timed]) -> Timed:
    return Timed(
        statistics.median(r.wall for r in runs),
        statistics.median(r.cpu for r in runs),
        statistics.median(r.busy for r in runs),
    )


@dataclass(frozen=True)
class PathPoint:
    hosts: int
    first_wall: float
    probe: Timed
    full: Timed
    probe_mitogen: Timed  # the probe under Mitogen's strategy, for comparison (not projected)


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_jiffies() -> tuple[int, int]:
    """This machine's CPU time so far, in clock ticks: (all, idle or waiting on I/O)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields[:8]), idle  # user..steal; guest time is already in user


def machine_busy_cpu() -> float:
    """CPU-seconds this machine has been busy so far, every process's: in the lab, the controller's
    and the hosts' alike (they share the machine's cores)."""
    total, idle = _cpu_jiffies()
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def cpu_busy_share(window: float) -> float:
    """The share of this machine's CPU time that was busy (not idle, not waiting on I/O) over `window` s."""
    total0, idle0 = _cpu_jiffies()
    time.sleep(window)
    total1, idle1 = _cpu_jiffies()
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else 0.0


def wait_until_quiet(hosts: int, before: str) -> None:
    """Wait (at most QUIET_LIMIT s) until the machine is quiet, and say how long it took."""
    started = time.monotonic()
    busy = cpu_busy_share(QUIET_WINDOW)
    while busy >= QUIET_BUSY and time.monotonic() - started < QUIET_LIMIT:
        busy = cpu_busy_share(QUIET_WINDOW)
    waited = time.monotonic() - started
    print(f"  {hosts} hosts, before the {before}: {waited:.0f} s until quiet (busy {busy:.0%})")


def timed(run: Callable[[], T]) -> tuple[Timed, T]:
    """`run()` timed: wall, the controller's CPU (this process's children) and the machine's busy CPU."""
    cpu, busy, started = children_cpu(), machine_busy_cpu(), time.monotonic()
    result = run()
    return Timed(time.monotonic() - started, children_cpu() - cpu, machine_busy_cpu() - busy), result


@dataclass(frozen=True)
class PathLab:
    """A deployed lab of the path: its host count, site name, spec and first deploy's wall."""

    hosts: int
    site: str
    spec: Path
    first_wall: float


def deployed_lab(hosts: int, work: Path, settings: DeploySettings, up: list[str]) -> PathLab:
    """A lab of `hosts` hosts brought up (its site added to `up`, for the caller to take down) and
    deployed with the bundle with the runtime tree."""
    from aifactory.lab import lab_connection, lab_up
    from tests.conftest import build_and_import

    site = f"path{hosts}x{os.getpid() % 10000}"
    folder = work / site
    spec = grown_spec(folder / "spec", site, hosts - 1)
    up.append(site)
    lab_up(plan_site(spec))
    # The runtime tree: the first deploys (not measured here) of a large lab in minutes, not hours.
    build_and_import(spec, site, folder, runtime_trees=True)
    first = deploy_site(
        plan_site(spec, write_lock=False),
        connection=lab_connection(site),
        options=DeployOptions(settings=settings, extra_vars=PATH_EXTRA_VARS),
    )
    if first.exit_code != 0:
        raise SystemExit(f"{hosts} hosts: the first deploy failed: {first.failed_hosts} ({first.event_log})")
    print(f"  {hosts} hosts: deployed in {first.wall_seconds:.1f} s", flush=True)
    return PathLab(hosts, site, spec, first.wall_seconds)


def probe_once(lab: PathLab, settings: DeploySettings) -> Timed:
    """One converged probe of the lab, which must find every host converged."""
    from aifactory.deploy import check_converged
    from aifactory.lab import lab_connection

    run, found = timed(
        lambda: check_converged(
            plan_site(lab.spec, write_lock=False),
            connection=lab_connection(lab.site),
            settings=settings,
            extra_vars=PATH_EXTRA_VARS,
        )
    )
    unconverged = sorted(h for h, why in found.items() if why is not None)
    if unconverged:
        raise SystemExit(f"{lab.hosts} hosts: the probe found hosts not converged: {unconverged}")
    return run


def interleaved_probes(labs: list[PathLab], settings: DeploySettings, rounds: int) -> dict[int, list[Timed]]:
    """`rounds` rounds of one probe of each lab, the labs' order turned each round: a slow stretch of
    this shared machine falls on every point alike instead of on the one measured then."""
    runs: dict[int, list[Timed]] = {lab.hosts: [] for lab in labs}
    for turn in range(rounds):
        shift = turn % len(labs)
        for lab in labs[shift:] + labs[:shift]:
            runs[lab.hosts].append(probe_once(lab, settings))
    for hosts, timed_runs in runs.items():
        # The spread says whether a point's noise is its runs' (more runs would steady it) or the
        # point's own (every run of it off the line alike).
        print(
            f"  {hosts} hosts, {len(timed_runs)} probes ({settings.probe_strategy}): "
            f"wall {min(r.wall for r in timed_runs):.1f}-{max(r.wall for r in timed_runs):.1f} s, "
            f"CPU {min(r.cpu for r in timed_runs):.2f}-{max(r.cpu for r in timed_runs):.2f} s, "
            f"machine busy {min(r.busy for r in timed_runs):.1f}-{max(r.busy for r in timed_runs):.1f} CPU-s",
            flush=True,
        )
    return runs


def noop_fulls(lab: PathLab, settings: DeploySettings) -> list[Timed]:
    """FULL_REPEATS no-op `deploy --full` runs of the lab, each once the machine is quiet; each must
    change nothing."""
    from aifactory.lab import lab_connection

    fulls: list[Timed] = []
    for _ in range(FULL_REPEATS):
        wait_until_quiet(lab.hosts, "no-op --full")
        run, result = timed(
            lambda: deploy_site(
                plan_site(lab.spec, write_lock=False),
                connection=lab_connection(lab.site),
                options=DeployOptions(full=True, settings=settings, extra_vars=PATH_EXTRA_VARS),
            )
        )
        if result.exit_code != 0 or result.changed:
            raise SystemExit(
                f"{lab.hosts} hosts: the no-op --full deploy changed {result.changed}"
                f" (exit {result.exit_code})"
            )
        # The deploy's own figures for wall and controller CPU (its ansible-playbook alone).
        fulls.append(replace(run, wall=result.wall_seconds, cpu=result.controller_cpu_seconds))
    return fulls


def path_points(points: list[int], work: Path, settings: DeploySettings) -> list[PathPoint]:
    """A lab of each host count, all up at once: each deployed in turn, then the probes of every lab
    interleaved (the product's, then Mitogen's for comparison), then each lab's no-op --full deploys."""
    from aifactory.lab import lab_down

    up: list[str] = []
    try:
        labs = [deployed_lab(n, work, settings, up) for n in points]
        wait_until_quiet(points[-1], "probes")
        probes = interleaved_probes(labs, settings, PROBE_REPEATS)
        mitogen = interleaved_probes(
            labs, replace(settings, probe_strategy=MITOGEN_STRATEGY), MITOGEN_PROBE_REPEATS
        )
        fulls = {lab.hosts: noop_fulls(lab, settings) for lab in labs}
    finally:
        for site in up:
            lab_down(site)
    print(
        f"{'hosts':>5} {'first s':>10} {'probe s':>9} {'probe cpu':>9} {'probe busy':>10} "
        f"{'full s':>9} {'full cpu':>9} {'full busy':>10}"
    )
    measured = []
    for lab in labs:
        point = PathPoint(
            lab.hosts,
            lab.first_wall,
            medians(probes[lab.hosts]),
            medians(fulls[lab.hosts]),
            medians(mitogen[lab.hosts]),
        )
        print(
            f"{point.hosts:>5} {point.first_wall:>10.1f} {point.probe.wall:>9.1f} {point.probe.cpu:>9.1f} "
            f"{point.probe.busy:>10.1f} {point.full.wall:>9.1f} {point.full.cpu:>9.1f} "
            f"{point.full.busy:>10.1f}   (Mitogen's probe: {point.probe_mitogen.wall:.1f} s, "
            f"{point.probe_mitogen.cpu:.1f} CPU-s)",
            flush=True,
        )
        measured.append(point)
    return measured


def path(points: list[int], *, cores: int, forks: int, keep: bool) -> int:
    """The converged probe and a no-op --full deploy at each host count; the projection to 10,000."""
    if len(points) < 3 or sorted(points) != points or points[0] < 2:
        raise SystemExit("--points: three or more increasing host counts, the first at least 2")
    work = Path(tempfile.mkdtemp(prefix="deploy-path-"))
    os.environ["AIFACTORY_STATE_HOME"] = str(work / "state")
    os.environ["AIFACTORY_BUNDLES_HOME"] = str(work / "bundles")
    print(
        f"labs of {', '.join(map(str, points))} hosts on {os.cpu_count()} cores, forks {forks}; "
        f"state in {work}"
    )
    settings = replace(DeploySettings(), forks=forks)
    measured = path_points(points, work, settings)
    first, second, last = measured[0], measured[1], measured[-1]
    here = os.cpu_count() or 1
    print()
    for label, attr in (("probe", "probe"), ("no-op --full", "full")):
        runs = [getattr(p, attr) for p in (first, second, last)]
        print(check_line(f"{label} cpu", first.hosts, second.hosts, last.hosts, [r.cpu for r in runs]))
        print(wall_check(label, first.hosts, second.hosts, last.hosts, runs, cores=here))
        print(projection(label, first, second, attr, cores=cores, forks=forks))
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


def line_at(x0: int, y0: float, x1: int, y1: float, x: int) -> float:
    """The line a + b*x through (x0, y0) and (x1, y1), at x."""
    return y0 + (y1 - y0) / (x1 - x0) * (x - x0)


def judged(measured: float, projected: float) -> str:
    off = (measured - projected) / projected
    met = "met" if abs(off) <= PROJECTION_TARGET else "NOT met"
    return f"{off:+.0%}; target within {PROJECTION_TARGET:.0%}: {met}"


def check_line(label: str, x0: int, x1: int, last: int, values: list[float]) -> str:
    """The last point against the line through the first two."""
    projected = line_at(x0, values[0], x1, values[1], last)
    return (
        f"{label} at {last} hosts: measured {values[2]:.1f} s, projected {projected:.1f} s "
        f"({judged(values[2], projected)})"
    )


def wall_check(label: str, x0: int, x1: int, last: int, runs: list[Timed], *, cores: int) -> str:
    """The last point's wall against its projection from the first two: on the lab the hosts' work
    runs on the controller's own cores, so a run's wall is the larger of the line through the two
    walls (its latency: all hosts at once) and the machine's busy CPU-seconds (the line through the
    two points) over this machine's cores; docs/deploy.md."""
    by_line = line_at(x0, runs[0].wall, x1, runs[1].wall, last)
    by_cpu = line_at(x0, runs[0].busy, x1, runs[1].busy, last) / cores
    projected = max(by_line, by_cpu)
    return (
        f"{label} wall at {last} hosts: measured {runs[2].wall:.1f} s, projected {projected:.1f} s "
        f"(the larger of the walls' line, {by_line:.1f} s, and the machine's busy CPU over its {cores} "
        f"cores, {by_cpu:.1f} s; {judged(runs[2].wall, projected)})"
    )


def value(point: PathPoint, attr: str, kind: str) -> float:
    found: float = getattr(getattr(point, attr), kind)
    return found


def projection(label: str, first: PathPoint, second: PathPoint, attr: str, *, cores: int, forks: int) -> str:
    """The wall at 10,000 hosts: the larger of two bounds, the controller's CPU-seconds (the line
    through the two points) spread over min(cores, forks) workers, and the hosts taken `forks` at a
    time, each round as long as the whole run at the smallest point (all its hosts in one round)."""
    cpu_10k = line_at(
        first.hosts, value(first, attr, "cpu"), second.hosts, value(second, attr, "cpu"), 10_000
    )
    by_cpu = cpu_10k / min(cores, forks)
    rounds = -(-10_000 // forks)
    by_rounds = rounds * value(first, attr, "wall")
    wall_10k = max(by_cpu, by_rounds)
    line = (
        f"{label} at 10,000 hosts, forks {forks}, {cores} cores: {wall_10k / 60:.1f} min "
        f"(CPU {cpu_10k / 60:.0f} CPU-min / {min(cores, forks)} = {by_cpu / 60:.1f} min; "
        f"{rounds} rounds x {value(first, attr, 'wall'):.1f} s = {by_rounds / 60:.1f} min)"
    )
    if attr == "probe":
        line += f"; target under 10 min: {'met' if wall_10k < 600 else 'NOT met'}"
    return line


if __name__ == "__main__":
    sys.exit(main())
