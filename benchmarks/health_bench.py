"""What does the quick health level cost a host: CPU seconds of one node-side run.

    .venv/bin/python benchmarks/health_bench.py [--repeat 5] [--storage /dev/shm]

In one run, on this machine: `python -m aifactory.runtime.health` with a quick-level task like a lab
compute host's (its services through a command that answers at once, disk and memory, ten peers on
loopback, fio on `--storage` (a mount point), one iperf3 second to its own server on loopback). CPU
is user + system time of the process and everything it waited for (fio, iperf3), from
getrusage(RUSAGE_CHILDREN); median and worst of `--repeat`, against a baseline measured in the same
run: the same interpreter starting and importing the health module without running a check. Target:
under 2 s of CPU per host (issue 22). Exit status 0 whether or not the target is met: it measures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.runtime.health.model import HostTask, Peer  # noqa: E402

TARGET_CPU_S = 2.0


def task(storage: str) -> HostTask:
    return HostTask(
        host="bench",
        level="quick",
        services=("munge", "slurmd"),
        service_manager="supervised",
        service_command="true",  # answers "running" at once: the check's own cost is what is measured
        paths=("/", "/var"),
        storage=(storage,),
        peers=tuple(Peer(f"peer{i}", "mgmt", "127.0.0.1") for i in range(10)),
        bandwidth_peer=Peer("self", "compute", "127.0.0.1"),
        bandwidth_listen="127.0.0.1",
        iperf_port=5299,
        fio_size_mib=32,
    )


def cpu_of(argv: list[str], stdin: str) -> tuple[float, float, str]:
    """CPU seconds (user + system, waited-for descendants included), wall seconds, stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--storage", default="/dev/shm", help="a mount point fio may write 32 MiB into")
    args = parser.parse_args()
    task_json = json.dumps(task(args.storage).as_dict())
    baseline = [
        cpu_of([sys.executable, "-c", "import aifactory.runtime.health.node"], "")[0]
        for _ in range(args.repeat)
    ]
    runs = []
    for _ in range(args.repeat):
        cpu, wall, out = cpu_of([sys.executable, "-m", "aifactory.runtime.health"], task_json)
        report = json.loads(out)
        missing = [m["check"] for m in report["measurements"] if m["value"] is None]
        if missing:
            print(f"warning: not measured here: {missing}", file=sys.stderr)
        runs.append((cpu, wall))
    cpus = [c for c, _ in runs]
    median = statistics.median(cpus)
    floor = statistics.median(baseline)
    print(
        f"quick level, one host: CPU median {median:.3f} s, worst {max(cpus):.3f} s, wall median "
        f"{statistics.median(w for _, w in runs):.2f} s ({args.repeat} runs)"
    )
    print(f"baseline (interpreter + import, no check): CPU median {floor:.3f} s; ratio {median / floor:.1f}x")
    verdict = "met" if max(cpus) < TARGET_CPU_S else "NOT met"
    print(f"target: under {TARGET_CPU_S:g} s of CPU per host: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
