"""The economics of a decision: the spec section, the prices, the generated rules, and the figures
read from a real Prometheus.

Real parts: Debian's `prometheus` and `promtool` on loopback. The figures' data is written as
OpenMetrics and backfilled with `promtool tsdb create-blocks-from openmetrics`, then read through
the same client and PromQL `aifactory status` uses, at a fixed time, against numbers worked out by
hand below (the same example as policies/alerts/economics.rules_test.yml).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from ansible_env import ansible_env

from aifactory.cli.monitoring import economics_table
from aifactory.errors import TelemetryError
from aifactory.plan.build import build_plan
from aifactory.plan.model import EconomicsPlan, PoolEconomicsPlan, SitePlan
from aifactory.spec.validate import load_spec
from aifactory.telemetry import economics
from aifactory.telemetry.economics import HostEnergy, Prices, decision_economics, job_cost, job_economics
from aifactory.telemetry.status import PrometheusClient
from tests.spec.base_spec import BASE
from tests.telemetry.conftest import CliResult

ROLES = Path(__file__).resolve().parents[2] / "playbooks" / "roles"

# 5 planned hosts (4 gpu, 1 ctl). Chosen so the per-second costs are round: the fixed yearly cost
# is 31,557.6 per host (0.001 a second), a gpu host's capital 315,576 over 5 years is 0.002 a second.
ECONOMICS = """\
economics:
  currency: EUR
  energy_price_per_kwh: 0.21
  pue: 1.4
  fixed_cost_per_year: 157788
  pools:
    - pool: gpu
      capital_cost_per_host: 315576
      amortisation_years: 5
