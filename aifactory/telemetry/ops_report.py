"""`aifactory report ops SITE --since 24h -o DIR`: the site at work over a window, as a signed page.

Reads Prometheus' `query_range` through the status view's client (aifactory.telemetry.status) with
the queries of OPS_QUERIES and economics_queries (every query the report makes, on raw series only:
the economics ones inlined from aifactory.telemetry.economics, not read from its recording rules),
and writes into DIR:

    report.html   self-contained: CSS inline, SVG plots drawn by aifactory.telemetry.svg, no script,
                  no external URL
    report.json   what was plotted (every series' points), the window, and the signer
    SHA256SUMS, SHA256SUMS.sig, allowed_signers    signed as the audit report is (aifactory.audit.sign,
                  the site's audit key); `aifactory audit verify DIR` checks it

The same data gives the same bytes (series sorted by name, numbers rounded, no clock but the
window's). Joules and cost per decision per model and energy source come from the economics steps
(aifactory.telemetry.economics: each serving host's energy shared among the decisions it served,
docs/economics.md), the same PromQL as the recording rules and `aifactory status`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from aifactory.audit.sign import MANIFEST, SigningKey, file_digest, sign_folder, site_audit_key
from aifactory.errors import Location, TelemetryError, UsageError
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState
from aifactory.telemetry.economics import expression
from aifactory.telemetry.svg import Plot, Series, render

HTML, JSON = "report.html", "report.json"
FILES = (HTML, JSON)
KIND = "ops"
MAX_POINTS = 240
MIN_STEP = 15
_DURATION = re.compile(r"([1-9][0-9]{0,4})([mhd])")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}

# Every query the report makes (raw series only). {window} is the rate window.
_QUANTILE = "histogram_quantile({q}, sum by (le) (rate(aifactory_serve_{what}_seconds_bucket[{{window}}])))"
OPS_QUERIES: Mapping[str, str] = {
    "decisions": "sum by (model) (rate(aifactory_serve_decisions_total[{window}]))",
    "request_p50": _QUANTILE.format(q=0.5, what="request"),
    "request_p99": _QUANTILE.format(q=0.99, what="request"),
    "forward_p50": _QUANTILE.format(q=0.5, what="forward"),
    "forward_p99": _QUANTILE.format(q=0.99, what="forward"),
    "power": "max by (host, source) (aifactory_host_power_watts)",
    "node_states": "count by (state) (aifactory_slurm_node_state == 1)",
    "alerts": 'count by (alertname) (ALERTS{{alertstate="firing"}})',
}


def parse_since(text: str) -> int:
    """`90m`, `24h`, `7d` -> seconds."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(
            f"--since {text!r} is not a duration", location=Location(path="--since"), hint="e.g. 90m, 24h, 7d"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    step: int

    @classmethod
    def ending(cls, end: int, seconds: int) -> Window:
        step = max(MIN_STEP, math.ceil(seconds / MAX_POINTS))
        end -= end % step  # aligned: the same window asked twice gives the same points
        return cls(end - seconds, end, step)

    @property
    def rate_window(self) -> str:
        return f"{max(2 * self.step, 60)}s"


Fetch = Callable[[str, Window], list[dict[str, Any]]]  # query -> Prometheus' matrix result


def prometheus_fetch(client: Any) -> Fetch:
    """query_range through the status view's PrometheusClient."""

    def fetch(query: str, window: Window) -> list[dict[str, Any]]:
        data = client.get(
            "/api/v1/query_range",
            query=query,
            start=str(window.start),
            end=str(window.end),
            step=str(window.step),
        )
        if not isinstance(data, dict) or data.get("resultType") != "matrix":
            raise TelemetryError(f"Prometheus gave no matrix for {query}")
        return list(data.get("result", []))

    return fetch


def _points(values: list[list[Any]]) -> tuple[tuple[float, float], ...]:
    kept = []
    for at, raw in values:
        value = float(raw)
        if math.isfinite(value):
            kept.append((float(at), round(value, 6)))
    return tuple(kept)


def _series(result: list[dict[str, Any]], name: Callable[[dict[str, str]], str]) -> tuple[Series, ...]:
    found = [Series(name(r.get("metric", {})), _points(r.get("values", []))) for r in result]
    return tuple(sorted(found, key=lambda s: s.name))


def _model(labels: dict[str, str]) -> str:
    return labels.get("model") or "all models"


def _label(name: str) -> Callable[[dict[str, str]], str]:
    return lambda labels: labels.get(name, "?")


def economics_queries(window: str) -> dict[str, str]:
    """Joules and cost per decision per model and energy source over each step's window: the
    economics steps (aifactory.telemetry.economics, the recording rules' own PromQL) summed over
    tenants, so the page and `aifactory status` share one method."""
    decisions = f"(sum by (model, source) ({expression('model_decisions', window)}) > 0)"
    return {
        "joules": f"sum by (model, source) ({expression('model_joules', window)}) / {decisions}",
        "cost": f"sum by (model, source, currency) ({expression('model_cost', window)})"
        f" / on (model, source) group_left () {decisions}",
    }


