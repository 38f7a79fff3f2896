"""Every role, on the session's deployed lab, in one check run with diffs, from a plan holding hostile
strings.

The plan is the lab's own with hostile text where a spec's strings land: each host's GPU model (no
GPUs, so the gpu role renders its templates in check mode, render_check.yml) and mounts, the
storage endpoint and mount path, the site's description and an egress rule. Validation refuses all
of it; to test what lies behind validation, the deploy is handed this plan in place of the bundle's
checked one (the one stand-in: the inventory, Ansible, the roles, SSH and the hosts are real).

One run covers three hosts: the first cpu host keeps benign values (a plain GPU model, its own
mount), the other cpu host gets printable hostile text (Jinja, shell, exports options), the control
host text with control characters (newline, ESC, NUL). Then:
- nothing a lookup or a shell would create exists, on this machine or on any lab host;
- each hostile host either renders the GPU files with its model as one JSON string (the printable
  one literally) and runs on, or is refused by a role's preflight whose message names the value;
- no file a role would write on a hostile host has more lines than on the benign host;
- provision/render.py, from the same plan, refuses the exports it cannot write, naming the value.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from aifactory.deploy import DeployOptions, DeployResult
from aifactory.deploy import runner as deploy_runner
from aifactory.deploy.imported_bundle import DeployBundle
from aifactory.errors import UnsafeValueError
from aifactory.plan import PlannedSite
from aifactory.plan.model import SitePlan
from aifactory.provision.render import render_storage

pytestmark = [pytest.mark.lab, pytest.mark.slow]

BENIGN_MODEL = "H100-SXM5-80GB"
GPU_FILES = ("/etc/modprobe.d/aifactory-nvidia.conf", "/etc/default/aifactory-dcgm")
FAILED_EVENTS = ("runner_on_failed", "runner_item_on_failed")


def printable_hostile(canary: str) -> str:
    return (
        f"{{{{ lookup('pipe', 'touch {canary}') }}}}{{% set x = lookup('pipe', 'touch {canary}') %}}{{# c #}}"
        f" $(touch {canary}) `touch {canary}`; touch {canary} *(rw,no_root_squash,insecure) /a/../b//c"
    )


def control_hostile(canary: str) -> str:
    lookup = f"{{{{ lookup('pipe', 'touch {canary}') }}}}"
    return f"H100\ninstall nvidia /bin/sh -c 'touch {canary}'\x1b[2J\x00{lookup}"


def hostile_plan(plan: dict[str, Any], values: dict[str, str], everywhere: str) -> dict[str, Any]:
    """The plan with `values[host]` in that host's GPU model and mounts (the other hosts get a benign
    model and keep their mounts) and `everywhere` in the site-wide strings."""
    plan = copy.deepcopy(plan)
    plan["site"]["description"] = everywhere
    for store in plan["storage"]:
        store["endpoint"] = "10.200.0.2:" + everywhere
        store["mount_path"] = "/srv/share" + everywhere
    plan["egress"]["allow"] = [
        {"name": "mirror", "endpoint": everywhere, "country": plan["site"]["jurisdiction"]}
    ]
    for host in plan["hosts"]:
        value = values.get(host["name"])
        host["gpus"] = {"model": BENIGN_MODEL if value is None else value, "count": 0}
        for mount in host["mounts"] if value is not None else []:
            mount["path"] = "/srv/share" + value
            mount["source"] = "10.200.0.2:" + value
    return plan


def check_run(deployed_lab: Any, plan: SitePlan, monkeypatch: pytest.MonkeyPatch) -> DeployResult:
    """`deploy --check --diff --full` of the session bundle, with `plan` standing in for its plan."""
    checked = deploy_runner.checked_plan

    def with_hostile_strings(planned: PlannedSite, bundle: DeployBundle) -> tuple[SitePlan, str]:
        _, digest = checked(planned, bundle)  # the real check of the lab's own plan against the bundle
        return plan, digest

    monkeypatch.setattr(deploy_runner, "checked_plan", with_hostile_strings)
    try:
        result: DeployResult = deployed_lab.deploy(DeployOptions(check=True, full=True))
        return result
    finally:
        monkeypatch.undo()


def events(result: DeployResult, host: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in result.event_log.read_text().splitlines()]
    return [e for e in found if e["event_data"].get("host") == host]


def _results(res: dict[str, Any]) -> list[dict[str, Any]]:
    """A task's result and, for a loop, each item's."""
    return [res, *(r for r in res.get("results") or [] if isinstance(r, dict))]


def _target(res: dict[str, Any], diff: dict[str, Any]) -> str:
    """The file a diff is about: the loop item's destination, or the diff's own header for a file
    that exists (a template's `after_header` is a temporary file on the controller)."""
    item = res.get("item")
    if isinstance(item, dict) and item.get("dest"):
        return str(item["dest"])
    return str(diff.get("before_header") or res.get("dest") or res.get("path") or item or "")


def written_files(host_events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(task, file) -> what the task would write, from each diff's `after`."""
    found: dict[tuple[str, str], str] = {}
    for event in host_events:
        data = event["event_data"]
        for res in _results(data.get("res") or {}):
            diffs = res.get("diff") or []
            for diff in diffs if isinstance(diffs, list) else [diffs]:
                after = diff.get("after")
                if isinstance(after, str):
                    found[(str(data.get("task")), _target(res, diff))] = after
    return found


def refusals(host_events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(task, message) of every failure on the host."""
    found = []
    for event in host_events:
        if event["event"] in FAILED_EVENTS:
            data = event["event_data"]
            found += [(str(data.get("task")), str(r.get("msg", ""))) for r in _results(data.get("res") or {})]
    return found


def test_a_hostile_plan_runs_every_role_as_data(deployed_lab, monkeypatch) -> None:  # noqa: ANN001
    lab = deployed_lab.lab
    canary = f"/tmp/aifactory-canary-{os.getpid()}"
    cpu_hosts = [h.name for h in lab.plan.hosts if h.role == "cpu"]
    benign, printable = cpu_hosts[0], cpu_hosts[1]
    values = {printable: printable_hostile(canary), lab.control_host: control_hostile(canary)}
    plan = hostile_plan(lab.plan.to_dict(), values, printable_hostile(canary))

    result = check_run(deployed_lab, SitePlan.from_dict(plan), monkeypatch)

    assert not Path(canary).exists(), "a lookup or a shell ran on this machine"
    for host in lab.hosts:
        assert lab.sh(f"test ! -e {canary}", host=host, check=False).returncode == 0, (
            f"something ran on {host}"
        )

    rows = {h["host"]: h for h in result.hosts}
    assert rows[benign]["status"] in ("ok", "changed"), rows[benign]
    reference = written_files(events(result, benign))
    for path in GPU_FILES:
        assert any(file == path for _, file in reference), (
            f"no diff of {path} on {benign}: {sorted(reference)}"
        )

    for host, value in values.items():
        host_events = events(result, host)
        rendered = written_files(host_events)
        modprobe = [text for (_, file), text in rendered.items() if file == GPU_FILES[0]]
        refused = refusals(host_events)
        # The GPU model is written as one JSON string (control characters escaped), or refused by name.
        if modprobe:
            assert json.dumps(value) in modprobe[0], modprobe[0]
            assert value not in modprobe[0] or value.isprintable()
            assert value in modprobe[0] or not value.isprintable()
        else:
            assert any("preflight" in task and json.dumps(value)[1:-1] in msg for task, msg in refused), (
                refused
            )
        # A failure is a preflight's refusal naming the value (here: the mount path), nothing else.
        if rows[host]["status"] not in ("ok", "changed"):
            assert refused, rows[host]
            assert all("preflight" in task.lower() for task, _ in refused), refused
            assert any(json.dumps(value)[1:-1] in msg for _, msg in refused), refused
        # No file gains a line from a hostile string: every file of the other cpu host (the benign
        # host's twin), the GPU files of the control host (its other files are a control host's own).
        for (task, file), text in rendered.items():
            if host == printable or file in GPU_FILES:
                assert (task, file) in reference, f"{host}: {task} writes {file} only from the hostile plan"
                assert len(text.splitlines()) <= len(reference[(task, file)].splitlines()), (host, file, text)

    # Provisioning's storage artifacts from the same plan: exports cannot hold the endpoint.
    typed = SitePlan.from_dict(plan)
    share = next(s for s in typed.storage if s.kind == "nfs")
    with pytest.raises(UnsafeValueError) as refused_exports:
        render_storage(typed, share)
    assert "\n" not in refused_exports.value.message
