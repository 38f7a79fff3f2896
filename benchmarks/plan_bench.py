"""How fast is load + validate + plan for a 10,000-host site, against serializing its plan?

    .venv/bin/python benchmarks/plan_bench.py [--hosts 10000 --pools 100 --rails 8 --repeat 3]

Generates a site (benchmarks/sites.py: 100 pools of 100 GPU hosts, an 8-rail compute fabric, so
over 100,000 addresses), then measures in one run:
- plan: `plan_site(path)`, reading the YAML, validating it, allocating every address and writing
  the allocation lock beside the spec (a cold run: the lock is removed before each repeat);
- dumps: `json.dumps(plan_dict)` with default arguments, of the plan as a dict built beforehand;
and prints both, their ratio, and the targets (plan under 1 s and under 3x dumps). The best of
`--repeat` runs counts for each.

Then hostile specs (benchmarks/sites.py `aliased_site`): 4,000 YAML-aliased copies of one dataset
(16 KB of text) and 1,000 of one fabric, each validated in a fresh child process (so its peak
memory is its own), best of `--repeat`: the time against the 10,000-host site's load+validate
measured above (the baseline), the child's peak resident memory against the same child's before
validating (Python and the imports), and the targets (under 2 s and 300 MB each).

Exit status 0 whether or not the targets are met: it measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.plan import plan_site  # noqa: E402
from aifactory.plan.addressing import lock_path_for  # noqa: E402
from aifactory.spec import load_spec  # noqa: E402
from benchmarks.sites import aliased_site, generate_site  # noqa: E402

TARGET_SECONDS = 1.0
TARGET_RATIO = 3.0
HOSTILE = (("datasets", 4000), ("fabrics", 1000))
TARGET_HOSTILE_SECONDS = 2.0
TARGET_HOSTILE_MB = 300
ROOT = Path(__file__).resolve().parent.parent
# Run in a fresh interpreter: the places data is loaded before the clock starts, as `validate` has it.
_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from aifactory.errors import SpecError
from aifactory.spec import load_spec
from aifactory.spec.places import load_places
places = load_places()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_spec(sys.argv[2], places=places)
    verdict = "validated"
except SpecError as error:
    verdict = f"refused: {error.message}; {len(error.problems)} listed, {error.omitted_problems} counted"
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "before_kib": before, "peak_kib": after, "verdict": verdict}))
"""


def best_of(repeat: int, run: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def hostile_run(spec: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), str(spec)], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def measure_hostile(folder: Path, repeat: int, baseline_s: float) -> None:
    for section, count in HOSTILE:
        spec = folder / f"aliased-{section}.yaml"
        spec.write_text(aliased_site(section, count))
        runs = [hostile_run(spec) for _ in range(repeat)]
        seconds = min(float(str(r["seconds"])) for r in runs)
        peak_mb = max(int(str(r["peak_kib"])) for r in runs) / 1024
        base_mb = min(int(str(r["before_kib"])) for r in runs) / 1024
        met = seconds < TARGET_HOSTILE_SECONDS and peak_mb < TARGET_HOSTILE_MB
        print(f"{count:,} aliased {section} ({spec.stat().st_size / 1000:.0f} KB): {runs[0]['verdict']}")
        print(
            f"  validate {seconds * 1000:8.1f} ms = {seconds / baseline_s:6.2f} x the big site's validate; "
            f"peak {peak_mb:5.0f} MB = {peak_mb / base_mb:4.2f} x the child before validating "
            f"({base_mb:.0f} MB)   (target < {TARGET_HOSTILE_SECONDS:.0f} s and < {TARGET_HOSTILE_MB} MB: "
            f"{'met' if met else 'MISSED'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--rails", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-hostile", action="store_true", help="skip the aliased hostile specs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "site.yaml"
        spec.write_text(generate_site(args.hosts, args.pools, args.rails))
        lock = lock_path_for(spec)
        planned = plan_site(spec)  # warm imports and the places data once
        plan_dict = planned.plan.to_dict()
        summary = planned.plan.summary()

        validate_s = best_of(args.repeat, lambda: load_spec(spec))
        plan_s = best_of(args.repeat, lambda: plan_site(spec), before=lambda: lock.unlink(missing_ok=True))
        dumps_s = best_of(args.repeat, lambda: json.dumps(plan_dict))

        ratio = plan_s / dumps_s
        print(
            f"site: {summary['hosts']:,} hosts in {args.pools} pools, {args.rails}-rail compute fabric, "
            f"{summary['addresses']:,} addresses"
        )
        print(f"load+validate:          {validate_s * 1000:8.1f} ms")
        print(
            f"load+validate+plan:     {plan_s * 1000:8.1f} ms   (target < {TARGET_SECONDS * 1000:.0f} ms: "
            f"{'met' if plan_s < TARGET_SECONDS else 'MISSED'})"
        )
        print(f"json.dumps(plan dict):  {dumps_s * 1000:8.1f} ms   (baseline)")
        print(
            f"ratio plan / dumps:     {ratio:8.2f} x   (target < {TARGET_RATIO:.0f} x: "
            f"{'met' if ratio < TARGET_RATIO else 'MISSED'})"
        )
        if not args.no_hostile:
            measure_hostile(Path(folder), args.repeat, validate_s)


if __name__ == "__main__":
    main()
