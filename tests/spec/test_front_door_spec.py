"""The spec's front_door section: where HAProxy runs (the control host, or the first host of a named
pool) and its ports; the plan gets a front_door section with the front door's management address and
every serving host as a backend (docs/site-spec.md, docs/runtime.md "Front door"). A spec without it
plans byte for byte as before; an unknown pool or a port out of range is refused naming the field.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from base_spec import BASE

from aifactory.plan import plan_site


def _site(tmp_path: Path, front_door: object | None) -> Path:
    data = yaml.safe_load(BASE)
    if front_door is not None:
        data["front_door"] = front_door
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_spec_without_a_front_door_plans_as_before(tmp_path: Path) -> None:
    plan = plan_site(_site(tmp_path, None), write_lock=False).plan
    assert plan.front_door is None
    assert '"front_door"' not in plan.to_json()


def test_the_front_door_is_on_the_control_host_with_every_serving_host_behind_it(tmp_path: Path) -> None:
    plan = plan_site(_site(tmp_path, {}), write_lock=False).plan
    front_door = plan.front_door
    assert front_door is not None and plan.control_host is not None
    control = plan.host(plan.control_host)
    serving = {pool for model in plan.models for pool in model.serve_on}
    assert (front_door.host, front_door.address, front_door.port, front_door.backend_port) == (
        control.name,
        control.management_address,
        8443,
        8601,
    )
    assert [(b.name, b.address) for b in front_door.backends] == [
        (h.name, h.management_address) for h in plan.hosts if h.pool in serving
    ]
    assert front_door.backends  # the base spec serves a model


def test_a_named_pool_holds_the_front_door_and_the_plan_reads_back(tmp_path: Path) -> None:
    from aifactory.plan.model import SitePlan

    pool = yaml.safe_load(BASE)["node_pools"][-1]["name"]
    plan = plan_site(_site(tmp_path, {"pool": pool, "port": 9443}), write_lock=False).plan
    assert plan.front_door is not None and plan.front_door.port == 9443
    assert plan.host(plan.front_door.host).pool == pool
    assert SitePlan.from_dict(plan.to_dict()) == plan


def test_an_unknown_pool_or_a_bad_port_is_refused_naming_the_field(tmp_path: Path, cli) -> None:  # noqa: ANN001
    code, out, err = cli("validate", str(_site(tmp_path, {"pool": "nowhere"})))
    assert code == 1 and "front_door.pool" in out + err
    code, out, err = cli("validate", str(_site(tmp_path, {"port": 70000})))
    assert code == 1 and "front_door.port" in out + err
