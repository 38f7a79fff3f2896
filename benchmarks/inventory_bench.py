"""How long does `ansible-inventory --list` take on a national site, and how much memory?

    .venv/bin/python benchmarks/inventory_bench.py [--quick]

Renders the national example (inventory/examples/national/site.yaml, 1,271 hosts) as `aifactory
inventory` does, then runs the stock `ansible-inventory -i DIR --list` on it in a child process and
prints its wall time, CPU time and peak resident memory (the child's ru_maxrss) against the targets
of issue 31 (under 10 s and 200 MB). Baselines, in the same run, from the same plan:
- inline: the site's storage systems and each host's fabric rails inside the inventory's variables
  (group_vars/all and host_vars) instead of beside it in .data/, as rendered before (11 s, 327 MB
  when measured for issue 31);
- topology in all: that, and the Slurm topology in group_vars/all, where it was first (Ansible
  copies it into every host's variables: 4 min 21 s when measured for issue 31,
  132 CPU seconds and 4.2 GB peak here; `--quick` skips it).

Exit status 0 whether or not the targets are met: it measures. Wall time includes waiting for the
machine's cores when something else runs; the CPU column does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.inventory import build_inventory, write_inventory  # noqa: E402
from aifactory.inventory.render import SLURM_HOST_VAR, SLURM_VAR, load_inventory_yaml  # noqa: E402
from aifactory.plan import plan_site  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NATIONAL = REPO / "inventory" / "examples" / "national" / "site.yaml"
TARGET_SECONDS = 10.0
TARGET_MIB = 200.0


def list_inventory(folder: Path) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak MiB and output bytes of `ansible-inventory --list` in a child."""
    command = [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(folder), "--list"]
    env = {**os.environ, "ANSIBLE_HOME": str(folder.parent / "ah")}
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    size = 0
    assert child.stdout is not None
    while chunk := child.stdout.read(1 << 20):
        size += len(chunk)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"ansible-inventory failed on {folder} (status {status})")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, size


def topology_in_all(folder: Path, controller: str) -> None:
    """The topology back in group_vars/all.yml (as rendered before issue 31)."""
    host_file = folder / "host_vars" / f"{controller}.yml"
    values = load_inventory_yaml(host_file.read_text())
    topology = values.pop(SLURM_VAR)
    host_file.write_text(yaml.safe_dump(values))
    all_file = folder / "group_vars" / "all.yml"
    all_vars = load_inventory_yaml(all_file.read_text())
    del all_vars[SLURM_HOST_VAR]
    all_vars[SLURM_VAR] = topology
    all_file.write_text(yaml.safe_dump(all_vars))


def row(name: str, figures: tuple[float, float, float, int]) -> None:
    wall, cpu, mib, size = figures
    print(f"{name:<28} {wall:7.1f} {cpu:7.1f} {mib:9.0f} {size / 1e6:7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the topology-in-all layout (minutes)")
    args = parser.parse_args()
    plan = plan_site(NATIONAL, write_lock=False).plan
    inventory = build_inventory(plan)
    work = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    write_inventory(inventory, work / "now" / "inventory")
    write_inventory(inventory.inlined(), work / "inline" / "inventory")
    print(f"national example: {len(plan.hosts)} hosts; `ansible-inventory -i DIR --list`")
    print(f"{'layout':<28} {'wall s':>7} {'cpu s':>7} {'peak MiB':>9} {'MB out':>7}")
    now = list_inventory(work / "now" / "inventory")
    row("beside (.data/): now", now)
    inline = list_inventory(work / "inline" / "inventory")
    row("inline (before)", inline)
    baselines = [("inline", inline)]
    if not args.quick and plan.control_host is not None:
        write_inventory(inventory.inlined(), work / "first" / "inventory")
        topology_in_all(work / "first" / "inventory", plan.control_host)
        first = list_inventory(work / "first" / "inventory")
        row("topology in all (first)", first)
        baselines.append(("topology in all", first))
    wall, cpu, mib, _ = now
    print(
        f"targets: under {TARGET_SECONDS:.0f} s: {'met' if wall < TARGET_SECONDS else 'NOT met'} "
        f"({wall / TARGET_SECONDS:.2f} of it; CPU {cpu / TARGET_SECONDS:.2f}); under {TARGET_MIB:.0f} MB: "
        f"{'met' if mib < TARGET_MIB else 'NOT met'} ({mib / TARGET_MIB:.2f} of it)"
    )
    for name, (old_wall, old_cpu, old_mib, _) in baselines:
        print(
            f"{name} / now: {old_wall / wall:.1f}x wall, {old_cpu / cpu:.1f}x CPU, "
            f"{old_mib / mib:.1f}x memory"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
