"""The health section's drain budget (docs/site-spec.md, docs/health.md): pools it names must exist
and be named once, its numbers have bounds, and a spec whose health section has no drain budget keeps
the spec digest it had before the field existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from base_spec import BASE

from aifactory.plan import plan_site

LAB = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
# The lab's spec plus `health: {thresholds: [{pool: cpu, check: tcp-bandwidth, value: 0.5}]}`,
# digested by main at 02ceac4, before the drain budget existed.
LAB_WITH_THRESHOLDS_DIGEST = "sha256:f051f74d767fc40af9fdb5e2d43dcfc0507923fbed4c3b3dd04e0f4b781d4ac9"
THRESHOLDS = "health:\n  thresholds:\n    - pool: cpu\n      check: tcp-bandwidth\n      value: 0.5\n"


def _site(tmp_path: Path, budget: object) -> Path:
    data = yaml.safe_load(BASE)
    data["health"] = {"drain_budget": budget}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _lab_as_digested() -> str:
    """The lab's spec as it was at 02ceac4: without the loop entry and its held-out dataset, which came
    later (with `aifactory up`'s loop stage)."""
    data = yaml.safe_load(LAB.read_text())
    del data["loop"]
    data["datasets"] = [d for d in data["datasets"] if d["name"] != "vitals-holdout"]
    return yaml.safe_dump(data, sort_keys=False)


def test_a_health_section_without_a_budget_keeps_its_digest(tmp_path: Path) -> None:
    lab = _lab_as_digested()
    (tmp_path / "site.yaml").write_text(lab + THRESHOLDS)
    assert plan_site(tmp_path / "site.yaml", write_lock=False).plan.spec_digest == LAB_WITH_THRESHOLDS_DIGEST
    (tmp_path / "site.yaml").write_text(lab + THRESHOLDS + "  drain_budget: {percent: 10}\n")
    assert plan_site(tmp_path / "site.yaml", write_lock=False).plan.spec_digest != LAB_WITH_THRESHOLDS_DIGEST


def test_a_budget_validates(tmp_path: Path, cli) -> None:  # noqa: ANN001
    budget = {"hosts": 2, "percent": 10, "site_hosts": 4, "pools": [{"pool": "gpu", "hosts": 1}]}
    code, out, err = cli("validate", str(_site(tmp_path, budget)))
    assert code == 0, out + err


@pytest.mark.parametrize(
    ("budget", "paths", "says"),
    [
        ({"pools": [{"pool": "gpus", "hosts": 1}]}, ["health.drain_budget.pools[0].pool"], "gpus"),
        (
            {"pools": [{"pool": "gpu", "hosts": 1}, {"pool": "gpu", "hosts": 2}]},
            ["health.drain_budget.pools[1].pool"],
            "has two budgets (first at health.drain_budget.pools[0])",
        ),
        ({"percent": 101}, ["health.drain_budget.percent"], "100"),
        ({"hosts": -1}, ["health.drain_budget.hosts"], "0"),
        ({"site_hosts": "2"}, ["health.drain_budget.site_hosts"], "integer"),
    ],
    ids=["unknown-pool", "pool-twice", "percent-over-100", "negative-hosts", "string-number"],
)
def test_a_bad_budget_is_refused_naming_the_field(
    budget: object, paths: list[str], says: str, tmp_path: Path, cli
) -> None:  # noqa: ANN001
    code, out, _ = cli("validate", str(_site(tmp_path, budget)), "--format", "json")
    assert code == 1
    problems = json.loads(out)["error"]["problems"]
    assert [p["path"] for p in problems] == paths, problems
    assert says in problems[0]["message"] and problems[0]["line"]
