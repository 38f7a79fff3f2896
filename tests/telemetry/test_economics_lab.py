"""Joules and cost per decision on the session's deployed lab (docs/economics.md).

Real parts: the session's `deployed_lab` with the monitoring stage deployed once for the
telemetry lab modules (the `monitored` fixture, tests/telemetry/monitored_lab.py: serving nodes on
HTTPS, 2 s scrapes and rule evaluations), the lab BMCs' emulated power through the power exporter
(`aifactory_host_energy_joules_total{source="emulated"}`), the inference servers' decision counters,
and `aifactory status --format json` on the control host.

After a load run of known size through a serving node (allowed requests by the model's owner,
denied ones by a tenant without a grant), the figures `status` reports per model and tenant must
match a hand computation from the raw series, asked of Prometheus directly at the same instant and
over the same window, within 1%; every energy figure carries the source label of its energy.
The cost needs the lab spec's `economics` section (the price rules come from the plan).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from typing import Any

import pytest
from waiting import wait_for

from aifactory.telemetry.economics import window_seconds
from tests.telemetry.monitored_lab import INTERVAL, Monitored, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

WINDOW = "3m"  # covers the load run below with room to spare
ALLOWED, DENIED = 40, 10  # denials under the server's 20 per peer and window: no 429
SOURCES = {"measured", "emulated", "estimated"}

# Run on the control host: PromQL queries at one instant, through the status view's own client.
QUERY_AT = """
import json, sys
from aifactory.plan import plan_site
from aifactory.state import SiteState
from aifactory.telemetry.status import PrometheusClient
plan = plan_site(sys.argv[1], write_lock=False).plan
client = PrometheusClient.for_site(plan, SiteState.for_site(plan.name))
at = float(sys.argv[2])
print(json.dumps([client.query(expression, at=at) for expression in sys.argv[3:]]))
"""


def _query_at(site: Monitored, at: float, *expressions: str) -> list[list[dict[str, Any]]]:
    lab = site.lab
    done = lab.exec([sys.executable, "-c", QUERY_AT, str(lab.spec), f"{at:.3f}", *expressions], timeout=120)
    result: list[list[dict[str, Any]]] = json.loads(done.stdout)
    return result


def _hand_computation(site: Monitored, at: float) -> dict[tuple[str, str, str], dict[str, float]]:
    """docs/economics.md's formulas, in Python, over the raw series: each host's energy and fixed
    cost shared among the (model, tenant) pairs by their count of its decisions."""
    decisions, energy, price, pue, host_cost = _query_at(
        site,
        at,
        f"increase(aifactory_serve_decisions_total[{WINDOW}])",
        f"increase(aifactory_host_energy_joules_total[{WINDOW}])",
        "aifactory_economics_energy_price_per_kwh",
        "aifactory_economics_pue",
        "aifactory_economics_host_cost_per_second",
    )
    assert len(price) == 1 and len(pue) == 1, "the lab spec needs an economics section (price rules)"
    per_joule = float(price[0]["value"][1]) * float(pue[0]["value"][1]) / 3_600_000
    currency = price[0]["metric"]["currency"]
    seconds = window_seconds(WINDOW)
    by_host: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for row in decisions:
        labels = row["metric"]
        by_host[labels["host"]][(labels["model"], labels["tenant"])] += float(row["value"][1])
    joules_of: dict[str, tuple[float, str]] = {}
    for row in energy:
        labels = row["metric"]
        joules, _ = joules_of.get(labels["host"], (0.0, labels["source"]))
        joules_of[labels["host"]] = (joules + float(row["value"][1]), labels["source"])
    fixed = {row["metric"]["host"]: float(row["value"][1]) for row in host_cost}
    figures: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for host, pairs in by_host.items():
        total = sum(pairs.values())
        if total <= 0 or host not in joules_of:
            continue
        joules, source = joules_of[host]
        host_cost_in_window = joules * per_joule + fixed[host] * seconds
        for (model, tenant), count in pairs.items():
            if count <= 0:  # a series every server starts at 0: no decision of this pair in the window
                continue
            figure = figures[(model, tenant, source)]
            figure["decisions"] += count
            figure["joules"] += joules * count / total
            figure["cost"] += host_cost_in_window * count / total
    for figure in figures.values():
        figure["joules_per_decision"] = figure["joules"] / figure["decisions"]
        figure["cost_per_decision"] = figure["cost"] / figure["decisions"]
    assert currency
    return {key: dict(value) for key, value in figures.items()}


def _raw(site: Monitored, at: float) -> dict[str, Any]:
    """The raw series at `at` and now, for a failure message."""
    expressions = (
        f"increase(aifactory_serve_decisions_total[{WINDOW}])",
        f"increase(aifactory_host_energy_joules_total[{WINDOW}])",
        f"count_over_time(aifactory_host_energy_joules_total[{WINDOW}])",
        f"count_over_time(aifactory_serve_decisions_total[{WINDOW}])",
        "time()",
    )
    return {
        "at": _query_at(site, at, *expressions),
        "now": _query_at(site, time.time(), *expressions),
        "now_local": time.time(),
    }


def test_joules_and_cost_per_decision_match_a_hand_computation(monitored: Monitored) -> None:
    lab = monitored.lab
    host = monitored.serving[0]
    load = monitored.load_for(host)
    monitored.wait_scraped(host)
    wait_until(
        "every serving host's energy counter in Prometheus",
        180,
        lambda: (
            {r["metric"]["host"] for r in monitored.query("aifactory_host_energy_joules_total")}
            >= set(monitored.serving)
        ),
    )
    statuses = monitored.send(load, ALLOWED, DENIED)
    assert statuses[ALLOWED:] == [403] * DENIED, statuses

    def counted(tenant: str) -> float:
        found = monitored.query(
            f'sum(increase(aifactory_serve_decisions_total{{host="{host}",model="{load.model}",'
            f'tenant="{tenant}"}}[{WINDOW}]))'
        )
        return float(found[0]["value"][1]) if found else 0.0

    # Prometheus has scraped the server after the last request (increase() extrapolates a little).
    wait_for(
        lambda: counted(load.denied_tenant) >= DENIED * 0.99,
        what="the load in the decision counter",
        timeout=60,
        detail=lambda: str(monitored.query(f'aifactory_serve_decisions_total{{host="{host}"}}')),
    )
    # One instant for both sides (energy keeps growing between two queries), no earlier than the
    # query that saw the load (the scrape that brought it may be a moment older than that query),
    # and both sides asked once every sample stamped up to it is in.
    at = time.time()
    time.sleep(INTERVAL + 1)
    done = lab.exec(
        ["aifactory", "status", str(lab.spec), "--format", "json", "--window", WINDOW, "--at", f"{at:.3f}"],
        timeout=300,
    )
    reported = {
        (r["model"], r["tenant"], r["source"]): r
        for r in json.loads(done.stdout)["economics"]["per_decision"]
    }
    expected = _hand_computation(monitored, at)

    assert expected, ("no decision with its host's energy in the window", _raw(monitored, at))
    assert set(reported) == set(expected), (reported, expected, _raw(monitored, at))
    sources = {key[2] for key in reported}
    assert sources <= SOURCES and sources, reported
    for key, figure in expected.items():
        row = reported[key]
        assert row["source"] in SOURCES
        assert row["decisions"] == pytest.approx(figure["decisions"], rel=0.01), key
        assert row["joules_per_decision"] == pytest.approx(figure["joules_per_decision"], rel=0.01), key
        assert row["cost_per_decision"] == pytest.approx(figure["cost_per_decision"], rel=0.01), key
        assert row["currency"] and row["joules_per_decision"] > 0 and row["cost_per_decision"] > 0
    # The run of known size is in the figures of the serving host's pairs.
    owner = next(v for k, v in reported.items() if k[:2] == (load.model, load.owner))
    denied = next(v for k, v in reported.items() if k[:2] == (load.model, load.denied_tenant))
    assert owner["decisions"] >= ALLOWED * 0.99 and denied["decisions"] >= DENIED * 0.99
    # The lab's BMCs have no power reading of their own: its energy is emulated, and says so.
    assert reported[(load.model, load.owner, owner["source"])]["source"] == "emulated"


def test_a_finished_training_job_has_its_nodes_joules_and_cost(monitored: Monitored) -> None:
    """A Slurm job of known length on one compute node: `aifactory jobs SITE --energy` gives it that
    node's energy over the job's start and end, with the energy's source, and a cost (the lab has
    prices). A job holds its nodes whole, so all of their energy in that time is the job's."""
    lab = monitored.lab
    node = monitored.serving[0]
    wait_until(
        f"{node}'s energy counter in Prometheus",
        180,
        lambda: node in {r["metric"]["host"] for r in monitored.query("aifactory_host_energy_joules_total")},
    )
    sbatch = ["sbatch", "--parsable", f"--nodelist={node}", "--nodes=1", "--output=/dev/null"]
    job = lab.exec([*sbatch, "--wrap=sleep 12"]).stdout.strip()

    def finished() -> dict[str, Any] | None:
        done = lab.exec(["aifactory", "jobs", str(lab.spec), "--energy", "--format", "json"], timeout=300)
        listed = {j["id"]: j for j in json.loads(done.stdout)}
        found = listed.get(job)
        return found if found and found["state"] == "COMPLETED" and found.get("energy") else None

    listed = wait_until(f"job {job} in the completion log with its energy", 120, finished)
    energy = listed["energy"]
    assert [h["host"] for h in energy["hosts"]] == [node], energy
    assert energy["sources"] == ["emulated"], energy
    # at least the lab's idle power over the job's whole length (the emulated reading never goes below it)
    assert energy["seconds"] >= 12 and energy["joules"] >= 0.9 * 100 * energy["seconds"], energy
    assert energy["currency"] == "EUR" and energy["cost"] > 0, energy
