"""What does the quick health level cost a host: CPU seconds of one node-side run; and, with
--faults, how the continuous checks do on the lab's fault corpus.

    .venv/bin/python benchmarks/health_bench.py [--repeat 5] [--storage /dev/shm]
    .venv/bin/python benchmarks/health_bench.py --faults SPEC [--rounds 3] [--every 10]

In one run, on this machine: `python -m aifactory.runtime.health` with a quick-level task like a lab
compute host's (its services through a command that answers at once, disk and memory, ten peers on
loopback, fio on `--storage` (a mount point), one iperf3 second to its own server on loopback). CPU
is user + system time of the process and everything it waited for (fio, iperf3), from
getrusage(RUSAGE_CHILDREN); median and worst of `--repeat`, against a baseline measured in the same
run: the same interpreter starting and importing the health module without running a check. Target:
under 2 s of CPU per host (issue 22). Exit status 0 whether or not the target is met: it measures.

--faults SPEC: on the deployed lab of SPEC (`aifactory up --lab SPEC` first), with the control host's
continuous checks started here (`aifactory health SPEC --every`) and slurmd's own node checks, each
fault of the corpus (aifactory/lab/faults.py) is made `--rounds` times on the first compute host and
undone; printed: the table of every round, false admissions (a fault whose host was not drained for
its reason within 60 s), false drains (another node drained while it stood or came back), seconds to
drain (median, worst) against the 60 s target, and the baseline measured in the same run: the
control host's own runs' length (the floor under any drain it makes). Exit 1 when a round was wrong.
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
TARGET_DRAIN_S = 60.0


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
    parser.add_argument("--faults", metavar="SPEC", help="run the fault corpus on SPEC's deployed lab")
    parser.add_argument("--rounds", type=int, default=3, help="--faults: rounds of every fault")
    parser.add_argument("--every", type=float, default=10.0, help="--faults: the control checks' interval")
    args = parser.parse_args()
    if args.faults:
        return fault_rounds(args.faults, args.rounds, args.every)
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


def fault_rounds(spec: str, rounds: int, every: float) -> int:
    import signal
    import tempfile

    from aifactory.lab import faults
    from aifactory.lab.layout import LabLayout
    from aifactory.plan import plan_site

    plan = plan_site(spec, write_lock=False).plan
    nodes = [h.name for h in plan.hosts if h.role in ("cpu", "gpu")]
    target = next(h for h in plan.hosts if h.name == nodes[0])
    corpus = faults.fault_corpus(plan, target, LabLayout.for_site(plan.name))
    log = Path(tempfile.mkdtemp(prefix="health-bench-")) / "control-checks.jsonl"
    control = faults.start_control_checks(spec, every, log)
    observed = []
    try:
        for round_number in range(rounds):
            for fault in corpus:
                _wait_in_service(plan.name, nodes)
                observed.append(
                    faults.observe(
                        plan.name,
                        fault,
                        nodes,
                        drain_within_s=TARGET_DRAIN_S,
                        back_within_s=2 * TARGET_DRAIN_S,
                    )
                )
                print(f"round {round_number + 1}: {faults.table(observed[-1:]).splitlines()[1]}", flush=True)
    finally:
        faults.undo_all(plan.name, corpus)
        control.send_signal(signal.SIGTERM)
        control.wait()
    print(faults.table(observed))
    false_admissions = [o for o in observed if o.drained_after_s is None]
    false_drains = [o for o in observed if o.others_drained]
    times = [o.drained_after_s for o in observed if o.drained_after_s is not None]
    runs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    lengths = [_run_length(r) for r in runs if "finished" in r]
    print(
        f"{len(observed)} faults ({len(corpus)} kinds x {rounds}): {len(false_admissions)} false admissions, "
        f"{len(false_drains)} false drains"
    )
    if times:
        worst = max(times)
        print(
            f"seconds to drain: median {statistics.median(times):.1f}, worst {worst:.1f} "
            f"(target {TARGET_DRAIN_S:g} s: {'met' if worst <= TARGET_DRAIN_S else 'NOT met'})"
        )
    if lengths:
        floor = statistics.median(lengths)
        print(
            f"baseline: the control host's quick run takes {floor:.1f} s (median of {len(lengths)}, every "
            f"{every:g} s); worst drain / (run + interval) = {max(times or [0]) / (floor + every):.2f}"
        )
    return 1 if false_admissions or false_drains else 0


def _wait_in_service(site: str, nodes: list[str], limit_s: float = 2 * TARGET_DRAIN_S) -> None:
    from aifactory.lab import faults

    deadline = time.monotonic() + limit_s
    while not faults.all_in_service(site, nodes):
        if time.monotonic() > deadline:
            raise SystemExit(f"nodes still drained after {limit_s:g} s: {faults.slurm_nodes(site)}")
        time.sleep(1)


def _run_length(run: dict[str, object]) -> float:
    from datetime import datetime

    started = datetime.strptime(str(run["started"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    finished = datetime.strptime(str(run["finished"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    return (finished - started).total_seconds()


if __name__ == "__main__":
    sys.exit(main())
