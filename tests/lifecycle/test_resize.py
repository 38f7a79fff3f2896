"""`aifactory resize`'s orchestration and its description of the change, with the stand-ins of
tests/lifecycle/fake_site.py (the real parts run on the lab: tests/pipeline/test_resize_lab.py) and
the lab's own plans, grown and shrunk by its cpu pool's count (planned from a copy of
inventory/lab/site.yaml, so the checkout is never written)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aifactory.errors import ResizeError, ResizeFailed
from aifactory.lifecycle.resize import (
    DOOR_BACKENDS,
    ETC_HOSTS,
    SCRAPE_TARGETS,
    SIGNED_PLAN_CHANGE,
    SLURM_NODES,
    ResizeParts,
    ResizeStore,
    describe_resize,
    run_resize,
)
from aifactory.lifecycle.seams import StepOutcome
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan
from aifactory.plan.serving import serving_digests
from aifactory.state import SiteState

from .fake_site import A, FakeDoor, FakeGate, FakeLog, FakeSite, FakeSlurm

LAB_SPEC = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"
CPU_COUNT = "  - name: cpu                       # the lab has no GPUs"


def _plans(folder: Path, counts: Sequence[int], extra: str = "") -> list[SitePlan]:
    """The lab's plan with the cpu pool at each count, from one spec folder (one allocation lock:
    a host keeps its addresses whatever the count)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(LAB_SPEC.with_name("site.alloc.json"), folder / "site.alloc.json")
    text = LAB_SPEC.read_text() + extra
    start = text.index(CPU_COUNT)
    at = text.index("count: 2", start)
    plans = []
    for count in counts:
        spec = folder / "site.yaml"
        spec.write_text(text[:at] + f"count: {count}" + text[at + len("count: 2") :])
        plans.append(plan_site(spec).plan)
    return plans


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[SitePlan, SitePlan]:
    two, three = _plans(tmp_path_factory.mktemp("resize"), (2, 3), "front_door: {}\n")
    return two, three


def _cpu(plan: SitePlan) -> list[str]:
    return [h.name for h in plan.hosts if h.pool == "cpu"]


def test_growing_the_cpu_pool_adds_one_host_and_lists_each_other_hosts_reconfiguration(
    grown: tuple[SitePlan, SitePlan],
) -> None:
    two, three = grown
    new = _cpu(three)[-1]
    resize = describe_resize(two, three)
    assert resize.added == (new,) and resize.removed == ()
    assert {h.name for h in two.hosts} == {h.name for h in three.hosts} - {new}
    controller = three.control_host
    assert controller is not None
    for host in [controller, *_cpu(two)]:
        assert f"{SLURM_NODES}: + {new}" in resize.reconfigured[host]
        assert f"{ETC_HOSTS}: + {new}" in resize.reconfigured[host]
    door = three.front_door
    assert door is not None and new in {b.name for b in door.backends}
    assert f"{DOOR_BACKENDS}: + {new}" in resize.reconfigured[door.host]
    assert f"{SCRAPE_TARGETS}: + {new}" in resize.reconfigured[controller]
    assert new not in resize.reconfigured  # the added host gets everything, not a reconfiguration
    # every host that stays gets the bundle that signs the new plan, and nothing else of it
    assert set(resize.reconfigured) == {h.name for h in two.hosts}
    assert all(lines.count(SIGNED_PLAN_CHANGE) == 1 for lines in resize.reconfigured.values())
    text = resize.render()
    assert f"+ {new}" in text and "1 added, 0 removed" in text


def test_a_resize_leaves_what_each_staying_server_serves_unchanged(grown: tuple[SitePlan, SitePlan]) -> None:
    """The runtime role restarts a server when its serving digest changes (aifactory.plan.serving):
    growing the pool changes the plan, not what any host that stays serves."""
    two, three = grown
    before, after = serving_digests(two), serving_digests(three)
    assert two.digest() != three.digest()
    assert set(before) < set(after)
    assert {host: after[host] for host in before} == before


def test_shrinking_back_removes_that_host_and_reconfigures_the_same_hosts(
    grown: tuple[SitePlan, SitePlan],
) -> None:
    two, three = grown
    gone = _cpu(three)[-1]
    back = describe_resize(three, two)
    assert back.added == () and back.removed == (gone,)
    assert set(back.reconfigured) == set(describe_resize(two, three).reconfigured)
    assert all(
        line.endswith(f"- {gone}") or line == SIGNED_PLAN_CHANGE
        for lines in back.reconfigured.values()
        for line in lines
    )


