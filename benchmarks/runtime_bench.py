"""How fast is the runtime, against baselines measured in the same run?

    .venv/bin/python benchmarks/runtime_bench.py [--clients 200 --seconds 10 --rounds 5 --max-batch 32]
                                                 [--parts serving,authz,training,parsers]

1. serving: `aifactory-serve` throughput (requests of one row each, `--clients` keep-alive clients on
   loopback, every request verified, decided by the real policy engine and logged durably) against
   the raw batched forward pass of the same model (batch `--max-batch`, one torch thread, the very
   program the server runs per batch: `model.scorer`), with the mean batch size the server formed.
   Target: at least 0.7x. The model is an MLP whose batch-32 forward takes at least 5 ms here
   (printed). The two sides run in alternating windows (`--rounds`, default 5 of each, `--seconds`
   in all per side), so that load from other work on a shared machine falls on both alike; the
   spread of the per-round ratios is printed beside the overall ratio.
   It runs twice: with every thread placed by the OS, and (on 2+ CPUs) tuned as a CPU inference node
   is: `--forward-cpus 0` keeps the forward pass on CPU 0 and the server's other threads on the rest,
   where the load generator runs too (it stands for clients on other machines: kept off the forward
   CPU, its cost still on this host).
2. authorization overhead per request, in process: token verification (cached), policy decision,
   durable decision record (one fsync when alone), and the whole check; median and p99.
   economics: the instrumentation a decision adds on the hot path (the decision counter by model,
   tenant and outcome, docs/economics.md), timed directly, as a share of the whole check's median.
   Target: under 2%.
3. training: `aifactory-train` samples/s with 1 process against 2 processes (torchrun, Gloo, CPU).
4. parsers: the server on `runtime/http.py` (llhttp via httptools, with its limits, timeouts and
   caps) against the same server on its former hand-written HTTP path (benchmarks/legacy_http.py),
   both running, in interleaved windows (`--parser-rounds`, default 10, of `--parser-seconds` each);
   the median and spread of each side and whether the new median lies within the old one's spread.

Prints the numbers and ratios; exit status 0 whether or not the target is met: it measures. The
machine's other load shows in the numbers: run it on a quiet machine for figures to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aifactory.plan import SitePlan, plan_site  # noqa: E402
from aifactory.runtime import checkpoint  # noqa: E402
from aifactory.runtime import dataset as datasets  # noqa: E402
from aifactory.runtime.loadgen import LoadResult, run_load  # noqa: E402
from aifactory.runtime.metrics import ServeMetrics, read_jsonl  # noqa: E402
from aifactory.runtime.model import ModelConfig, Scorer, build, scorer  # noqa: E402
from aifactory.trust.authz import Guard, load_authorizer  # noqa: E402
from aifactory.trust.decisionlog import DecisionLog  # noqa: E402
from aifactory.trust.issuing.models import ensure_model_key, promote, register  # noqa: E402
from aifactory.trust.issuing.tokens import issue_token  # noqa: E402
from aifactory.trust.tokens import TokenVerifier, TrustFiles  # noqa: E402

SITE_SPEC = ROOT / "inventory" / "lab" / "site.yaml"
MODEL_PATH = "srv/share/models/vitals-mlp"
BENCH_MODEL = ModelConfig(features=64, classes=4, hidden=2048, layers=4)
TARGET_RATIO = 0.7


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forward_latency_ms(scores: Scorer) -> float:
    """Median wall-clock ms of one batch-32 forward pass (the model must take >= 5 ms)."""
    small = torch.randn(32, BENCH_MODEL.features)
    with torch.inference_mode():
        for _ in range(3):
            scores(small)
        times = []
        for _ in range(20):
            began = time.perf_counter()
            scores(small)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


@dataclass
class Tally:
    """What one side did over its windows: samples, wall-clock seconds, CPU seconds."""

    samples: float = 0.0
    seconds: float = 0.0
    cpu: float = 0.0
    rates: list[float] = field(default_factory=list)  # samples/s per window

    def add(self, samples: float, seconds: float, cpu: float) -> None:
        self.samples, self.seconds, self.cpu = self.samples + samples, self.seconds + seconds, self.cpu + cpu
        self.rates.append(samples / seconds)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds

    @property
    def cores(self) -> float:
        return self.cpu / self.seconds


def raw_window(scores: Scorer, batch: int, seconds: float, tally: Tally) -> None:
    """The baseline: batched forward passes back to back, in this process, through the very program the
    server runs per batch (`model.scorer`: the network and softmax, traced)."""
    inputs = torch.randn(batch, BENCH_MODEL.features)
    with torch.inference_mode():
        scores(inputs)
        done, began, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - began < seconds:
            scores(inputs)
            done += batch
    tally.add(done, time.perf_counter() - began, time.process_time() - cpu)


@dataclass(frozen=True)
class Placement:
    """Where the serving side's threads run. `forward` empty: the OS places every thread."""

    name: str
    forward: frozenset[int] = frozenset()

    @property
    def others(self) -> frozenset[int]:
        return frozenset(os.sched_getaffinity(0)) - self.forward