"""


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(text)
    return path


def _plan(tmp_path: Path, text: str = BASE + ECONOMICS) -> SitePlan:
    return build_plan(load_spec(_spec(tmp_path, text)).spec)[0]


def test_economics_reach_the_plan_as_exact_decimals_and_round_trip(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert plan.economics == EconomicsPlan(
        currency="EUR",
        energy_price_per_kwh="0.21",
        pue="1.4",
        fixed_cost_per_year="157788",
        pools=(PoolEconomicsPlan("gpu", "315576", 5),),
    )
    assert '"energy_price_per_kwh": "0.21"' in plan.to_json()  # a string: no binary float on the way
    again = SitePlan.from_dict(json.loads(plan.to_json()))
    assert again == plan and again.digest() == plan.digest()


def test_a_spec_without_economics_plans_as_before(tmp_path: Path) -> None:
    without = _plan(tmp_path, BASE)
    assert without.economics is None and "economics" not in without.to_dict()
    (tmp_path / "other").mkdir()
    assert without.spec_digest != _plan(tmp_path / "other").spec_digest
    assert Prices.from_plan(without) is None


def test_prices_per_host_second_are_worked_out_exactly(tmp_path: Path) -> None:
    prices = Prices.from_plan(_plan(tmp_path))
    assert prices is not None
    assert prices.host_cost_per_second == {
        **{f"base-gpu-00{i}": Decimal("0.003") for i in range(1, 5)},
        "base-ctl-001": Decimal("0.001"),
    }
    # 0.21 x 1.4 / 3,600,000 per joule: exact in decimal, not in binary
    assert prices.energy_cost_per_joule == Decimal("0.294") / 3_600_000
    settings = economics.price_settings(_plan(tmp_path))
    assert settings is not None
    assert settings["host_cost_per_second"]["base-ctl-001"] == "0.001"
    assert (settings["energy_price_per_kwh"], settings["pue"]) == ("0.21", "1.4")


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        ("  currency: EUR", "economics.currency", "ISO 4217"),
        ("  energy_price_per_kwh: 0.21", "economics.energy_price_per_kwh", "at most 6 decimal places"),
        ("  pue: 1.4", "economics.pue", "greater than or equal to 1"),
        ("  pue: 1.4", "economics.pue", "less than or equal to 3"),
        ("  fixed_cost_per_year: 157788", "economics.fixed_cost_per_year", "at most 2 decimal places"),
        ("    - pool: gpu", "economics.pools[0].pool", "nowhere"),
        (
            "      amortisation_years: 5",
            "economics.pools[0].amortisation_years",
            "greater than or equal to 1",
        ),
    ],
    ids=["currency", "price-places", "pue-low", "pue-high", "cost-places", "unknown-pool", "years"],
)
def test_bad_economics_are_refused_with_file_line_and_field(
    tmp_path: Path, cli: Callable[..., CliResult], edit: str, field: str, words: str
) -> None:
    bad = {
        "  currency: EUR": "  currency: euro",
        "  energy_price_per_kwh: 0.21": "  energy_price_per_kwh: 0.1234567",
        "  fixed_cost_per_year: 157788": "  fixed_cost_per_year: 1.001",
        "    - pool: gpu": "    - pool: nowhere",
        "      amortisation_years: 5": "      amortisation_years: 0",
    }.get(edit, "  pue: 0.9" if "greater" in words else "  pue: 3.5")
    path = _spec(tmp_path, BASE + ECONOMICS.replace(edit, bad))
    code, _out, err = cli("validate", str(path))
    line = len(BASE.splitlines()) + ECONOMICS.splitlines().index(edit) + 1
    assert code != 0
    assert field in err and words in err and f"{path}:{line}" in err, err


@pytest.mark.parametrize(
    "hostile",
    ["EU\x1b", "E{{", "EUR\n", "€UR", "EURO" * 100, "USD\u202e"],
    ids=["escape", "template", "newline", "unicode", "long", "bidi"],
)
def test_hostile_currencies_are_refused_and_never_echoed_raw(
    tmp_path: Path, cli: Callable[..., CliResult], hostile: str
) -> None:
    text = BASE + ECONOMICS.replace("currency: EUR", f"currency: {json.dumps(hostile)}")
    code, _out, err = cli("validate", str(_spec(tmp_path, text)))
    assert code != 0 and "economics.currency" in err
    assert "\x1b" not in err and "\u202e" not in err  # a template delimiter is only named


def test_a_pool_priced_twice_is_refused(tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    twice = ECONOMICS + "    - pool: gpu\n      capital_cost_per_host: 1\n      amortisation_years: 1\n"
    code, _out, err = cli("validate", str(_spec(tmp_path, BASE + twice)))
    assert code != 0 and "economics.pools[1].pool" in err and "priced twice" in err


def test_the_committed_rules_are_the_generated_ones() -> None:
    assert economics.RULES_FILE.read_text() == economics.rules_text(), (
        "run: python -m aifactory.telemetry.economics"
    )


@pytest.mark.parametrize("window", ["5m]) or vector(1", "", "0m", "5", "1y", "-5m", "5m\n"])
def test_a_window_that_is_not_a_duration_is_refused(window: str) -> None:
    with pytest.raises(TelemetryError):
        economics.expression("model_joules", window)


def test_any_window_inlines_the_same_steps_as_the_rules() -> None:
    inlined = economics.expression("joules_per_decision", "90s")
    assert "[90s]" in inlined and "[5m]" not in inlined and ":" not in inlined.replace("[90s]", "")
    assert economics.expression("host_cost", "90s").count("* 90)") == 1


def test_a_training_job_costs_its_hosts_energy_and_their_time(tmp_path: Path) -> None:
    prices = Prices.from_plan(_plan(tmp_path))
    energy = [
        HostEnergy("base-gpu-002", 7_200_000.0, "measured"),
        HostEnergy("base-gpu-001", 3_600_000.0, "emulated"),
    ]
    found = job_cost("42", energy, seconds=3600, prices=prices)
    # 3 kWh x 0.21 x 1.4 = 0.882; two gpu hosts x 0.003 a second x 3600 s = 21.6
    assert found.joules == 10_800_000
    assert found.cost == pytest.approx(22.482, abs=1e-12)
    assert found.sources == ("emulated", "measured")
    assert [h.host for h in found.hosts] == ["base-gpu-001", "base-gpu-002"]
    assert job_cost("42", energy, seconds=3600, prices=None).cost is None


# ---- a real Prometheus --------------------------------------------------------------------------------

T0 = int(time.time()) - 3 * 3600  # inside the default retention; queried at a fixed time, never "now"
STEP = 30
STEPS = 21  # 0 .. 10 minutes
POWER = 'method="redfish-power",interval="15s"'
COUNTERS = {  # the promtool example: (series labels, increase per 30 s step)
    'aifactory_serve_decisions_total{host="base-gpu-001",model="m1",tenant="a",allow="true"}': 6,
    'aifactory_serve_decisions_total{host="base-gpu-001",model="m1",tenant="a",allow="false"}': 1,
    'aifactory_serve_decisions_total{host="base-gpu-001",model="m1",tenant="b",allow="true"}': 3,
    'aifactory_serve_decisions_total{host="base-gpu-002",model="m1",tenant="a",allow="true"}': 5,
    'aifactory_serve_decisions_total{host="base-gpu-003",model="m2",tenant="a",allow="true"}': 2,
    f'aifactory_host_energy_joules_total{{host="base-gpu-001",source="emulated",{POWER}}}': 3000,
    f'aifactory_host_energy_joules_total{{host="base-gpu-002",source="emulated",{POWER}}}': 6000,
    f'aifactory_host_energy_joules_total{{host="base-gpu-003",source="measured",{POWER}}}': 30000,
}
CONSTANTS = {
    'aifactory_economics_energy_price_per_kwh{currency="EUR"}': 0.18,
    "aifactory_economics_pue": 1.5,
    'aifactory_economics_host_cost_per_second{host="base-gpu-001",currency="EUR"}': 0.001,
    'aifactory_economics_host_cost_per_second{host="base-gpu-002",currency="EUR"}': 0.001,
    'aifactory_economics_host_cost_per_second{host="base-gpu-003",currency="EUR"}': 0.01,
}


def _openmetrics() -> str:
    """Counters and constants every 30 s for 10 minutes, grouped by metric family."""
    families: dict[str, list[str]] = {}
    for series, per_step in COUNTERS.items():
        families.setdefault(series.split("{")[0], []).extend(
            f"{series} {per_step * k} {T0 + STEP * k}" for k in range(STEPS)
        )
    for series, value in CONSTANTS.items():
        families.setdefault(series.split("{")[0], []).extend(
            f"{series} {value} {T0 + STEP * k}" for k in range(STEPS)
        )
    lines = []
    for family, samples in families.items():
        kind = "counter" if family.endswith("_total") else "gauge"
        lines.append(f"# TYPE {family.removesuffix('_total')} {kind}")
        lines += samples
    return "\n".join(lines) + "\n# EOF\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusClient]:
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert binary and promtool, "scripts/setup.sh installs Debian's prometheus package"
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "data.om").write_text(_openmetrics())
    subprocess.run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(folder / "data.om"),
            str(folder / "tsdb"),
        ],
        check=True,
        capture_output=True,
    )
    (folder / "prometheus.yml").write_text("global: {}\n")
    port = _free_port()
    running = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "prometheus.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert running.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus did not get ready in 60 s"
            time.sleep(0.2)
        # The status view's own client; loopback plain HTTP here, so its TLS context goes unused.
        yield PrometheusClient(f"http://127.0.0.1:{port}", ssl.create_default_context())
    finally:
        running.terminate()
        running.wait(timeout=30)


AT = T0 + 10 * 60


def test_decision_economics_from_prometheus_match_the_hand_computation(prometheus: PrometheusClient) -> None:
    rows = {(r.model, r.tenant, r.source): r for r in decision_economics(prometheus, window="5m", at=AT)}
    assert sorted(rows) == [("m1", "a", "emulated"), ("m1", "b", "emulated"), ("m2", "a", "measured")]
    # worked out in policies/alerts/economics.rules_test.yml's comments
    expected = {
        ("m1", "a", "emulated"): (70, 21_000, 0.7 * 0.30225),
        ("m1", "b", "emulated"): (30, 9_000, 0.3 * 0.30225),
        ("m2", "a", "measured"): (20, 300_000, 3.0225),
    }
    expected[("m1", "a", "emulated")] = (120, 81_000, 0.7 * 0.30225 + 0.3045)
    for key, (decisions, joules, cost) in expected.items():
        row = rows[key]
        assert row.decisions == pytest.approx(decisions, rel=1e-9)
        assert row.joules_per_decision == pytest.approx(joules / decisions, rel=1e-9)
        assert row.cost_per_decision == pytest.approx(cost / decisions, rel=1e-9)
        assert row.currency == "EUR"


def test_any_window_reads_from_the_same_series(prometheus: PrometheusClient) -> None:
    """Over 2 minutes the rates are the same, so joules per decision are; the fixed cost per
    decision too (2 minutes of it over 2 minutes of decisions)."""
    short = {(r.model, r.tenant): r for r in decision_economics(prometheus, window="2m", at=AT)}
    assert short[("m1", "b")].decisions == pytest.approx(12, rel=1e-9)
    assert short[("m1", "b")].joules_per_decision == pytest.approx(300, rel=1e-9)
    assert short[("m2", "a")].cost_per_decision == pytest.approx(3.0225 / 20, rel=1e-9)


def test_a_training_job_reads_its_nodes_energy_between_start_and_end(
    prometheus: PrometheusClient, tmp_path: Path
) -> None:
    plan = _plan(tmp_path)
    found = job_economics(
        prometheus, plan, job="7", nodes=["base-gpu-001", "base-gpu-003"], start=T0 + 60, end=T0 + 360
    )
    # 300 s: 10 steps of 3,000 J and of 30,000 J
    assert found.joules == pytest.approx(330_000, rel=1e-9)
    assert found.sources == ("emulated", "measured")
    prices = Prices.from_plan(plan)
    assert prices is not None
    assert found.cost == pytest.approx(
        330_000 * float(prices.energy_cost_per_joule) + 2 * 0.003 * 300, rel=1e-9
    )
    with pytest.raises(TelemetryError):
        job_economics(prometheus, plan, job="7", nodes=['x"}) or vector(1'], start=T0, end=T0 + 1)


def test_the_status_table_shows_each_figure_with_its_source(prometheus: PrometheusClient) -> None:
    rows = [r.as_dict() for r in decision_economics(prometheus, window="5m", at=AT)]
    text = economics_table({"window": "5m", "per_decision": rows})
    assert "m2" in text and "measured" in text and "0.151125 EUR" in text and "15000" in text
    assert "no decisions" in economics_table({"window": "5m", "per_decision": []})


# ---- the price rules the monitoring role renders ------------------------------------------------------

RENDER = """
- name: Render the monitoring role's price rules as the role does
  hosts: {host}
  gather_facts: false
  vars_files:
    - {roles}/monitoring/defaults/main.yml
  tasks:
    - name: Price rules
      ansible.builtin.template:
        src: {roles}/monitoring/templates/economics-prices.rules.yml.j2
        dest: {out}
        mode: "0644"
