"""Deploy reads the bundle's signed plan.json into a SitePlan and compares it with the given plan by
digest (no lab: the bundle folder is written here, as an import leaves it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aifactory.deploy.imported_bundle import DeployBundle
from aifactory.deploy.runner import checked_plan
from aifactory.errors import BundleError, DeployError
from aifactory.plan import plan_site
from aifactory.plan.addressing import lock_path_for

GPU_SITE = Path(__file__).parent / "fixtures" / "gpu-site.yaml"


def _bundle(root: Path, plan_text: str) -> DeployBundle:
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(plan_text)
    return DeployBundle("gputest", "1.0", "sha256:b", root, "bundle@gputest", root / "allowed_signers")


def _spec(tmp_path: Path) -> Path:
    spec = tmp_path / "site.yaml"
    shutil.copy(GPU_SITE, spec)
    if lock_path_for(GPU_SITE).exists():
        shutil.copy(lock_path_for(GPU_SITE), lock_path_for(spec))
    return spec


def test_the_bundle_plan_is_the_spec_plan(tmp_path: Path) -> None:
    planned_site = plan_site(_spec(tmp_path), write_lock=False)
    planned = planned_site.plan
    plan, digest = checked_plan(planned_site, _bundle(tmp_path / "b", planned.to_json()))
    assert plan == planned and digest == planned.digest()


def test_a_bundle_plan_of_another_spec_is_refused_with_the_difference(tmp_path: Path) -> None:
    planned_site = plan_site(_spec(tmp_path), write_lock=False)
    other = json.loads(planned_site.plan.to_json())
    other["hosts"][0]["interfaces"][0]["address"] = "10.99.0.9"
    with pytest.raises(DeployError) as refused:
        checked_plan(planned_site, _bundle(tmp_path / "b", json.dumps(other, indent=1) + "\n"))
    assert refused.value.code == "plan-differs"
    assert "10.99.0.9" in (refused.value.hint or "")


def test_a_bundle_plan_this_version_cannot_read_is_a_bundle_error(tmp_path: Path) -> None:
    data = json.loads(plan_site(_spec(tmp_path), write_lock=False).plan.to_json())
    del data["pools"][0]["platform"]["scap_profile"]
    bundle = _bundle(tmp_path / "b", json.dumps(data))
    with pytest.raises(BundleError, match="pools\\[0\\].platform: missing scap_profile"):
        bundle.plan()
