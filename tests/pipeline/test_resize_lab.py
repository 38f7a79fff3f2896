"""`aifactory resize` on a lab with a front door (issue 27's acceptance line for pools), real parts
throughout: the lab's namespaces and sshd, bundles built, signed and imported, `aifactory deploy`,
Slurm's scontrol, HAProxy's runtime API, the health gate. Not run by the helper that wrote it.

- growing the cpu pool from 2 to 3: the new host is deployed, passes its gate, is admitted in Slurm
  (idle, not drained) and is up at the front door;
- every other host that changed lists only the changes the resize listed for it (its changed tasks
  are those that write the listed files, and the handlers they notify): the new bundle version that
  signs the resized plan is carried and verified, but the runtime built from the same wheels is
  kept and its server not restarted (aifactory.plan.serving);
- shrinking back: the host is drained, out of Slurm's node list and the front door's backends,
  retired in the audit's inventory (CM-8), and a file on it and its share of the storage are kept.

The lab cannot yet add a namespace to a running lab (aifactory.lab.connection.LabHosts), so this
lab is brought up from the grown plan (three cpu hosts) and first deployed with two, as a real site
provisions a host before it is resized in. A bundle carries its signed plan, so each plan has its
own bundle version: that the hosts that stay change only what is listed is what this test proves
or refutes. The site's spec is one file, edited in place between the two counts, as an operator does.

Its own lab (site `rs<pid>`), as tests/pipeline/test_upgrade_lab.py has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lab_front_door import serve_behind_the_front_door, wait_every_server_up
from waiting import scaled

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.acceptance]

REPO = Path(__file__).resolve().parents[2]
RESIZE_TIMEOUT_S = 3600
# What each listed reconfiguration is, as the roles' task names (and the handlers they notify).
LISTED_TASKS = {
    # the bundle that signs the resized plan: carried and verified; plan.json rewritten
    "signed site plan": ("Bundle |", "Runtime | configure | the bundle's signed site plan"),
    # the daemons restart to read it (the role's handlers, through the aifactory_service action), and
    # the controller drains the added node until its health gate admits it
    "slurm.conf node list": (
        "Slurm | configure | slurm.conf",
        "Slurm | handler |",
        "Slurm | run | drain the nodes not yet admitted",
    ),
    "/etc/hosts (Slurm cluster block)": ("Slurm | configure | cluster hosts resolvable by name",),
    "front door backends": ("Front door |", "Front_door |"),
    "Prometheus scrape targets": ("Monitoring |",),
}
KEPT_FILE = "/var/lib/aifactory/resize-kept.txt"


def _load(relative: str, name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class ResizeLab:
    site: str
    specs: dict[int, Path]  # cpu count -> a spec with that count (what the operator edits in)
    work: Path
    plans: dict[int, Any]
    keys: Any = None  # the release key that signs every bundle
    bundles: dict[str, Path] = field(default_factory=dict)
    # host that stays -> the tasks that changed it in the grow's deploy beyond what the resize listed
    unlisted: dict[str, list[str]] = field(default_factory=dict)

    @property
    def spec(self) -> Path:
        """The site's one spec file, edited in place as an operator does (the loop timer's unit names
        it, so a spec at another path would be a change of its own on the control host)."""
        return self.work / "site" / "site.yaml"

    def spec_with(self, cpus: int) -> Path:
        self.spec.write_text(self.specs[cpus].read_text())
        return self.spec

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AIFACTORY_STATE_HOME": str(self.work / "state"),
            "AIFACTORY_BUNDLES_HOME": str(self.work / "bundles"),
            "PYTHONPATH": str(REPO),
        }

    def aifactory(self, *argv: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "aifactory.cli.main", *argv, "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=scaled(RESIZE_TIMEOUT_S),
            check=False,
        )
        return done.returncode, json.loads(done.stdout or "{}")

    def slurm_nodes(self) -> dict[str, Any]:
        from aifactory.health.slurm import parse_show_node
        from aifactory.lab import lab_exec

        done = lab_exec(self.site, ["scontrol", "--oneliner", "show", "node"], timeout=scaled(60))
        assert done.returncode == 0, done.stderr
        return dict(parse_show_node(done.stdout))


def _spec_with_cpus(folder: Path, base: Path, count: int) -> Path:
    text = base.read_text()
    start = text.index("  - name: cpu ")
    at = text.index("count: 2", start)
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "site.yaml"
    spec.write_text(text[:at] + f"count: {count}" + text[at + len("count: 2") :])
    return spec


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResizeLab]:
    shared = _load("tests/conftest.py", "aifactory_tests_conftest")
    reason = shared.lab_unavailable()
    if reason:
        pytest.skip(f"needs the local lab: {reason}")
    pytest.importorskip("torch")
    from aifactory import signing
    from aifactory.bundle import BuildOptions, build_bundle, import_bundle
    from aifactory.deploy import DeployOptions, deploy_site
    from aifactory.lab import lab_down, lab_up
    from aifactory.pipeline.connection import site_connection
    from aifactory.plan import plan_site
    from aifactory.state import SiteState

    site = f"rs{os.getpid()}"
    work = tmp_path_factory.mktemp("resize-lab")
    base = shared.copy_lab_spec(work / "base", site)
    base.write_text(base.read_text() + "front_door: {}\n")
    specs = {3: _spec_with_cpus(work / "three", base, 3), 2: _spec_with_cpus(work / "two", base, 2)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIFACTORY_STATE_HOME", str(work / "state"))
        patch.setenv("AIFACTORY_BUNDLES_HOME", str(work / "bundles"))
        plan_site(specs[3])  # allocates the third host's addresses first, and writes the lock
        (work / "site").mkdir()
        for folder in (specs[2].parent, work / "site"):
            shutil.copy(specs[3].with_name("site.alloc.json"), folder / "site.alloc.json")
        # The frozen plans a bundle carries (the lock covers both: the smaller spec uses a subset).
        grown = plan_site(specs[3], write_lock=False)
        small = plan_site(specs[2], write_lock=False)
        keys = signing.generate_keypair(
            work / "key", identity=f"release@{site}.example", namespaces="aifactory-bundle"
        )
        found = ResizeLab(site, specs, work, {2: small.plan, 3: grown.plan})
        for name, (planned, version) in {"two": (small, "1.0.0"), "three": (grown, "1.0.1"),
                                         "back": (small, "1.0.2")}.items():  # fmt: skip
            output = work / "built" / f"{version}.tar"
            output.parent.mkdir(exist_ok=True)
            build_bundle(
                planned,
                output=output,
                options=BuildOptions(key=keys.private, apt_packages=None, version=version),
            )
            found.bundles[name] = output
        found.keys = keys
        lab_up(grown)  # the third host is provisioned (its namespace runs), not yet in the site
        try:
            serve_behind_the_front_door(work / "state", site, specs[3], grown.plan)
            import_bundle(
                found.bundles["two"], trust=keys.allowed_signers, site_state=SiteState.for_site(site)
            )
            deployed = plan_site(found.spec_with(2), write_lock=False)
            assert deployed.plan.digest() == small.plan.digest()
            first = deploy_site(deployed, connection=site_connection(site), options=DeployOptions())
            assert first.exit_code == 0 and not first.failed_hosts, first.event_log
            code, out = found.aifactory("health", str(found.spec))
            assert code == 0, out
            wait_every_server_up(site, small.plan)
            yield found
        finally:
            lab_down(site)


def _changed_tasks(event_log: Path) -> dict[str, set[str]]:
    """host -> the names of the tasks (and handlers) that changed it in a deploy."""
    changed: dict[str, set[str]] = {}
    for line in event_log.read_text().splitlines():
        event = json.loads(line)
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            changed.setdefault(str(data.get("host")), set()).add(str(data.get("task")))
    return changed


def _import(lab: ResizeLab, name: str) -> None:
    code, out = lab.aifactory(
        "bundle",
        "import",
        str(lab.bundles[name]),
        "--trust",
        str(lab.keys.allowed_signers),
    )
    assert code == 0, out


def test_growing_the_cpu_pool_deploys_gates_and_admits_the_new_host_and_changes_only_what_it_lists(
    lab: ResizeLab,
) -> None:
    new = [h.name for h in lab.plans[3].hosts if h.pool == "cpu"][-1]
    code, shown = lab.aifactory("resize", str(lab.spec_with(3)), "--dry-run")
    assert code == 0 and shown["added"] == [new] and shown["removed"] == [], shown
    _import(lab, "three")
    code, result = lab.aifactory("resize", str(lab.spec), "--drain-timeout", "60")
    assert code == 0, result
    assert result["status"] == "done" and result["added"] == [new]
    assert not lab.slurm_nodes()[new].drained  # admitted by the gate
    changed = _changed_tasks(Path(result["deploy"]["event_log"]))
    for host, tasks in changed.items():
        if host == new:
            continue
        listed = result["reconfigured"].get(host, [])
        allowed = [
            p
            for line in listed
            for key, prefixes in LISTED_TASKS.items()
            if line.startswith(key)
            for p in prefixes
        ]
        lab.unlisted[host] = sorted(t for t in tasks if not any(t.startswith(p) for p in allowed))
    from aifactory.lab import lab_exec

    done = lab_exec(
        lab.site,
        ["sh", "-c", f"mkdir -p /var/lib/aifactory && echo kept > {KEPT_FILE}"],
        host=new,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr


def test_the_hosts_that_stay_change_only_what_the_resize_lists(lab: ResizeLab) -> None:
    assert lab.unlisted, "the grow test ran first and recorded each staying host's changes"
    beyond = {host: tasks for host, tasks in lab.unlisted.items() if tasks}
    assert beyond == {}, f"changed beyond the listed reconfiguration: {beyond}"


def test_shrinking_back_drains_and_retires_the_host_and_keeps_its_data(lab: ResizeLab) -> None:
    gone = [h.name for h in lab.plans[3].hosts if h.pool == "cpu"][-1]
    _import(lab, "back")
    code, result = lab.aifactory("resize", str(lab.spec_with(2)), "--drain-timeout", "60")
    assert code == 0, result
    assert result["removed"] == [gone] and result["retired_data_kept"]
    assert gone not in lab.slurm_nodes()
    from aifactory.lab import lab_exec

    kept = lab_exec(lab.site, ["cat", KEPT_FILE], host=gone, timeout=scaled(60))
    assert kept.returncode == 0 and kept.stdout.strip() == "kept"  # untouched, still powered
    state = lab.work / "state" / lab.site
    retired = json.loads((state / "resize" / "retired.json").read_text())
    assert list(retired["hosts"]) == [gone]
    log = [
        json.loads(line) for line in (state / "operator.log.jsonl").read_text().splitlines() if line.strip()
    ]
    resizes = [r for r in log if r.get("command") == "resize"]
    assert [r["result"] for r in resizes].count("finished") == 2