"""


def test_the_role_renders_the_plans_prices_as_rules_promtool_accepts(tmp_path: Path) -> None:
    """Real ansible-playbook (connection local) renders the template from the real inventory."""
    from aifactory.inventory import build_inventory, write_inventory

    plan = _plan(tmp_path)
    inventory, out = tmp_path / "inventory", tmp_path / "prices.rules.yml"
    write_inventory(build_inventory(plan), inventory)
    playbook = tmp_path / "render.yml"
    playbook.write_text(RENDER.format(host=plan.hosts[0].name, roles=ROLES, out=out))
    env = ansible_env(tmp_path)
    ansible = str(Path(sys.executable).with_name("ansible-playbook"))
    argv = [ansible, "-i", str(inventory), "-c", "local", str(playbook)]
    argv += ["-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    promtool = shutil.which("promtool")
    assert promtool
    checked = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [r for g in yaml.safe_load(out.read_text())["groups"] for r in g["rules"]]
    costs = {r["labels"]["host"]: r["expr"] for r in rules if r["record"] == economics.HOST_COST_PER_SECOND}
    assert costs == {h.name: "0.003" if h.pool == "gpu" else "0.001" for h in plan.hosts}
    price = next(r for r in rules if r["record"] == economics.PRICE_PER_KWH)
    assert (price["expr"], price["labels"]) == ("0.21", {"currency": "EUR"})
    assert next(r["expr"] for r in rules if r["record"] == economics.PUE) == "1.4"


def test_a_site_without_prices_gets_no_economics_in_its_inventory(tmp_path: Path) -> None:
    from aifactory.inventory import build_inventory
    from aifactory.inventory.render import render_files

    files = render_files(build_inventory(_plan(tmp_path, BASE)))
    assert not any("aifactory_economics" in text for text in files.values())
