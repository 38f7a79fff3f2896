"""The economics of a decision: joules and cost per decision, per model and tenant (docs/economics.md).

One source of PromQL for three users:

- the recording rules `policies/alerts/economics.rules.yml` for the standard windows (5m, 1h),
  generated from `STEPS` by `python -m aifactory.telemetry.economics` (a test keeps the committed
  file equal to what this module writes);
- `decision_economics(client, window=...)`, any window: the same steps composed into three
  expressions, answered by Prometheus and divided here (what `aifactory status` shows);
- the prices: constant recording rules the monitoring role renders from the plan's `economics`
  section (`price_settings`), read by both.

The sharing method: in a window, each serving host's energy (and its cost) is shared among the
decisions it made, by their count: a (model, tenant) that made d of a host's D decisions gets d/D of
that host's joules. Every figure keeps the `source` label of the energy it came from (`measured`,
`emulated`, `estimated`): a model served by hosts of two sources gets one figure per source.

A training job: its nodes' energy between its start and end (`job_economics`), all of it (a
job holds its nodes whole), costed the same way.

Standard library only beyond the status client: nodes and the control host both import it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from aifactory.console import generated_file_main
from aifactory.errors import TelemetryError
from aifactory.plan.model import SitePlan

# ---- the prices --------------------------------------------------------------------------------------

SECONDS_PER_YEAR = 31_557_600  # a Julian year, 365.25 days: amortisation and yearly costs per second
JOULES_PER_KWH = 3_600_000
# Per-second costs are tiny (250,000 over 5 years is 0.0016 a second): 18 places keep 12 significant
# digits for any price the spec allows.
_PER_SECOND = Decimal("1e-18")

# The series the price rules record (constants; their values come from the plan).
PRICE_PER_KWH = "aifactory_economics_energy_price_per_kwh"  # {currency}
PUE = "aifactory_economics_pue"
HOST_COST_PER_SECOND = "aifactory_economics_host_cost_per_second"  # {host, currency}

# The inputs: the inference servers' decisions; the hosts' energy counters: the power collector's
# from each BMC, and for hosts without one, RAPL's as policies/alerts/energy.rules.yml records them
# (one series per CPU package: `host_energy` sums a host's series after increase(), which is what
# keeps a counter's wrap from counting the whole sum again). At most one of the two per host, so the
# sum by (host, source) never counts a host twice.
DECISIONS = "aifactory_serve_decisions_total"  # {host, model, tenant, allow}
ENERGY = "aifactory_host_energy_joules_total"  # {host, source, method, interval}


@dataclass(frozen=True)
class Prices:
    """The plan's prices as exact decimals, with each host's fixed cost per second worked out."""

    currency: str
    energy_price_per_kwh: Decimal
    pue: Decimal
    host_cost_per_second: Mapping[str, Decimal]  # every planned host

    @property
    def energy_cost_per_joule(self) -> Decimal:
        """What one joule of IT energy costs once the facility's overhead (PUE) is on it."""
        return self.energy_price_per_kwh * self.pue / JOULES_PER_KWH

    @classmethod
    def from_plan(cls, plan: SitePlan) -> Prices | None:
        """The plan's prices, or None when the spec has no economics section.

        A host's fixed cost per second: its pool's capital cost per host over the amortisation
        period, plus an equal share of the site's fixed yearly cost (that cost divided by the number
        of planned hosts, whatever they do), both over `SECONDS_PER_YEAR`."""
        economics = plan.economics
        if economics is None:
            return None
        fixed_share = _decimal(economics.fixed_cost_per_year, "fixed_cost_per_year") / (
            len(plan.hosts) * SECONDS_PER_YEAR
        )
        capital = {
            p.pool: _decimal(p.capital_cost_per_host, f"pools[{p.pool}].capital_cost_per_host")
            / (p.amortisation_years * SECONDS_PER_YEAR)
            for p in economics.pools
        }
        return cls(
            currency=economics.currency,
            energy_price_per_kwh=_decimal(economics.energy_price_per_kwh, "energy_price_per_kwh"),
            pue=_decimal(economics.pue, "pue"),
            host_cost_per_second={
                h.name: (capital.get(h.pool, Decimal(0)) + fixed_share).quantize(_PER_SECOND)
                for h in plan.hosts
            },
        )