def gather(fetch: Fetch, window: Window, *, has_economics: bool) -> tuple[Plot, ...]:
    def run(key: str) -> list[dict[str, Any]]:
        return fetch(OPS_QUERIES[key].format(window=window.rate_window), window)

    latency = []
    for key, name in (
        ("request_p50", "request p50"),
        ("request_p99", "request p99"),
        ("forward_p50", "forward p50"),
        ("forward_p99", "forward p99"),
    ):
        latency += [Series(name, s.points) for s in _series(run(key), _model)]
    economics = economics_queries(window.rate_window)
    joules = _series(fetch(economics["joules"], window), lambda m: f"{_model(m)} ({m.get('source', '?')})")
    costs: tuple[Series, ...] = ()
    cost_note = "no cost plot: the site spec has no economics section (price, PUE, capital cost)"
    if has_economics:
        costs = _series(
            fetch(economics["cost"], window),
            lambda m: f"{_model(m)} ({m.get('source', '?')}, {m.get('currency', '?')})",
        )
        cost_note = ""
    return (
        Plot("decisions", "Decisions per second", "1/s", _series(run("decisions"), _model)),
        Plot("latency", "Latency, 50th and 99th percentile", "s", tuple(latency)),
        Plot("joules", "Joules per decision, per model and energy source", "J", joules),
        Plot("cost", "Cost per decision, per model and energy source", "", costs, note=cost_note),
        Plot(
            "power",
            "Host power",
            "W",
            _series(run("power"), lambda m: f"{m.get('host', '?')} ({m.get('source', '?')})"),
        ),
        Plot(
            "nodes",
            "Slurm nodes by state",
            "nodes",
            _series(run("node_states"), lambda m: m.get("state", "?")),
        ),
        Plot("alerts", "Alerts firing", "alerts", _series(run("alerts"), lambda m: m.get("alertname", "?"))),
    )


CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:820px}
h1{font-size:22px}h2{font-size:16px;margin-top:28px}
.plot{border:1px solid #ccc;background:#fff}.tick,.legend{font-size:11px}.title{font-size:13px}
.empty{font-size:13px;fill:#777}.meta{color:#555;font-size:13px}
"""


def _time(at: int) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_html(site: str, window: Window, plots: tuple[Plot, ...]) -> str:
    body = [
        f"<h1>Operations report: {escape(site)}</h1>",
        f'<p class="meta">from {_time(window.start)} to {_time(window.end)}, one point every '
        f"{window.step} s. Power series say how they were obtained (measured, emulated, estimated). "
        "The data of every plot is in report.json beside this page; the folder is signed "
        "(aifactory audit verify).</p>",
    ]
    for plot in plots:
        body.append(f"<h2>{escape(plot.title)}</h2>")
        if plot.note and plot.series:
            body.append(f'<p class="meta">{escape(plot.note)}</p>')
        body.append(render(plot))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Operations report: {escape(site)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def report_json(site: str, window: Window, plots: tuple[Plot, ...], key: SigningKey) -> dict[str, Any]:
    return {
        "kind": KIND,
        "site": site,
        "window": {"start": _time(window.start), "end": _time(window.end), "step_seconds": window.step},
        "queries": dict(OPS_QUERIES),
        "plots": [
            {
                "key": p.key,
                "title": p.title,
                "unit": p.unit,
                "note": p.note,
                "series": [{"name": s.name, "points": [list(pt) for pt in s.points]} for s in p.series],
            }
            for p in plots
        ],
        "signer": key.describe(),
        "logs": [],  # an ops report cites no log (audit verify checks the ones a report cites)
    }


def write_report(
    folder: Path, *, site: str, window: Window, plots: tuple[Plot, ...], key: SigningKey
) -> tuple[str, ...]:
    """report.html and report.json into `folder`, signed with `key`. Returns the files signed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HTML).write_text(render_html(site, window, plots), encoding="utf-8")
    with (folder / JSON).open("w", encoding="utf-8", newline="\n") as handle:
        json.dump(report_json(site, window, plots, key), handle, indent=1, ensure_ascii=False, sort_keys=True)
        handle.write("\n")
    sign_folder(folder, FILES, key)
    return FILES


def publish_report(
    folder: Path, *, plan: SitePlan, state: SiteState, window: Window, plots: tuple[Plot, ...]
) -> tuple[str, ...]:
    """`write_report` signed with the site's audit key, then recorded in the operator log: the audit
    report's AU-6 evidence (aifactory.audit.evidence.operations) reads the latest such record, the
    folder, its signed manifest's digest and the window, and checks the folder still verifies."""
    files = write_report(folder, site=plan.name, window=window, plots=plots, key=site_audit_key(state))
    state.record(
        command="report ops",
        result="written",
        spec_digest=plan.spec_digest,
        detail={
            "folder": str(folder.resolve()),
            "manifest_sha256": file_digest(folder / MANIFEST),
            "start": window.start,
            "end": window.end,
        },
    )
    return files
