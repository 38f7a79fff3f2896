"""How fast is load + validate + plan for a 10,000-host site, against serializing its plan?

    .venv/bin/python benchmarks/plan_bench.py [--hosts 10000 --pools 100 --rails 8 --repeat 3]

Generates a site (benchmarks/sites.py: 100 pools of 100 GPU hosts, an 8-rail compute fabric, so
over 100,000 addresses), then measures in one run:
- plan: `plan_site(path)`, reading the YAML, validating it, allocating every address and writing
  the allocation lock beside the spec (a cold run: the lock is removed before each repeat);
- dumps: `json.dumps(plan_dict)` with default arguments, of the plan as a dict built beforehand;
and prints both, their ratio, and the targets (plan under 1 s and under 3x dumps). The best of
`--repeat` runs counts for each. Exit status 0 whether or not the targets are met: it measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.plan import plan_site  # noqa: E402
from aifactory.plan.addressing import lock_path_for  # noqa: E402
from aifactory.spec import load_spec  # noqa: E402
from benchmarks.sites import generate_site  # noqa: E402

TARGET_SECONDS = 1.0
TARGET_RATIO = 3.0


def best_of(repeat: int, run: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--rails", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
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


if __name__ == "__main__":
    main()
