"""How fast are the policies: the full-site check of a 10,000-host site and per-request decisions?

    .venv/bin/python benchmarks/policy_bench.py [--hosts 10000 --pools 100 --decisions 10000]
        [--regopy-path DIR] [--second-hosts 200]

In one run, on a site from benchmarks/sites.py (planning not counted):
- site check: `evaluate_plan` with the embedded engine: building the policy input from the plan,
  the forked, watchdog-limited evaluation of every site package and the report; median and best of
  `--repeat`, against a baseline measured in the same run: `json.dumps` of the policy input (the
  least any engine must do with it). Target: under 200 ms.
- run time: `RuntimeAuthorizer.decide` for `--decisions` requests cycling over every tenant,
  resource, action and a few countries; median and p99 per decision (wall clock, and this
  thread's CPU time, which leaves out waiting for a CPU on a shared machine), against the same
  requests through the regorus interpreter instead of the compiled RVM. Target: p99 under 0.5 ms.
- a second engine on the same policies, decisions compared for equality: the OPA backend against
  `opa run --server` when an `opa` binary is on the PATH; otherwise regopy (rego-cpp) in a
  subprocess under a time limit, on a smaller site (`--second-hosts`), comparing each site
  package's (rule, resource) findings for the site and for copies that break rules, and a sample
  of run-time decisions. regopy is found on `--regopy-path` (e.g. after
  `pip install --target /tmp/regopy-lib regopy==1.5.2`) or installed; without either engine the
  comparison is reported as skipped.
Exit status 0 whether or not the targets are met: it measures.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aifactory.plan import SitePlan, plan_site  # noqa: E402
from aifactory.policy import RuntimeAuthorizer, evaluate_plan, load_policy_set  # noqa: E402
from aifactory.policy.engine import make_backend  # noqa: E402
from aifactory.policy.inputs import site_input  # noqa: E402
from aifactory.policy.metadata import PolicySet  # noqa: E402
from benchmarks.sites import generate_site  # noqa: E402

CHECK_TARGET_MS = 200.0
DECISION_P99_TARGET_MS = 0.5
TODAY = dt.date(2026, 11, 22)
COUNTRIES = ("NG", "GH", None)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def plan_of(hosts: int, pools: int, folder: Path) -> SitePlan:
    spec = folder / f"site-{hosts}.yaml"
    spec.write_text(generate_site(hosts, pools, 8 if hosts >= 1000 else 2))
    return plan_site(spec).plan


def _cpu_seconds() -> float:
    """User and system time of this process and its reaped children (the forked evaluations)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def bench_site_check(policies: PolicySet, plan: SitePlan, repeat: int) -> None:
    started = time.perf_counter()
    backend = make_backend(policies)
    compile_s = time.perf_counter() - started
    times, cpu, baseline = [], [], []
    report = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        json.dumps(site_input(plan, TODAY.isoformat()))
        baseline.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        report = evaluate_plan(plan, backend=backend, policies=policies, waivers=[], today=TODAY)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_seconds() - c0)
    assert report is not None
    median = statistics.median(times)
    print(
        f"site check ({len(plan.hosts)} hosts, {len(plan.datasets)} datasets, "
        f"{len(plan.models)} models, {len(plan.access)} grants; {report.rules_evaluated} rules):"
    )
    print(f"  compile policies once: {ms(compile_s)}")
    print(
        f"  check (input + evaluation + report): median {ms(median)}, best {ms(min(times))}; "
        f"decision {'deny' if report.denied else 'allow'}, {len(report.findings)} findings"
    )
    print(f"  CPU time (this process and the forked evaluator): median {ms(statistics.median(cpu))}")
    print(
        f"  baseline json.dumps(policy input): median {ms(statistics.median(baseline))}; "
        f"ratio {median / statistics.median(baseline):.1f}x"
    )
    print(f"  target < {CHECK_TARGET_MS:.0f} ms: {'met' if median * 1000 < CHECK_TARGET_MS else 'NOT met'}")


def requests_for(plan: SitePlan, count: int) -> list[tuple[str, str, str, str | None]]:
    tenants = [t.name for t in plan.tenants] + ["nobody"]
    resources = [f"dataset/{d.name}" for d in plan.datasets] + [f"model/{m.name}" for m in plan.models]
    combos = itertools.cycle(
        itertools.product(resources, tenants, ("read", "train", "infer", "export"), COUNTRIES)
    )
    return [
        (tenant, action, resource, country)
        for resource, tenant, action, country in itertools.islice(combos, count)
    ]


def cpu_latencies(authz: RuntimeAuthorizer, requests: list[tuple[str, str, str, str | None]]) -> list[float]:
    """This thread's CPU time per decision: what a decision costs, without waiting for a CPU."""
    times = []
    for tenant, action, resource, country in requests:
        t0 = time.thread_time()
        authz.decide(tenant, action, resource, host_country=country, today=TODAY)
        times.append(time.thread_time() - t0)
    return sorted(times)