def test_the_same_plan_is_no_resize(grown: tuple[SitePlan, SitePlan]) -> None:
    two, _ = grown
    same = describe_resize(two, two)
    assert same.empty and same.reconfigured == {}
    assert "nothing to resize" in same.render()


def test_a_host_whose_address_changed_is_refused_not_resized(grown: tuple[SitePlan, SitePlan]) -> None:
    two, three = grown
    moved = json.loads(two.to_json())
    host = moved["hosts"][1]
    interface = host["interfaces"][0]
    interface["address"] = interface["address"].rsplit(".", 1)[0] + ".250"
    with pytest.raises(ResizeError) as caught:
        describe_resize(SitePlan.from_dict(moved), three)
    assert caught.value.code == "resize-not-only-counts"
    assert any(host["name"] in p.message and ".250" in p.message for p in caught.value.problems)


@dataclass
class FakeNewHosts:
    site: FakeSite
    missing: set[str] = field(default_factory=set)

    def ready(self, hosts: Sequence[str]) -> None:
        self.site.act("ready", hosts)
        if self.missing & set(hosts):
            raise ResizeError(f"no host {sorted(self.missing)}")
        for host in hosts:
            self.site.hosts.append(host)
            self.site.runs[host] = A.version  # provisioned with the site's bundle on the deploy
            self.site.slurm[host] = "drain"  # the slurm role's admission: drained until a gate passes
            self.site.door[host] = "drain"


@dataclass
class FakeDeploy:
    site: FakeSite
    fails: bool = False

    def deploy(self) -> StepOutcome:
        self.site.act("deploy", [])
        for host, state in self.site.slurm.items():
            if host not in self.site.hosts:
                continue
            if state != "drain" and host in self.removed:
                self.site.broken_rules.append(f"{host} left Slurm while it took jobs")
        self.site.done()
        return StepOutcome(("lab-cpu-003: deploy failed: unreachable",) if self.fails else ())

    removed: tuple[str, ...] = ()


@dataclass
class AdmittingGate(FakeGate):
    def check(self, hosts: Sequence[str]) -> StepOutcome:
        outcome = super().check(hosts)
        for host in hosts:
            if not any(line.startswith(f"{host}:") for line in outcome.failures):
                self.site.slurm[host] = "idle"  # admitted
        return outcome


def _parts(site: FakeSite, deploy: FakeDeploy, new_hosts: FakeNewHosts | None = None) -> ResizeParts:
    return ResizeParts(
        slurm=FakeSlurm(site),
        door=FakeDoor(site),
        hosts=new_hosts or FakeNewHosts(site),
        deployer=deploy,
        gate=AdmittingGate(site),
        log=FakeLog(site),
    )


@pytest.fixture
def store(tmp_path: Path) -> ResizeStore:
    return ResizeStore(SiteState.for_site("lab", home=tmp_path / "state"))


