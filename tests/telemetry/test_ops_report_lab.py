"""Host power and the operations report on the session's deployed lab, after a load run.

Real parts: the session's deployed lab with monitoring (the telemetry package's `monitored` fixture,
tests/telemetry/monitored_lab.py: the monitoring deploy with the power collector on the control host
polling every lab BMC, the sushy-tools emulators with the emulated Power resource), a load run of
known size through a serving node over HTTPS, and `aifactory report ops` on the control host
reading Prometheus.

What a user relies on: every host with a BMC has a power series, labelled `source="emulated"` (the
lab has no power sensor); `report ops` after the run draws every plot from the run's data (the cost
plot says the spec has no economics section; the alerts plot has points only when an alert fired in
the window, which this module does not cause), and its folder verifies as signed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from aifactory.state import SiteState
from tests.telemetry.browser import rendered_dom
from tests.telemetry.monitored_lab import Monitored, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LOAD = 40  # allowed requests in the load run


def _load_run(monitored: Monitored) -> str:
    """LOAD allowed requests to the first serving node; returns the host."""
    host = monitored.serving[0]
    monitored.wait_scraped(host)
    statuses = monitored.send(monitored.load_for(host), LOAD, 0)
    assert all(s in (200, 503) for s in statuses), statuses
    return host


def test_every_bmc_host_has_an_emulated_power_series(monitored: Monitored) -> None:
    lab = monitored.lab
    bmc_hosts = {h.name for h in lab.plan.hosts if h.bmc is not None}
    assert bmc_hosts, "the lab spec plans BMCs"

    def power() -> dict[str, dict[str, str]] | None:
        found = {r["metric"]["host"]: r["metric"] for r in monitored.query("aifactory_host_power_watts")}
        return found if set(found) == bmc_hosts else None

    series = wait_until("every BMC host's power series", 180, power)
    assert {labels["source"] for labels in series.values()} == {"emulated"}, series
    assert {labels["method"] for labels in series.values()} == {"redfish-power"}
    energy = monitored.query("aifactory_host_energy_joules_total")
    assert {r["metric"]["host"] for r in energy} == bmc_hosts
    assert all(r["metric"]["source"] == "emulated" for r in energy)


def test_report_ops_draws_every_plot_from_the_run(monitored: Monitored, tmp_path: Path) -> None:
    lab = monitored.lab
    _load_run(monitored)
    folder = SiteState.for_site(lab.site).subdir("reports") / "ops-lab-test"

    def reported() -> dict[str, Any] | None:
        lab.exec(
            ["aifactory", "report", "ops", str(lab.spec), "--since", "30m", "-o", str(folder)], timeout=300
        )
        data: dict[str, Any] = json.loads((folder / "report.json").read_text())
        plots = {p["key"]: p for p in data["plots"]}
        needed = ("decisions", "latency", "joules", "cost", "power", "nodes")  # the lab spec has prices
        drawn = all(any(s["points"] for s in plots[k]["series"]) for k in needed)
        return data if drawn else None

    data = wait_until("report ops to draw every plot from the run", 240, reported)
    plots = {p["key"]: p for p in data["plots"]}
    assert all(s["name"].endswith("(emulated, EUR)") for s in plots["cost"]["series"]), plots["cost"]
    assert all(s["name"].endswith("(emulated)") for s in plots["power"]["series"])
    assert max(v for s in plots["decisions"]["series"] for _, v in s["points"]) > 0
    html = (folder / "report.html").read_text()
    assert html.count("<svg ") == len(plots)
    # as a browser draws it: every plot the run fed has its points on the page
    svgs = re.findall(r"<svg .*?</svg>", rendered_dom(folder / "report.html", tmp_path / "profile"), re.S)
    assert len(svgs) == len(plots)
    drawn = {p["key"] for p in data["plots"] if any(s["points"] for s in p["series"])}
    assert sum("<circle " in svg for svg in svgs) >= len(drawn) >= 6
    checked = lab.exec(
        ["aifactory", "audit", "verify", str(folder), "--trust", str(folder / "allowed_signers")],
        check=False,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