def latencies(
    authz: RuntimeAuthorizer, requests: list[tuple[str, str, str, str | None]]
) -> tuple[list[float], int]:
    times, allowed = [], 0
    for tenant, action, resource, country in requests:
        t0 = time.perf_counter()
        decision = authz.decide(tenant, action, resource, host_country=country, today=TODAY)
        times.append(time.perf_counter() - t0)
        allowed += decision.allow
    return sorted(times), allowed


def p99(sorted_times: list[float]) -> float:
    return sorted_times[min(len(sorted_times) - 1, int(len(sorted_times) * 0.99))]


def bench_runtime(policies: PolicySet, plan: SitePlan, count: int) -> None:
    started = time.perf_counter()
    authz = RuntimeAuthorizer(plan, policies=policies)
    init_s = time.perf_counter() - started
    requests = requests_for(plan, count)
    gc.collect()  # start from a clean heap: a server has loaded its site long before requests arrive
    latencies(authz, requests[:200])  # warm this thread's engine
    times, allowed = latencies(authz, requests)
    cpu_times = cpu_latencies(authz, requests)
    interpreter = RuntimeAuthorizer(plan, policies=policies)
    interpreter.backend.fast_paths = ()  # type: ignore[attr-defined]
    base_times, _ = latencies(interpreter, requests[: max(1, count // 10)])
    median = statistics.median(times)
    print(f"run-time decisions ({len(requests)} requests, {allowed} allowed):")
    print(f"  authorizer start (site loaded, facts compiled once): {ms(init_s)}")
    print(f"  decide: median {ms(median)}, p99 {ms(p99(times))}, max {ms(times[-1])} (wall clock)")
    print(
        f"  decide, CPU time of this thread: median {ms(statistics.median(cpu_times))}, "
        f"p99 {ms(p99(cpu_times))} (the wall-clock p99 also counts waiting for a CPU on a busy machine)"
    )
    print(
        f"  baseline regorus interpreter ({len(base_times)} requests): "
        f"median {ms(statistics.median(base_times))}, "
        f"p99 {ms(p99(base_times))}; compiled is {statistics.median(base_times) / median:.1f}x faster"
    )
    print(
        f"  target p99 < {DECISION_P99_TARGET_MS} ms: "
        f"{'met' if p99(times) * 1000 < DECISION_P99_TARGET_MS else 'NOT met'}"
    )


def broken_inputs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The site input, and copies that each break rules, for the engine comparison."""
    out = {"as-planned": doc}
    first_store, first_model = next(iter(doc["storage"])), next(iter(doc["models"]))
    classified_model = next(  # a model trained on something above public: lowering it is a finding
        name
        for name, model in doc["models"].items()
        if any(doc["datasets"][d]["classification"] != "public" for d in model["trained_on"])
    )
    variants = {
        "datacenter-abroad": lambda d: d["datacenters"].update(far={"country": "FR", "region": None}),
        "unencrypted-storage": lambda d: d["storage"][first_store].update(encrypted_at_rest=False),
        "underclassified-model": lambda d: d["models"][classified_model].update(classification="public"),
        "egress-on-air-gapped": lambda d: d["egress"].append(
            {"name": "ntp", "endpoint": "ntp:123", "country": "NG"}
        ),
        "uncleared-grant": lambda d: d["access"].append(
            {
                "tenant": next(iter(d["tenants"])),
                "resource": "model/" + first_model,
                "kind": "model",
                "name": first_model,
                "actions": ["export"],
                "expires": None,
                "to": "FR",
                "approved_by": None,
            }
        ),
    }
    for name, change in variants.items():
        changed = copy.deepcopy(doc)
        change(changed)
        out[name] = changed
    return out


REGOPY_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1]) if sys.argv[1] else None
import regopy
from regopy.interpreter import rego_query
from regopy.output import rego_output_string, rego_output_ok
job = json.load(sys.stdin)

def interpreter(data):
    rego = regopy.Interpreter()
    for name, source in job["modules"]:
        rego.add_module(name, source)
    rego.add_data_json(json.dumps(data))
    return rego

def query(rego, text):
    out = rego_query(rego._impl, "x := " + text)
    if not rego_output_ok(out):
        raise SystemExit("regopy query failed: " + text)
    return json.loads(rego_output_string(out))["bindings"]["x"]

results = {"site": {}, "runtime": []}
rego = interpreter(job["data"])
for name, doc in job["inputs"].items():
    rego.set_input_term(json.dumps(doc))
    results["site"][name] = {
        p: sorted(query(rego, "[[r.rule, r.resource] | some r in data.aifactory.%s.deny]" % p))
        for p in job["packages"]}
data = json.loads(json.dumps(job["data"]))
data["aifactory"]["site"] = job["site"]
rego = interpreter(data)
facts = query(rego, "data.aifactory.runtime.compiled")
data["aifactory"]["compiled"] = facts
rego = interpreter(data)
for request in job["requests"]:
    rego.set_input_term(json.dumps(request))
    results["runtime"].append(query(rego, "data.aifactory.runtime.decision"))
print(json.dumps(results))
"""


def second_engine_regopy(policies: PolicySet, plan: SitePlan, regopy_path: str, limit_s: float) -> None:
    from aifactory.policy.inputs import site_document

    backend = make_backend(policies)
    packages = policies.deny_packages()
    inputs = broken_inputs(site_input(plan, TODAY.isoformat()))
    ours: dict[str, dict[str, list[list[str]]]] = {}
    for name, doc in inputs.items():
        values = backend.evaluate([f"data.aifactory.{p}.deny" for p in packages], doc)
        ours[name] = {
            p: sorted([r["rule"], r["resource"]] for r in v) for p, v in zip(packages, values, strict=True)
        }
    authz = RuntimeAuthorizer(plan, policies=policies)
    requests = requests_for(plan, 100)
    our_runtime = [authz.decide(t, a, r, host_country=c, today=TODAY) for t, a, r, c in requests]
    job = {
        "modules": [(m.path.name, m.source) for m in policies.policies],
        "data": policies.data_document(),
        "inputs": inputs,
        "packages": packages,
        "site": site_document(plan),
        "requests": [
            {
                "tenant": t,
                "action": a,
                "resource": r,
                "kind": r.split("/")[0],
                "name": r.split("/", 1)[1],
                "host_country": c,
                "today": TODAY.isoformat(),
            }
            for t, a, r, c in requests
        ],
    }
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-c", REGOPY_SCRIPT, regopy_path],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=limit_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"  regopy passed its time limit of {limit_s:.0f} s: no comparison")
        return
    took = time.perf_counter() - started
    if result.returncode != 0:
        print(f"  regopy failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
        return
    theirs = json.loads(result.stdout)
    site_equal = {name: theirs["site"][name] == ours[name] for name in inputs}
    findings = {name: sum(len(v) for v in d.values()) for name, d in ours.items()}
    runtime_equal = sum(
        1
        for mine, other in zip(our_runtime, theirs["runtime"], strict=True)
        if (mine.allow, mine.reasons) == (other["allow"], sorted(other["reasons"]))
    )
    print(f"  regopy on {len(plan.hosts)} hosts, in a subprocess ({took:.1f} s):")
    print(
        f"    site packages: {sum(site_equal.values())}/{len(site_equal)} inputs give equal (rule, resource) "
        f"findings (findings per input: {findings})"
        + ("" if all(site_equal.values()) else f"; differ: {[n for n, ok in site_equal.items() if not ok]}")
    )
    print(f"    run-time decisions: {runtime_equal}/{len(requests)} equal (allow and reasons)")


def second_engine_opa(policies: PolicySet, plan: SitePlan) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [shutil.which("opa") or "opa", "run", "--server", "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        embedded = make_backend(policies)
        opa = make_backend(policies, engine="opa", opa_url=f"http://127.0.0.1:{port}")
        equal = 0
        inputs = broken_inputs(site_input(plan, TODAY.isoformat()))
        for doc in inputs.values():
            paths = [f"data.aifactory.{p}.deny" for p in policies.deny_packages()]
            a = [sorted(json.dumps(r, sort_keys=True) for r in v) for v in embedded.evaluate(paths, doc)]
            b = [sorted(json.dumps(r, sort_keys=True) for r in v) for v in opa.evaluate(paths, doc)]
            equal += a == b
        print(f"  OPA server (opa binary): {equal}/{len(inputs)} inputs give equal findings")
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--second-hosts", type=int, default=40)
    parser.add_argument("--regopy-path", default="", help="folder holding the regopy package (pip --target)")
    parser.add_argument("--regopy-limit", type=float, default=300.0, help="seconds regopy may take")
    args = parser.parse_args()

    policies = load_policy_set()
    print(
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
        "(timings include whatever else runs)"
    )
    with tempfile.TemporaryDirectory() as folder:
        site_plan = plan_of(args.hosts, args.pools, Path(folder))
        bench_site_check(policies, site_plan, args.repeat)
        plan = site_plan
        bench_runtime(policies, plan, args.decisions)
        print("second engine, same policies, decisions compared:")
        if shutil.which("opa"):
            second_engine_opa(policies, plan)
            return
        small = plan_of(args.second_hosts, max(1, min(args.pools, args.second_hosts // 20)), Path(folder))
        regopy_ok = (
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; sys.path.insert(0, sys.argv[1]); import regopy",
                    args.regopy_path,
                ],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        if not regopy_ok:
            print(
                "  skipped: no `opa` binary on the PATH and regopy not importable "
                "(pip install --target /tmp/regopy-lib regopy==1.5.2; then --regopy-path /tmp/regopy-lib)"
            )
            return
        second_engine_regopy(policies, small, args.regopy_path, args.regopy_limit)


if __name__ == "__main__":
    main()
