"""Do the series a host exposes grow with traffic? Series per host after growing numbers of
requests and jobs, against the count after the first round (a ratio; 1.00 means bounded: the first
round brings the label values that exist at all, such as each answer code).

    .venv/bin/python benchmarks/telemetry_series_bench.py [--requests 100,1000,3000] [--jobs 10,1000,10000]

1. serving: a real `aifactory-serve` (the lab site's plan, the real policy engine, a durable decision
   log) answers rounds of requests from an allowed tenant, a denied one, and for model names that are
   new every time (404, recorded); every request carries a new X-Request-Id. After each round its
   /metrics is read and the series counted (sample lines).
2. jobs: the monitoring role's node facts script (playbooks/roles/monitoring/files/aifactory_node_facts.py,
   the code the timer runs) renders Slurm's node and queue listing with growing numbers of jobs, of
   three states and two accounts, each with its own id; the series it writes are counted.

Label sets are bounded by design (docs/telemetry.md): the ratios stay 1.00 whatever the load.
Prints the numbers; exit status 0 whether or not they grow: it measures.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aifactory.plan import plan_site  # noqa: E402
from aifactory.trust.issuing.tokens import issue_token  # noqa: E402
from aifactory.trust.tokens import TrustFiles  # noqa: E402

SITE_SPEC = ROOT / "inventory" / "lab" / "site.yaml"
FACTS = ROOT / "playbooks" / "roles" / "monitoring" / "files" / "aifactory_node_facts.py"


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def start_server(work: Path, plan: Path) -> tuple[subprocess.Popen[str], int]:
    argv = [sys.executable, "-m", "aifactory.runtime.serve_cli", "--plan", str(plan), "--host-name"]
    argv += ["lab-cpu-001", "--port", "0", "--storage-root", str(work / "storage")]
    argv += ["--runtime-dir", str(work / "runtime")]
    # Denial limits out of the way: every request is answered and recorded as it would be from many
    # clients (with the defaults, one address gets 429 after 20 denials and the rounds measure that).
    argv += ["--denials-per-peer", "10000000", "--denials-total", "10000000"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "ready on port" in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(line.rsplit(" ", 1)[1])
    raise SystemExit("the server did not start")


def request(port: int, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "X-Request-Id": str(uuid.uuid4())}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"inputs": [[0.1] * 16]}) if method == "POST" else None
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    text = answer.read().decode()
    connection.close()
    return answer.status, text


def bench_serving(work: Path, rounds: list[int]) -> None:
    planned = plan_site(SITE_SPEC, write_lock=False)
    plan = work / "plan.json"
    plan.write_text(planned.plan.to_json())
    trust = TrustFiles(work / "runtime")
    expires = datetime.now(UTC) + timedelta(days=1)
    allowed = issue_token(trust, site=planned.plan.name, tenant="health", expires=expires).token
    denied = issue_token(trust, site=planned.plan.name, tenant="research", expires=expires).token
    process, port = start_server(work, plan)
    try:
        before = series(request(port, "GET", "/metrics")[1])
        print(f"serving: {before} series before any request")
        sent = 0
        first = 0
        for total in rounds:
            codes: dict[int, int] = {}
            while sent < total:
                kind = sent % 3
                path = f"/v1/models/{'vitals-mlp' if kind < 2 else 'm-' + uuid.uuid4().hex[:12]}/infer"
                status, _ = request(port, "POST", path, allowed if kind == 0 else denied)
                codes[status] = codes.get(status, 0) + 1
                sent += 1
            now = series(request(port, "GET", "/metrics")[1])
            first = first or now
            print(
                f"  after {total:>6} requests (answers {dict(sorted(codes.items()))}): {now} series, "
                f"ratio to the first round {now / first:.2f}"
            )
    finally:
        process.terminate()
        process.wait(timeout=60)


def load_facts() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aifactory_node_facts", FACTS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_jobs(rounds: list[int]) -> None:
    facts = load_facts()
    nodes = facts.parse_nodes(
        "\n".join(
            f"NodeName=lab-cpu-00{i} State=MIXED CPUAlloc=1 CPUTot=2 Gres=(null) AllocTRES=cpu=1 Reason=none"
            for i in (1, 2)
        )
    )
    empty = series("\n".join(facts.slurm_lines(nodes, [])))
    print(f"jobs: {empty} series with an empty queue")
    first = 0
    for total in rounds:
        states, accounts = ("RUNNING", "PENDING", "COMPLETING"), ("health", "research")
        jobs = [(states[n % 3], accounts[n % 2]) for n in range(total)]
        now = series("\n".join(facts.slurm_lines(nodes, jobs)))
        first = first or now
        print(f"  {total:>6} jobs: {now} series, ratio to the first round {now / first:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", default="100,1000,3000", help="cumulative requests after each round")
    parser.add_argument("--jobs", default="10,1000,10000", help="jobs in the queue, one listing each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as folder:
        work = Path(folder)
        os.environ["AIFACTORY_STATE_HOME"] = str(work / "state")
        bench_serving(work, [int(n) for n in args.requests.split(",")])
    bench_jobs([int(n) for n in args.jobs.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