def placements() -> list[Placement]:
    """The OS's placement, and (on 2+ CPUs) the tuned one: the forward pass on CPU 0 (`--forward-cpus 0`),
    the server's other threads and the load generator on the rest. The load generator stands for
    clients on other machines; it is kept off the forward CPU but its cost stays on this host's others."""
    found = [Placement("OS-placed threads")]
    if len(os.sched_getaffinity(0)) >= 2:
        cpu = min(os.sched_getaffinity(0))
        found.append(Placement(f"--forward-cpus {cpu}", frozenset({cpu})))
    return found


def start_server(
    args: argparse.Namespace,
    work: Path,
    plan: Path,
    runtime: Path,
    placement: Placement,
    *,
    legacy_http: bool = False,
) -> tuple[subprocess.Popen[str], int]:
    """legacy_http: the server with its former hand-written HTTP path (benchmarks/legacy_http.py)."""
    pinning = ["--forward-cpus", ",".join(map(str, sorted(placement.forward)))] if placement.forward else []
    program = (
        [str(Path(__file__).with_name("legacy_http.py"))]
        if legacy_http
        else ["-m", "aifactory.runtime.serve_cli"]
    )
    process = subprocess.Popen(
        [
            sys.executable,
            *program,
            "--plan",
            str(plan),
            "--model",
            "vitals-mlp",
            "--host-name",
            "lab-cpu-001",
            "--port",
            "0",
            "--storage-root",
            str(work / "storage"),
            "--runtime-dir",
            str(runtime),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--torch-threads",
            "1",
            "--gil-switch-ms",
            str(args.gil_switch_ms),
            "--authz-threads",
            str(args.authz_threads),
            *pinning,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "ready on port" in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, int(line.rsplit(" ", 1)[1])
    raise SystemExit("the server did not start")


def save_bench_model(work: Path) -> Scorer:
    """Write the model's checkpoint, sign it into the registry and promote it champion (the server
    serves nothing else, docs/models.md); return the program both sides run."""
    model = build(BENCH_MODEL, seed=1).eval()
    saved = checkpoint.save(
        work / "storage" / MODEL_PATH / "checkpoints",
        step=1,
        model_state=model.state_dict(),
        optimizer_state={},
        meta={"model": "vitals-mlp", "network": BENCH_MODEL.as_dict()},
    )
    key = ensure_model_key(work / "runtime")  # copied with the token files into each server's folder
    model_dir = work / "storage" / MODEL_PATH
    version = register(model_dir=model_dir, checkpoint=saved, key=key, job={"name": "bench"}, dataset={})
    promote(model_dir=model_dir, digest=version.digest, alias="champion", key=key, reason="benchmark")
    torch.set_num_threads(1)
    return scorer(model)


def bench_serving(
    args: argparse.Namespace, work: Path, plan: Path, token: str, scores: Scorer, placement: Placement
) -> None:
    """Raw and server windows alternate (`--rounds` of each), so both sides meet the same machine load."""
    everywhere = frozenset(os.sched_getaffinity(0))
    # Copy the token files the server reads into its own runtime folder (its decision log is its own).
    runtime = work / f"runtime-{len(placement.forward)}"
    if not runtime.exists():
        shutil.copytree(work / "runtime", runtime)
    process, port = start_server(args, work, plan, runtime, placement)
    raw, served = Tally(), Tally()
    window = args.seconds / args.rounds
    results: list[LoadResult] = []
    try:
        wait_for_model(port, token)
        body = {"inputs": [[0.25] * BENCH_MODEL.features]}

        def load(seconds: float) -> LoadResult:
            if placement.forward:
                os.sched_setaffinity(0, placement.others)
            try:
                return asyncio.run(
                    run_load(
                        "127.0.0.1",
                        port,
                        path="/v1/models/vitals-mlp/infer",
                        body=body,
                        token=token,
                        clients=args.clients,
                        seconds=seconds,
                    )
                )
            finally:
                os.sched_setaffinity(0, everywhere)

        load(1)  # warm up
        before = _batch_totals(port)
        for _ in range(args.rounds):
            raw_window(scores, args.max_batch, window, raw)
            cpu_before, began = process_cpu_seconds(process.pid), time.perf_counter()
            results.append(load(window))
            served.add(
                results[-1].statuses().get(200, 0),
                time.perf_counter() - began,
                process_cpu_seconds(process.pid) - cpu_before,
            )
        after = _batch_totals(port)
    finally:
        process.terminate()
        process.wait(timeout=60)
    ok = sum(r.statuses().get(200, 0) for r in results)
    answered = sum(len(r.answers) for r in results)
    failed = sum(len(r.failures) for r in results)
    latencies = [latency for r in results for latency in r.latencies]
    passes = max(1.0, after[1] - before[1])
    mean_batch = (after[0] - before[0]) / passes
    forward_ms = (after[2] - before[2]) / passes * 1000
    ratio = served.rate / raw.rate
    per_round = sorted(s / r for s, r in zip(served.rates, raw.rates, strict=True))
    per_cpu = (served.rate / max(served.cores, 1e-9)) / (raw.rate / max(raw.cores, 1e-9))
    print(f"  {placement.name}: {args.rounds} rounds of {window:g} s raw then {window:g} s server")
    print(
        f"    raw batched forward (batch {args.max_batch}): {raw.rate:,.0f} samples/s "
        f"({args.max_batch / raw.rate * 1000:.1f} ms per batch), using {raw.cores:.2f} CPU cores"
    )
    print(
        f"    server, {args.clients} clients: {served.rate:,.0f} requests/s "
        f"({ok} ok, {answered - ok} not ok, {failed} failed), "
        f"mean batch formed {mean_batch:.1f} (its forward pass took {forward_ms:.1f} ms wall-clock), "
        f"latency median {statistics.median(latencies) * 1000:.1f} ms"
        f" p99 {percentile(latencies, 0.99) * 1000:.1f} ms, server used {served.cores:.2f} CPU cores"
    )
    print(
        f"    ratio server/raw: {ratio:.2f}x "
        f"(target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}); "
        f"per round {per_round[0]:.2f}x to {per_round[-1]:.2f}x; "
        f"per CPU-second {per_cpu:.2f}x"
    )


def wait_for_model(port: int, token: str) -> None:
    """Until the server has loaded the model (/healthz names models only to a caller with a token)."""
    asking = urllib.request.Request(
        f"http://127.0.0.1:{port}/healthz", headers={"Authorization": f"Bearer {token}"}
    )
    for _ in range(300):
        health = json.loads(urllib.request.urlopen(asking).read())
        if (health.get("models") or {}).get("vitals-mlp"):
            return
        time.sleep(0.1)
    raise SystemExit("the server never loaded the model")


def bench_parsers(args: argparse.Namespace, work: Path, plan: Path, token: str) -> None:
    """The server with runtime/http.py (llhttp, limits, timeouts, caps) against the same server with its
    former hand-written HTTP path, both running, in interleaved windows: each round loads one then the
    other (the order alternates), so the machine's other load falls on both alike."""
    sides: dict[str, tuple[subprocess.Popen[str], int]] = {}
    rates: dict[str, list[float]] = {"legacy": [], "http.py": []}
    cpu_ms: dict[str, list[float]] = {name: [] for name in rates}  # the server's CPU per answered request
    body: dict[str, object] = {"inputs": [[0.25] * BENCH_MODEL.features]}
    try:
        for name in rates:
            runtime = work / f"runtime-parser-{name}"
            if not runtime.exists():
                shutil.copytree(work / "runtime", runtime)
            sides[name] = start_server(
                args, work, plan, runtime, Placement("OS-placed threads"), legacy_http=name == "legacy"
            )
            wait_for_model(sides[name][1], token)

        def load(port: int, seconds: float) -> LoadResult:
            return asyncio.run(
                run_load(
                    "127.0.0.1",
                    port,
                    path="/v1/models/vitals-mlp/infer",
                    body=body,
                    token=token,
                    clients=args.clients,
                    seconds=seconds,
                )
            )

        for name in rates:
            load(sides[name][1], 1)  # warm up
        failed = 0
        for number in range(args.parser_rounds):
            order = list(rates) if number % 2 == 0 else list(reversed(rates))
            for name in order:
                process, port = sides[name]
                cpu_before = process_cpu_seconds(process.pid)
                result = load(port, args.parser_seconds)
                ok = result.statuses().get(200, 0)
                failed += len(result.failures) + sum(n for s, n in result.statuses().items() if s != 200)
                rates[name].append(ok / result.seconds)
                cpu_ms[name].append((process_cpu_seconds(process.pid) - cpu_before) / max(ok, 1) * 1000)
    finally:
        for process, _ in sides.values():
            process.terminate()
            process.wait(timeout=60)
    old, new = statistics.median(rates["legacy"]), statistics.median(rates["http.py"])
    low, high = min(rates["legacy"]), max(rates["legacy"])
    print(
        f"parsers: {args.parser_rounds} interleaved rounds of {args.parser_seconds:g} s per side, "
        f"{args.clients} keep-alive clients, 1 row per request, {failed} not ok or failed"
    )
    for name in rates:
        values = rates[name]
        print(
            f"  {name:8s} median {statistics.median(values):7,.0f} req/s   spread {min(values):,.0f} to "
            f"{max(values):,.0f}   rounds: {' '.join(f'{v:,.0f}' for v in values)}"
        )
        print(
            f"  {'':8s} server CPU per request median {statistics.median(cpu_ms[name]):.2f} ms "
            f"(spread {min(cpu_ms[name]):.2f} to {max(cpu_ms[name]):.2f}; forward pass included)"
        )
    verdict = "within" if low <= new <= high else ("above" if new > high else "BELOW")
    print(f"  http.py/legacy median {new / old:.2f}x: the new median is {verdict} the legacy spread")


def _batch_totals(port: int) -> tuple[float, float, float]:
    """(rows forwarded, forward passes, seconds spent in forward passes) so far, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("aifactory_serve_"))
    return (
        float(values.get("aifactory_serve_batch_size_sum", 0)),
        float(values.get("aifactory_serve_batch_size_count", 0)),
        float(values.get("aifactory_serve_forward_seconds_sum", 0)),
    )


def bench_authorization(work: Path, plan: SitePlan, token: str, site: str, repeat: int) -> float:
    """Prints the parts' timings; returns the whole check's median (seconds): a decision's time."""
    decisions = DecisionLog(work / "bench-authz" / "decisions.jsonl", sign_every=100, sign_interval=5)
    verifier = TokenVerifier(TrustFiles(work / "runtime"), site=site)
    authorizer = load_authorizer(plan)
    guard = Guard(
        verifier=verifier,
        authorizer=authorizer,
        decisions=decisions,
        component="bench",
        host="lab-cpu-001",
        host_country="NG",
    )
    timings: dict[str, list[float]] = {
        "token (cached)": [],
        "policy decision": [],
        "durable record": [],
        "whole check": [],
    }
    guard.check(token, "infer", "model/vitals-mlp")
    for _ in range(repeat):
        began = time.perf_counter()
        claims = verifier.verify(token)
        verified = time.perf_counter()
        authorizer.decide(claims.tenant, "infer", "model/vitals-mlp", host_country="NG")
        decided = time.perf_counter()
        guard.record(guard.decide(token, "infer", "model/vitals-mlp")).result()
        recorded = time.perf_counter()
        guard.check(token, "infer", "model/vitals-mlp")
        checked = time.perf_counter()
        timings["token (cached)"].append(verified - began)
        timings["policy decision"].append(decided - verified)
        timings["durable record"].append(recorded - decided)
        timings["whole check"].append(checked - recorded)
    decisions.close()
    print(
        f"authorization per request, {repeat} sequential requests (record = decide + one fsync when alone;"
        " concurrent requests share fsyncs):"
    )
    for name, values in timings.items():
        print(
            f"  {name:16s} median {statistics.median(values) * 1e3:7.3f} ms"
            f"   p99 {percentile(values, 0.99) * 1e3:7.3f} ms"
        )
    return statistics.median(timings["whole check"])


INSTRUMENTATION_TARGET = 0.02  # the economics' own cost: under 2% of a decision's time


def bench_instrumentation(plan: SitePlan, decision_seconds: float, calls: int = 200_000) -> None:
    """The hot path's economics instrumentation: one labelled decision count per decision
    (`ServeMetrics.decided`: the bounded model and tenant, the cached counter child, its increment),
    timed directly over `calls` calls in 5 rounds, against a decision's time measured just before."""
    metrics = ServeMetrics(models=(m.name for m in plan.models), tenants=(t.name for t in plan.tenants))
    model, tenant = plan.models[0].name, plan.tenants[0].name
    rounds = []
    for _ in range(5):
        began = time.perf_counter()
        for k in range(calls):
            metrics.decided(model=model, tenant=tenant, allow=k % 8 != 0)
        rounds.append((time.perf_counter() - began) / calls)
    per_call = statistics.median(rounds)
    ratio = per_call / decision_seconds
    print(
        f"economics instrumentation per decision: {per_call * 1e9:.0f} ns (median of 5 rounds of "
        f"{calls:,} labelled counts) against the whole check's median {decision_seconds * 1e3:.3f} ms: "
        f"{ratio:.3%} (target < {INSTRUMENTATION_TARGET:.0%}: "
        f"{'met' if ratio < INSTRUMENTATION_TARGET else 'NOT met'})"
    )


def bench_training(work: Path, plan_path: Path, token_file: Path, steps: int) -> None:
    rates = {}
    datasets.generate(work / "storage" / "srv/share/datasets/vitals", name="vitals", samples=8192, seed=7)
    for processes in (1, 2):
        storage = work / f"train-{processes}"
        storage.mkdir()
        (storage / "srv").symlink_to(work / "storage" / "srv", target_is_directory=True)
        job = {
            "schema": "aifactory.job/v1",
            "name": f"bench-{processes}",
            "plan": str(plan_path),
            "token_file": str(token_file),
            "dataset": "vitals",
            "model": "vitals-mlp",
            "storage_root": str(storage),
            "runtime_dir": str(work / "runtime"),
            "processes_per_host": processes,
            "rendezvous_port": 29300 + processes,
            "network": {"hidden": 256, "layers": 3},
            "train": {"steps": steps, "global_batch": 256, "checkpoint_every": steps},
        }
        path = work / f"job-{processes}.yaml"
        path.write_text(yaml.safe_dump(job))
        shutil.rmtree(work / "storage" / MODEL_PATH, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "aifactory.runtime.train_cli", str(path), "--host", "lab-cpu-001"],
            check=True,
            capture_output=True,
        )
        metrics = read_jsonl(work / "storage" / MODEL_PATH / "runs" / f"bench-{processes}" / "metrics.jsonl")
        rates[processes] = statistics.median(float(m["samples_per_s"]) for m in metrics[5:])  # type: ignore[arg-type]
    print(
        f"training (MLP 16-256x3-4, global batch 256, {steps} steps, Gloo on CPU): 1 process "
        f"{rates[1]:,.0f} samples/s, 2 processes {rates[2]:,.0f} samples/s: {rates[2] / rates[1]:.2f}x "
        f"(this machine has {os.cpu_count()} cores, shared)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clients", type=int, default=200, help="concurrent clients (default 200, as in the load test)"
    )
    parser.add_argument("--seconds", type=float, default=10, help="seconds of serving (and of raw forward)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw/server windows (default 5)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--gil-switch-ms", type=float, default=0.5, help="the server's --gil-switch-ms")
    parser.add_argument("--authz-threads", type=int, default=2, help="the server's --authz-threads")
    parser.add_argument("--authz-repeat", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument(
        "--parts",
        default="serving,authz,economics,training,parsers",
        help="comma-separated parts to run (default: all: serving,authz,economics,training,parsers; "
        "economics runs authz first: its ratio is against a decision's time)",
    )
    parser.add_argument(
        "--parser-rounds", type=int, default=10, help="parsers: interleaved rounds (default 10)"
    )
    parser.add_argument(
        "--parser-seconds", type=float, default=3, help="parsers: seconds per side and round (default 3)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as folder:
        work = Path(folder)
        os.environ["AIFACTORY_STATE_HOME"] = str(work / "state")
        planned = plan_site(SITE_SPEC, write_lock=False)
        plan_path = work / "plan.json"
        plan_path.write_text(planned.plan.to_json())
        site = planned.plan.name
        token = issue_token(
            TrustFiles(work / "runtime"),
            site=site,
            tenant="health",
            expires=datetime.now(UTC) + timedelta(days=1),
        ).token
        token_file = work / "token"
        token_file.write_text(token)
        print(f"load average before: {load_average()} ({os.cpu_count()} cores, shared)")
        if "serving" in parts:
            scores = save_bench_model(work)
            print(
                f"serving: model MLP {BENCH_MODEL.features}-{BENCH_MODEL.hidden}x{BENCH_MODEL.layers}-"
                f"{BENCH_MODEL.classes}, batch-32 forward {forward_latency_ms(scores):.1f} ms "
                "(>= 5 ms required), the same traced program on both sides"
            )
            for placement in placements():
                bench_serving(args, work, plan_path, token, scores, placement)
        if "parsers" in parts:
            if "serving" not in parts:
                save_bench_model(work)
            bench_parsers(args, work, plan_path, token)
        if "authz" in parts or "economics" in parts:
            decision = bench_authorization(work, planned.plan, token, site, args.authz_repeat)
            if "economics" in parts:
                bench_instrumentation(planned.plan, decision)
        if "training" in parts:
            bench_training(work, plan_path, token_file, args.train_steps)
        print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
