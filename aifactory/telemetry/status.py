"""`aifactory status SITE`: the site at work, read from its Prometheus over TLS.

Runs on the control host (as every command that reaches the site's hosts; in the lab through
`aifactory lab exec`). It queries Prometheus' HTTP API on the monitoring host's management address
with the service certificate `aifactory monitoring certs` issued (the same identity Prometheus
scrapes with), checking Prometheus' own certificate against the site CA, and reads:

    hosts       every planned host: whether its node exporter is up, its Slurm state
    targets     every scrape target: job, host, health, the last scrape error
    alerts      the alerts Prometheus has pending or firing, and those the receiver recorded firing
    decisions   decisions per second over every serving node (rate of aifactory_serve_decisions_total)
    economics   joules and cost per decision per model, tenant and energy source over a window
                (aifactory/telemetry/economics.py, docs/economics.md)
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from aifactory.errors import TelemetryError
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState
from aifactory.telemetry.certs import PROMETHEUS, monitoring_cert_dir
from aifactory.telemetry.economics import decision_economics, window_seconds
from aifactory.telemetry.receiver import read_alerts_view
from aifactory.trust.tokens import TrustFiles

PROMETHEUS_PORT = 9090  # the monitoring role's monitoring_prometheus_port
TIMEOUT = 10.0
ECONOMICS_WINDOW = "5m"  # "now": the shorter of the recording rules' standard windows


@dataclass(frozen=True)
class PrometheusClient:
    """Prometheus' HTTP API over TLS with a client certificate from the site CA."""

    url: str
    context: ssl.SSLContext

    @classmethod
    def for_site(cls, plan: SitePlan, state: SiteState, *, port: int = PROMETHEUS_PORT) -> PrometheusClient:
        host = plan.host(monitoring_host(plan))
        folder = monitoring_cert_dir(TrustFiles(state.path("runtime")))
        if not (folder / f"{PROMETHEUS}.pem").is_file():
            raise TelemetryError(
                f"no monitoring certificates in {folder}",
                code="monitoring-not-deployed",
                hint="deploy the site first (aifactory up, or aifactory deploy)",
            )
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        context.load_cert_chain(str(folder / f"{PROMETHEUS}.pem"), str(folder / f"{PROMETHEUS}.key"))
        address = host.management_address
        shown = f"[{address}]" if ":" in address else address
        return cls(f"https://{shown}:{port}", context)

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(
                f"{self.url}{path}{query}", context=self.context, timeout=TIMEOUT
            ) as answer:
                body = json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TelemetryError(
                f"Prometheus at {self.url} did not answer {path}: {exc}",
                hint="is the monitoring host up? (lab: aifactory lab exec SITE -- aifactory status SITE)",
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise TelemetryError(f"Prometheus at {self.url} refused {path}: {str(body)[:200]}")
        return body["data"]

    def query(self, expression: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, now or `at` a time (Unix seconds)."""
        when = {"time": f"{at:.3f}"} if at is not None else {}
        data = self.get("/api/v1/query", query=expression, **when)
        return list(data.get("result", [])) if isinstance(data, dict) else []


def monitoring_host(plan: SitePlan) -> str:
    if plan.monitoring is not None:
        return plan.monitoring.host
    if plan.control_host is None:
        raise TelemetryError("the site has no control host and no monitoring pool: nothing runs Prometheus")
    return plan.control_host


def _scalar(result: list[dict[str, Any]]) -> float:
    return round(sum(float(r["value"][1]) for r in result), 3) if result else 0.0


def site_status(
    plan: SitePlan,
    client: PrometheusClient,
    state: SiteState,
    *,
    window: str = ECONOMICS_WINDOW,
    at: float | None = None,
) -> dict[str, Any]:
    """The site now; the economics figures over `window`, ending now or `at` (Unix seconds)."""
    window_seconds(window)  # a bad window is refused before any query
    up = {r["metric"].get("host"): r["value"][1] == "1" for r in client.query('up{job="node"}')}
    slurm = {
        r["metric"].get("node"): r["metric"].get("state")
        for r in client.query("aifactory_slurm_node_state == 1")
    }
    targets = [
        {
            "job": t["labels"].get("job"),
            "host": t["labels"].get("host"),
            "instance": t["labels"].get("instance"),
            "url": t.get("scrapeUrl"),
            "health": t.get("health"),
            "last_error": t.get("lastError") or None,
        }
        for t in client.get("/api/v1/targets", state="active").get("activeTargets", [])
    ]
    alerts = [
        {
            "name": a["labels"].get("alertname"),
            "state": a.get("state"),
            "severity": a["labels"].get("severity"),
            "host": a["labels"].get("host"),
            "summary": a.get("annotations", {}).get("summary"),
            "since": a.get("activeAt"),
        }
        for a in client.get("/api/v1/alerts").get("alerts", [])
    ]
    interval = plan.monitoring.scrape_interval_seconds if plan.monitoring else 30
    rate_window = max(4 * interval, 60)
    return {
        "site": plan.name,
        "prometheus": client.url,
        "hosts": [
            {
                "name": h.name,
                "role": h.role,
                "address": h.management_address,
                "up": up.get(h.name),
                "slurm_state": slurm.get(h.name),
            }
            for h in plan.hosts
        ],
        "targets": sorted(targets, key=lambda t: (str(t["job"]), str(t["host"]))),
        "alerts": sorted(alerts, key=lambda a: (str(a["name"]), str(a["host"]))),
        "receiver_alerts": read_alerts_view(state),
        "decisions_per_second": _scalar(
            client.query(f"sum(rate(aifactory_serve_decisions_total[{rate_window}s]))")
        ),
        "economics": {
            "window": window,
            "at": at,
            "per_decision": [row.as_dict() for row in decision_economics(client, window=window, at=at)],
        },
    }
