"""`report ops`: from a real Prometheus (Debian's, on loopback) whose TSDB was backfilled with
`promtool tsdb create-blocks-from openmetrics` from series written for this test, through the status
client's query_range, to a signed folder that `audit verify` accepts, rendered by headless Chromium.

What makes the data interesting: two models, one with a hostile name, served by two hosts (one with a
hostile name) whose energy the report must share among their decisions; an emulated and a measured
power series; Slurm node states changing; an alert firing for part of the window.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import scaled, wait_for

from aifactory.audit.sign import site_audit_key
from aifactory.audit.verify import verify_report
from aifactory.state import SiteState
from aifactory.telemetry.ops_report import (
    Window,
    gather,
    prometheus_fetch,
    write_report,
)
from aifactory.telemetry.status import PrometheusClient
from tests.telemetry.browser import CHROMIUM, chromium_args, rendered_dom

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None, reason="needs Debian's prometheus and promtool"
)

SCREENSHOT_ENV = "AIFACTORY_OPS_REPORT_SCREENSHOT"
HOSTILE_MODEL = '<script>alert("m")</script>'
HOSTILE_HOST = '"><img src=x onerror=alert(1)>'
STEP = 15
SPAN = 3600  # one hour of samples, ending END
END = (int(time.time()) // 3600) * 3600 - 600  # within Prometheus' default retention, before now
START = END - SPAN
# per 15 s: decisions by (host, model), and each host's power (W)
RATES = {("cpu-001", "gpt-small"): 30, ("cpu-001", HOSTILE_MODEL): 10, (HOSTILE_HOST, HOSTILE_MODEL): 20}
POWER = {"cpu-001": ("emulated", 200.0), HOSTILE_HOST: ("measured", 300.0)}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def openmetrics() -> str:
    times = range(START, END + 1, STEP)
    lines = ["# TYPE aifactory_serve_decisions counter"]
    for (host, model), per_step in sorted(RATES.items()):
        labels = f'host="{_label(host)}",model="{_label(model)}",allow="true"'
        lines += [
            f"aifactory_serve_decisions_total{{{labels}}} {i * per_step} {t}" for i, t in enumerate(times)
        ]
    lines.append("# TYPE aifactory_host_power_watts gauge")
    for host, (source, watts) in sorted(POWER.items()):
        labels = f'host="{_label(host)}",source="{source}",method="redfish-power",interval="15s"'
        lines += [f"aifactory_host_power_watts{{{labels}}} {watts} {t}" for t in times]
    lines.append("# TYPE aifactory_host_energy_joules counter")
    for host, (source, watts) in sorted(POWER.items()):
        labels = f'host="{_label(host)}",source="{source}",method="redfish-power",interval="15s"'
        lines += [
            f"aifactory_host_energy_joules_total{{{labels}}} {i * watts * STEP} {t}"
            for i, t in enumerate(times)
        ]
    for family in ("request", "forward"):
        lines.append(f"# TYPE aifactory_serve_{family}_seconds histogram")
        for le, share in (("0.01", 0.5), ("0.1", 0.9), ("1.0", 1.0), ("+Inf", 1.0)):
            lines += [
                f'aifactory_serve_{family}_seconds_bucket{{le="{le}"}} {int(i * 60 * share)} {t}'
                for i, t in enumerate(times)
            ]
        lines += [f"aifactory_serve_{family}_seconds_count {i * 60} {t}" for i, t in enumerate(times)]
        lines += [f"aifactory_serve_{family}_seconds_sum {i * 1.5} {t}" for i, t in enumerate(times)]
    lines.append("# TYPE aifactory_slurm_node_state gauge")
    half = START + SPAN // 2
    for node in ("cpu-001", "cpu-002"):
        for state in ("idle", "drained"):
            values = [1 if (state == "drained") == (node == "cpu-002" and t >= half) else 0 for t in times]
            labels = f'node="{node}",state="{state}"'
            lines += [
                f"aifactory_slurm_node_state{{{labels}}} {v} {t}" for v, t in zip(values, times, strict=True)
            ]
    lines.append("# TYPE ALERTS gauge")
    lines += [
        f'ALERTS{{alertname="HostDrained",alertstate="firing",severity="warning"}} 1 {t}'
        for t in times
        if t >= half
    ]
    return "\n".join(lines) + "\n# EOF\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusClient]:
    folder = tmp_path_factory.mktemp("prometheus")
    source = folder / "series.om"
    source.write_text(openmetrics())
    data = folder / "data"
    done = subprocess.run(
        [str(PROMTOOL), "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (folder / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = _free_port()
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    try:
        wait_for(
            ready,
            what="Prometheus to be ready",
            timeout=60,
            detail=lambda: (folder / "prometheus.log").read_text()[-2000:],
        )
        yield PrometheusClient(url, ssl.create_default_context())  # plain HTTP on loopback: no TLS used
    finally:
        process.terminate()
        process.wait(timeout=scaled(30))
        log.close()


def _write(folder: Path, client: PrometheusClient, state: SiteState) -> Path:
    window = Window.ending(END, SPAN - 300)
    plots = gather(prometheus_fetch(client), window, has_economics=False)
    write_report(folder, site="ops-test", window=window, plots=plots, key=site_audit_key(state))
    return folder


@pytest.fixture(scope="module")
def written(prometheus: PrometheusClient, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SiteState]:
    state = SiteState.for_site("ops-test", home=tmp_path_factory.mktemp("state"))
    return _write(tmp_path_factory.mktemp("report"), prometheus, state), state


def svgs(html: str) -> dict[str, ET.Element]:
    found = {}
    for text in re.findall(r"<svg .*?</svg>", html, re.S):
        element = ET.fromstring(text)  # well-formed XML, or this raises
        found[element.attrib["id"]] = element
    return found


def test_every_plot_is_drawn_from_the_data(written):
    folder, _ = written
    plots = svgs((folder / "report.html").read_text())
    ns = "{http://www.w3.org/2000/svg}"
    drawn = {key: len(svg.findall(f".//{ns}circle")) for key, svg in plots.items()}
    assert set(drawn) == {
        f"plot-{k}" for k in ("decisions", "latency", "joules", "cost", "power", "nodes", "alerts")
    }
    assert drawn["plot-cost"] == 0  # the spec has no economics section: said so, not drawn
    assert all(count > 10 for key, count in drawn.items() if key != "plot-cost"), drawn
    data = json.loads((folder / "report.json").read_text())
    by_key = {p["key"]: p for p in data["plots"]}
    assert "no economics section" in by_key["cost"]["note"]
    names = {s["name"] for s in by_key["power"]["series"]}
    assert names == {"cpu-001 (emulated)", f"{HOSTILE_HOST} (measured)"}
    decisions = {s["name"]: s["points"][-1][1] for s in by_key["decisions"]["series"]}
    assert decisions == pytest.approx({"gpt-small": 30 / STEP, HOSTILE_MODEL: 30 / STEP})


def test_joules_per_decision_share_each_host_energy_among_its_decisions(written):
    folder, _ = written
    data = json.loads((folder / "report.json").read_text())
    (joules,) = [p for p in data["plots"] if p["key"] == "joules"]
    last = {s["name"]: s["points"][-1][1] for s in joules["series"]}
    # cpu-001 (emulated): 200 W x 15 s = 3000 J per step for its 40 decisions; the hostile host
    # (measured): 4500 J for its 20. Each model's share of a host's energy is its share of the host's
    # decisions, reported per energy source.
    per_decision_cpu, per_decision_hostile = 3000 / 40, 4500 / 20
    assert last == pytest.approx(
        {
            "gpt-small (emulated)": per_decision_cpu,
            f"{HOSTILE_MODEL} (emulated)": per_decision_cpu,
            f"{HOSTILE_MODEL} (measured)": per_decision_hostile,
        },
        rel=1e-3,
    )


def test_hostile_names_are_escaped(written):
    folder, _ = written
    html = (folder / "report.html").read_text()
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing external


def test_same_data_same_bytes_and_signed_like_the_audit_report(written, prometheus, tmp_path):
    folder, state = written
    again = _write(tmp_path / "again", prometheus, state)
    for name in ("report.html", "report.json", "SHA256SUMS", "SHA256SUMS.sig"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name
    trust = tmp_path / "trust"
    trust.write_bytes((folder / "allowed_signers").read_bytes())
    assert verify_report(again, trust=trust).ok
    (again / "report.html").write_text(
        (again / "report.html").read_text().replace("Host power", "Host pover")
    )
    result = verify_report(again, trust=trust)
    assert not result.ok and any("report.html was changed" in p for p in result.problems)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_headless_chromium_renders_every_plot(written, tmp_path):
    folder, _ = written
    page = (folder / "report.html").as_uri()
    common = chromium_args(tmp_path / "profile")
    dom = rendered_dom(folder / "report.html", tmp_path / "profile")
    assert len(re.findall(r"<circle ", dom)) > 60
    shot = tmp_path / "ops-report.png"
    subprocess.run(
        [*common, "--window-size=860,2100", f"--screenshot={shot}", page],
        capture_output=True,
        timeout=scaled(120),
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get(SCREENSHOT_ENV):  # docs/ops-report.png is made this way
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
