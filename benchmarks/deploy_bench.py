"""How fast does `aifactory deploy` install the runtime, and what does a no-op re-run cost?

    .venv/bin/python benchmarks/deploy_bench.py [--hosts 8] [--keep]

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
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.deploy import DeployOptions, DeployResult, DeploySettings, deploy_site  # noqa: E402
from aifactory.plan import plan_site  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LAB_SPEC = REPO / "inventory" / "lab" / "site.yaml"
CPU_SHARE_TARGET = 1.2
NOOP_TARGET = 0.30
STOCK_TARGET = 1.5


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
    parser.add_argument("--hosts", type=int, default=8, help="hosts of the large runs (default 8)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (the lab uses namespaces)")
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


if __name__ == "__main__":
    sys.exit(main())