def _decimal(text: str, field: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise TelemetryError(
            f"plan field economics.{field}: expected a decimal number, got {text[:40]!r}",
            code="plan-format",
            hint="plan the site again from its spec (aifactory plan)",
        )
    return value


def price_settings(plan: SitePlan) -> dict[str, Any] | None:
    """The inventory's `aifactory_economics`: what the monitoring role writes into the price rules.
    Decimal strings, so neither YAML nor Jinja ever rounds them."""
    prices = Prices.from_plan(plan)
    if prices is None:
        return None
    return {
        "currency": prices.currency,
        "energy_price_per_kwh": _text(prices.energy_price_per_kwh),
        "pue": _text(prices.pue),
        "host_cost_per_second": {host: _text(cost) for host, cost in prices.host_cost_per_second.items()},
    }


def _text(value: Decimal) -> str:
    return f"{value.normalize():f}" if value else "0"


# ---- the PromQL --------------------------------------------------------------------------------------

# Prometheus' duration: a number and a unit (the subset the windows need); goes into PromQL, so
# nothing else is accepted.
_WINDOW = re.compile(r"[1-9][0-9]{0,5}(s|m|h|d)")
STANDARD_WINDOWS = ("5m", "1h")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int:
    """5m -> 300; anything but a plain Prometheus duration is refused (it is written into PromQL)."""
    if not _WINDOW.fullmatch(window):
        raise TelemetryError(
            f"not a window: {window[:40]!r}",
            code="bad-window",
            hint="a number and a unit: 90s, 5m, 1h, 7d",
        )
    return int(window[:-1]) * _UNIT_SECONDS[window[-1]]


@dataclass(frozen=True)
class Step:
    """One expression; `{name}` in it stands for an earlier step's result, `{window}` and
    `{window_seconds}` for the window. `record` names its recording rule (`{window}` in it too)."""

    name: str
    record: str
    expression: str
    per_window: bool = True


# In order: each step names only steps above it.
STEPS: tuple[Step, ...] = (
    Step(
        "energy_cost_per_joule",
        "aifactory_economics:energy_cost_per_joule",
        f"{PRICE_PER_KWH} * on () group_left () {PUE} / {JOULES_PER_KWH}",
        per_window=False,
    ),
    Step(
        "decisions",
        "host_model_tenant:aifactory_serve_decisions:increase{window}",
        f"sum by (host, model, tenant) (increase({DECISIONS}[{{window}}]))",
    ),
    Step(
        "host_decisions",
        "host:aifactory_serve_decisions:increase{window}",
        "sum by (host) ({decisions})",
    ),
    Step(
        "host_energy",
        "host_source:aifactory_host_energy_joules:increase{window}",
        f"sum by (host, source) (increase({ENERGY}[{{window}}]))",
    ),
    Step(
        # d/D: the (model, tenant)'s part of its host's decisions (hosts that decided nothing drop out).
        "share",
        "host_model_tenant:aifactory_serve_decisions:share{window}",
        "{decisions} / on (host) group_left () ({host_decisions} > 0)",
    ),
    Step(
        "host_cost",
        "host_source:aifactory_cost:increase{window}",
        "{host_energy} * on () group_left (currency) {energy_cost_per_joule}"
        f" + on (host, currency) group_left () ({HOST_COST_PER_SECOND} * {{window_seconds}})",
    ),
    Step(
        "model_decisions",
        "model_tenant_source:aifactory_serve_decisions:increase{window}",
        # the decisions of hosts with an energy figure, under that figure's source
        "sum by (model, tenant, source)"
        " ({decisions} * on (host) group_left (source) (0 * {host_energy} + 1))",
    ),
    Step(
        "model_joules",
        "model_tenant_source:aifactory_energy_joules:increase{window}",
        "sum by (model, tenant, source) ({share} * on (host) group_left (source) {host_energy})",
    ),
    Step(
        "model_cost",
        "model_tenant_source:aifactory_cost:increase{window}",
        "sum by (model, tenant, source, currency)"
        " ({share} * on (host) group_left (source, currency) {host_cost})",
    ),
    Step(
        "joules_per_decision",
        "model_tenant_source:aifactory_energy_joules_per_decision:ratio{window}",
        "{model_joules} / ({model_decisions} > 0)",
    ),
    Step(
        "cost_per_decision",
        "model_tenant_source:aifactory_cost_per_decision:ratio{window}",
        "{model_cost} / ignoring (currency) group_left () ({model_decisions} > 0)",
    ),
)
_STEP = {step.name: step for step in STEPS}


def _fill(expression: str, window: str, names: Mapping[str, str]) -> str:
    return expression.format(window=window, window_seconds=window_seconds(window), **names)


def recorded(window: str) -> dict[str, str]:
    """Each step's recording rule name for a window."""
    return {step.name: step.record.format(window=window) for step in STEPS}


def rules(window: str) -> list[dict[str, str]]:
    """The recording rules of one window: each step reading the records above it."""
    names = recorded(window)
    return [
        {"record": names[step.name], "expr": _fill(step.expression, window, names)}
        for step in STEPS
        if step.per_window
    ]


def expression(name: str, window: str) -> str:
    """One step as a standalone expression for any window (the steps above it inlined)."""
    window_seconds(window)
    inlined: dict[str, str] = {}
    for step in STEPS:
        inlined[step.name] = "(" + _fill(step.expression, window, inlined) + ")"
        if step.name == name:
            return inlined[name]
    raise KeyError(name)


RULES_FILE = Path(__file__).resolve().parents[2] / "policies" / "alerts" / "economics.rules.yml"
_HEADER = """\
# Joules and cost per decision, per model, tenant and energy source (docs/economics.md).
# GENERATED by `python -m aifactory.telemetry.economics` from aifactory/telemetry/economics.py: edit
# that, not this. Tests: economics.rules_test.yml (promtool test rules, a hand-computed example).
# Inputs: aifactory_serve_decisions_total (the inference servers), aifactory_host_energy_joules_total
# (the power collector's BMC readings, and energy.rules.yml's RAPL for hosts without one) and the
# price rules the monitoring role renders from the plan (economics-prices.rules.yml: aifactory_economics_*).
"""


def rules_text() -> str:
    """The committed rules file's bytes."""
    lines = [_HEADER.rstrip("\n"), "groups:"]
    constants = [step for step in STEPS if not step.per_window]
    lines += ["  - name: aifactory-economics-prices", "    rules:"]
    for step in constants:
        lines += [f"      - record: {step.record}", f"        expr: {step.expression}"]
    for window in STANDARD_WINDOWS:
        lines += [f"  - name: aifactory-economics-{window}", "    rules:"]
        for rule in rules(window):
            lines += [f"      - record: {rule['record']}", f"        expr: {rule['expr']}"]
    return "\n".join(lines) + "\n"


# ---- the figures -------------------------------------------------------------------------------------


class Queries(Protocol):
    """What the figures need of Prometheus (PrometheusClient in status.py): an instant query."""

    def query(self, expression: str, *, at: float | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class DecisionEconomics:
    """One (model, tenant, source) over a window."""

    model: str
    tenant: str
    source: str  # measured | emulated | estimated: how the energy was obtained
    decisions: float  # those made on hosts with an energy figure of this source
    joules: float
    joules_per_decision: float
    currency: str | None  # None: the spec has no economics section, so no cost
    cost: float | None
    cost_per_decision: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tenant": self.tenant,
            "source": self.source,
            "decisions": self.decisions,
            "joules": self.joules,
            "joules_per_decision": self.joules_per_decision,
            "currency": self.currency,
            "cost": self.cost,
            "cost_per_decision": self.cost_per_decision,
        }


def _by_key(
    result: list[dict[str, Any]], *labels: str
) -> dict[tuple[str, ...], tuple[float, dict[str, str]]]:
    return {
        tuple(str(r["metric"].get(label, "")) for label in labels): (float(r["value"][1]), r["metric"])
        for r in result
    }


def decision_economics(client: Queries, *, window: str, at: float | None = None) -> list[DecisionEconomics]:
    """Joules and cost per decision per (model, tenant, source) over the `window` ending now (or
    `at`), from three instant queries: the recording rules' PromQL, inlined for this window."""
    key = ("model", "tenant", "source")
    decisions = _by_key(client.query(expression("model_decisions", window), at=at), *key)
    joules = _by_key(client.query(expression("model_joules", window), at=at), *key)
    costs = _by_key(client.query(expression("model_cost", window), at=at), *key)
    rows = []
    for found in sorted(decisions):
        model, tenant, source = found
        count = decisions[found][0]
        if count <= 0 or found not in joules:
            continue
        cost = costs.get(found)
        rows.append(
            DecisionEconomics(
                model,
                tenant,
                source,
                decisions=count,
                joules=joules[found][0],
                joules_per_decision=joules[found][0] / count,
                currency=cost[1].get("currency") if cost else None,
                cost=cost[0] if cost else None,
                cost_per_decision=cost[0] / count if cost else None,
            )
        )
    return rows


# ---- a training job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostEnergy:
    """A host's energy over an interval, and how it was obtained."""

    host: str
    joules: float
    source: str


@dataclass(frozen=True)
class JobEconomics:
    """A training job's energy and cost: its nodes' whole energy from start to end."""

    job: str
    seconds: float
    hosts: tuple[HostEnergy, ...]
    joules: float
    sources: tuple[str, ...]  # every source its figure is made of; the weakest is what it is
    currency: str | None
    cost: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "seconds": self.seconds,
            "hosts": [{"host": h.host, "joules": h.joules, "source": h.source} for h in self.hosts],
            "joules": self.joules,
            "sources": list(self.sources),
            "currency": self.currency,
            "cost": self.cost,
        }


