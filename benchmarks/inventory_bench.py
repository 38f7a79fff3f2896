"""How long does `ansible-inventory --list` take on a national site, and how much memory?

    .venv/bin/python benchmarks/inventory_bench.py [--no-baseline]

Renders the national example (inventory/examples/national/site.yaml, 1,271 hosts) as `aifactory
inventory` does, then runs the stock `ansible-inventory -i DIR --list` on it in a child process and
prints its wall time and peak resident memory (the child's ru_maxrss) against the targets (under
10 s and 200 MB). The baseline, in the same run: the same inventory with the Slurm topology moved
back into group_vars/all.yml, where it was before (Ansible copies it into every host's variables;
this took 4 min 21 s and 755 MB when measured for issue 31; `--no-baseline` skips it).

Exit status 0 whether or not the targets are met: it measures.
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


def old_layout(folder: Path, controller: str) -> None:
    """The topology back in group_vars/all.yml (as rendered before issue 31)."""
    host_file = folder / "host_vars" / f"{controller}.yml"
    host_text = host_file.read_text()
    topology = load_inventory_yaml(host_text)[SLURM_VAR]
    values = load_inventory_yaml(host_text)
    del values[SLURM_VAR]
    host_file.write_text(yaml.safe_dump(values))
    all_file = folder / "group_vars" / "all.yml"
    all_vars = load_inventory_yaml(all_file.read_text())
    del all_vars[SLURM_HOST_VAR]
    all_vars[SLURM_VAR] = topology
    all_file.write_text(yaml.safe_dump(all_vars))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the old layout (minutes)")
    args = parser.parse_args()
    plan = plan_site(NATIONAL, write_lock=False).plan
    work = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    folder = work / "inventory"
    write_inventory(build_inventory(plan), folder)
    topology_bytes = len((folder / "host_vars" / f"{plan.control_host}.yml").read_text())
    print(f"national example: {len(plan.hosts)} hosts; controller host vars {topology_bytes} bytes")
    print(f"{'layout':<40} {'wall s':>7} {'cpu s':>7} {'peak MiB':>9} {'MB out':>7}")
    wall, cpu, mib, size = list_inventory(folder)
    print(f"{'topology once (controller host vars)':<40} {wall:7.1f} {cpu:7.1f} {mib:9.0f} {size / 1e6:7.1f}")
    print(
        f"  targets: under {TARGET_SECONDS:.0f} s: {'met' if wall < TARGET_SECONDS else 'NOT met'} "
        f"(CPU {'met' if cpu < TARGET_SECONDS else 'NOT met'}: wall includes waiting for a shared machine's "
        f"cores); under {TARGET_MIB:.0f} MB: {'met' if mib < TARGET_MIB else 'NOT met'}"
    )
    if not args.no_baseline and plan.control_host is not None:
        old = work / "old" / "inventory"
        write_inventory(build_inventory(plan), old)
        old_layout(old, plan.control_host)
        old_wall, old_cpu, old_mib, old_size = list_inventory(old)
        print(
            f"{'in group_vars/all (before)':<40} {old_wall:7.1f} {old_cpu:7.1f} {old_mib:9.0f} "
            f"{old_size / 1e6:7.1f}"
        )
        print(
            f"  before / now: {old_wall / wall:.1f}x wall, {old_cpu / cpu:.1f}x CPU, "
            f"{old_mib / mib:.1f}x memory"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