def test_a_grown_host_is_deployed_then_gated_admitted_and_put_behind_the_front_door(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    two, three = grown
    new = _cpu(three)[-1]
    site = FakeSite([h.name for h in two.hosts], serving=set(_cpu(two)))
    resize = describe_resize(two, three)
    result = run_resize(resize, two, store, _parts(site, FakeDeploy(site)), drain_timeout_s=60)
    assert site.actions == [f"ready {new}", "deploy ", f"gate {new}", f"door-enable {new}"]
    assert site.slurm[new] == "idle" and site.door[new] == "ready"
    assert [e.kind for e in site.events] == ["started", "finished"]
    started = site.events[0]
    assert started.change.kind == "resize" and started.change.to_digest == three.digest()
    assert started.detail["added"] == [new] and started.detail["reconfigured"] == {
        h: list(lines) for h, lines in resize.reconfigured.items()
    }
    assert site.events[1].detail == {"added": [new], "removed": [], "hosts": [new]}
    assert result.as_dict()["status"] == "done" and store.pending() is None and store.retired() == {}
    assert site.broken_rules == []


def test_a_removed_host_is_drained_before_the_deploy_takes_it_out_and_is_retired_with_its_data(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    two, three = grown
    gone = _cpu(three)[-1]
    site = FakeSite([h.name for h in three.hosts], serving=set(_cpu(three)), stuck_jobs=True)
    site.jobs[gone] = ["41", "42"]
    resize = describe_resize(three, two)
    run_resize(resize, three, store, _parts(site, FakeDeploy(site, removed=(gone,))), drain_timeout_s=5)
    assert site.actions == [f"slurm-drain {gone}", "slurm-requeue 41,42", f"door-drain {gone}", "deploy "]
    assert site.requeued == ["41", "42"]
    kinds = [e.kind for e in site.events]
    assert kinds == ["started", "jobs-requeued", "finished"]
    assert site.events[1].detail == {"hosts": [gone], "jobs": ["41", "42"], "drain_timeout_s": 5}
    assert set(store.retired()) == {gone}
    assert store.retired()[gone]["run"] == site.events[0].change.run
    assert site.broken_rules == []


def test_a_failed_gate_stops_the_resize_open_and_the_same_command_finishes_it(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    two, three = grown
    new = _cpu(three)[-1]
    site = FakeSite([h.name for h in two.hosts], serving=set(_cpu(two)))
    site.failing[A.version] = {new}
    resize = describe_resize(two, three)
    with pytest.raises(ResizeFailed) as caught:
        run_resize(resize, two, store, _parts(site, FakeDeploy(site)), drain_timeout_s=60)
    assert caught.value.exit_code == 4 and "health-gate" in caught.value.message
    assert [p.message for p in caught.value.problems] == [f"{new}: drain for allreduce-busbw"]
    assert site.slurm[new] == "drain" and site.door[new] == "drain"  # never took work
    assert [e.kind for e in site.events] == ["started", "step-failed"]
    pending = store.pending()
    assert pending is not None and store.started_from() == two  # a re-run compares with the old plan
    site.failing.clear()
    again = run_resize(resize, two, store, _parts(site, FakeDeploy(site)), drain_timeout_s=60)
    assert again.resumed and again.run == pending["run"]
    assert [e.kind for e in site.events] == ["started", "step-failed", "finished"]
    assert {e.change.run for e in site.events} == {pending["run"]}
    assert site.slurm[new] == "idle" and store.pending() is None


def test_a_failed_deploy_stops_before_any_gate(grown: tuple[SitePlan, SitePlan], store: ResizeStore) -> None:
    two, three = grown
    site = FakeSite([h.name for h in two.hosts], serving=set(_cpu(two)))
    with pytest.raises(ResizeFailed, match="deploy failed"):
        run_resize(
            describe_resize(two, three),
            two,
            store,
            _parts(site, FakeDeploy(site, fails=True)),
            drain_timeout_s=1,
        )
    assert not any(a.startswith("gate") for a in site.actions)
    assert site.events[-1].detail["step"] == "deploy"


def test_an_added_host_that_is_not_there_stops_before_the_deploy(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    two, three = grown
    new = _cpu(three)[-1]
    site = FakeSite([h.name for h in two.hosts], serving=set(_cpu(two)))
    parts = _parts(site, FakeDeploy(site), FakeNewHosts(site, missing={new}))
    with pytest.raises(ResizeError):
        run_resize(describe_resize(two, three), two, store, parts, drain_timeout_s=1)
    assert "deploy " not in site.actions


def test_a_resize_to_another_plan_while_one_is_in_progress_is_refused(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    two, three = grown
    store.begin(describe_resize(two, three), two)
    with pytest.raises(ResizeError) as caught:
        store.begin(describe_resize(three, two), three)
    assert caught.value.code == "resize-in-progress"
    assert oct((store.folder / "pending.json").stat().st_mode & 0o777) == "0o600"


def test_retiring_a_host_then_growing_it_back_makes_it_current_again(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    two, three = grown
    gone = _cpu(three)[-1]
    shrink = describe_resize(three, two)
    store.begin(shrink, three)
    store.finish(shrink, "run-1")
    assert set(store.retired()) == {gone}
    grow = describe_resize(two, three)
    store.begin(grow, two)
    store.finish(grow, "run-2")
    assert store.retired() == {}


def test_the_inventory_evidence_lists_a_retired_host_as_retired_not_unplanned(
    grown: tuple[SitePlan, SitePlan], store: ResizeStore
) -> None:
    from aifactory.audit.evidence.deploy import deploy_evidence

    two, three = grown
    gone = _cpu(three)[-1]
    record = {"bundle": {"version": "1", "digest": "d"}, "plan_digest": three.digest(), "config_files": {}}
    installed = store.state.path("deploy", "installed.json")
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text(json.dumps({"hosts": {h.name: record for h in three.hosts}}))
    before = deploy_evidence(store.state, two, three.digest())
    assert before.detail["unplanned"] == [gone]  # removed without a resize: a CM-8 finding
    shrink = describe_resize(three, two)
    store.begin(shrink, three)
    store.finish(shrink, "run-1")
    after = deploy_evidence(store.state, two, three.digest())
    assert after.detail["unplanned"] == [] and list(after.detail["retired"]) == [gone]
    assert after.detail["current"] == sorted(h.name for h in two.hosts)
    assert all(f.rule != "deploy.inventory_complete" for f in after.findings)