def job_cost(
    job: str, energy: Sequence[HostEnergy], *, seconds: float, prices: Prices | None
) -> JobEconomics:
    """The job's joules (its hosts' sum) and cost: energy x price x PUE, plus each host's fixed cost
    per second over the job's duration. Exact decimals inside; floats out."""
    joules = sum((Decimal(repr(h.joules)) for h in energy), Decimal(0))
    cost: Decimal | None = None
    if prices is not None:
        fixed = sum((prices.host_cost_per_second.get(h.host, Decimal(0)) for h in energy), Decimal(0))
        cost = joules * prices.energy_cost_per_joule + fixed * Decimal(repr(seconds))
    return JobEconomics(
        job=job,
        seconds=seconds,
        hosts=tuple(sorted(energy, key=lambda h: h.host)),
        joules=float(joules),
        sources=tuple(sorted({h.source for h in energy})),
        currency=prices.currency if prices else None,
        cost=float(cost) if cost is not None else None,
    )


def job_economics(
    client: Queries, plan: SitePlan, *, job: str, nodes: Sequence[str], start: float, end: float
) -> JobEconomics:
    """A Slurm job's energy and cost from its nodes and start/end (sacct's NodeList, Start, End as
    Unix seconds): each node's energy counter's increase over [start, end], asked at `end`."""
    planned = {h.name for h in plan.hosts}
    unknown = [n for n in nodes if n not in planned]
    if unknown or not nodes:
        raise TelemetryError(f"job {job}: nodes not in the plan: {', '.join(unknown[:5]) or 'none given'}")
    if not end > start:
        raise TelemetryError(f"job {job}: it ends ({end}) before it starts ({start})")
    seconds = end - start
    hosts = "|".join(sorted(nodes))  # plan names: letters, digits and '-' only, nothing to escape
    result = client.query(
        f'sum by (host, source) (increase({ENERGY}{{host=~"{hosts}"}}[{round(seconds * 1000)}ms]))',
        at=end,
    )
    energy = [
        HostEnergy(str(r["metric"].get("host")), float(r["value"][1]), str(r["metric"].get("source")))
        for r in result
    ]
    return job_cost(job, energy, seconds=seconds, prices=Prices.from_plan(plan))


def main(argv: Sequence[str] | None = None) -> int:
    """Write the recording rules file (`-o -` for standard output), or `--check` it."""
    return generated_file_main(
        argv,
        prog="python -m aifactory.telemetry.economics",
        description="the economics recording rules (policies/alerts/economics.rules.yml)",
        text=rules_text,
        default_output=RULES_FILE,
        what="economics rules",
        code="rules-not-written",
    )


if __name__ == "__main__":
    sys.exit(main())
