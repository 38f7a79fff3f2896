"""The collection's action aifactory.factory.aifactory_service: one task per unit, through the
manager the host's variables name.

Real ansible-playbook runs (local connection) of the action. The supervisor here is a stand-in
shell script that records each call's arguments and keeps "running" as a file per unit, because
the lab's real supervisor needs a lab host's mount namespace; the real one runs every service of
the lab suite's deploys through this action (tests/deploy/test_deploy_lab.py and the rest). The
systemd branch is ansible-core's systemd_service, which this machine (no systemd as PID 1) cannot
run; real sites use it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from local_playbook import action_task, run_local_playbook

# The stand-in supervisor: arguments recorded one call per line (NUL-free, '|' after each), exit
# codes as the lab's supervisor's (docs/lab.md): status 0 running / 3 not running, 1 failure.
SUPERVISOR = """#!/bin/sh
printf '%s|' "$@" >> "{log}"; echo >> "{log}"
unit="{state}/$2"
case "$2" in broken*) echo "unit $2 not found" >&2; exit 1 ;; esac
case "$1" in
  status) [ -e "$unit" ] && exit 0; exit 3 ;;
  start)
    if [ -e "$unit" ]; then echo '{{"service": "x", "changed": false}}'; exit 0; fi
    touch "$unit"; echo '{{"service": "x", "changed": true}}' ;;
  restart) touch "$unit"; echo '{{"service": "x", "changed": true}}' ;;
  *) exit 2 ;;
esac
"""

HOSTILE_NAMES = ["bad\nname", "-h", "a b", "a;touch x", "../etc/x", "a/b", "", ".hidden", "@x", "$(id)"]


_task = partial(action_task, "aifactory.factory.aifactory_service")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("service-action")
    state = folder / "state"
    state.mkdir()
    log = folder / "calls.log"
    supervisor = folder / "supervisor"
    supervisor.write_text(SUPERVISOR.format(log=log, state=state))
    supervisor.chmod(0o755)
    supervised = {"aifactory_service_manager": "supervised", "aifactory_service_command": str(supervisor)}
    tasks = [
        _task("first_start", {"name": "svc-a"}),
        _task("second_start", {"name": "svc-a"}),
        _task("restart", {"name": "svc-a", "state": "restarted", "daemon_reload": True}),
        _task("timer", {"name": "aifactory-loop-m.timer"}),
        _task("broken", {"name": "broken-unit"}),
        *[_task(f"hostile_{i}", {"name": name}) for i, name in enumerate(HOSTILE_NAMES)],
        _task("no_command", {"name": "svc-b", "command": ""}),
    ]
    run = run_local_playbook(folder, "run", tasks, supervised)
    calls_after_run = log.read_text().splitlines()
    running_after_run = sorted(p.name for p in state.iterdir())
    checks = [
        _task("check_running", {"name": "svc-a"}),
        _task("check_stopped", {"name": "svc-new"}),
        _task("check_restart", {"name": "svc-a", "state": "restarted"}),
    ]
    check = run_local_playbook(folder, "check", checks, supervised, "--check")
    no_command = run_local_playbook(
        folder, "unset", [_task("unset", {"name": "svc-c"})], {"aifactory_service_manager": "supervised"}
    )
    bogus = run_local_playbook(
        folder, "bogus", [_task("bogus", {"name": "svc-c"})], {"aifactory_service_manager": "upstart"}
    )
    return {
        "supervisor": str(supervisor),
        "run": run,
        "check": check,
        "unset": no_command["unset"],
        "bogus": bogus["bogus"],
        "calls_after_run": calls_after_run,
        "calls": log.read_text().splitlines(),
        "running_after_run": running_after_run,
        "running": sorted(p.name for p in state.iterdir()),
    }


def test_start_starts_a_stopped_unit_and_leaves_a_running_one_alone(site: dict[str, Any]) -> None:
    run = site["run"]
    assert run["first_start"]["changed"] is True and not run["first_start"].get("failed")
    assert run["second_start"]["changed"] is False and not run["second_start"].get("failed")
    assert run["restart"]["changed"] is True
    assert run["timer"]["changed"] is True
    # The result names the unit and who runs it: the deploy records it as a service the host runs
    # (aifactory/deploy/converged.py), which the converged probe then checks.
    assert {k: run["first_start"][k] for k in ("service", "manager", "command")} == {
        "service": "svc-a",
        "manager": "supervised",
        "command": site["supervisor"],
    }
    # The manager and its command came from the host's variables; each call is an argument vector.
    assert site["calls_after_run"][:4] == [
        "start|svc-a|",
        "start|svc-a|",
        "restart|svc-a|",
        "start|aifactory-loop-m.timer|",
    ]


def test_a_failed_start_fails_the_task_with_the_supervisors_error(site: dict[str, Any]) -> None:
    broken = site["run"]["broken"]
    assert broken["failed"] is True
    assert "start broken-unit failed: unit broken-unit not found" in broken["msg"]


@pytest.mark.parametrize("index", range(len(HOSTILE_NAMES)))
def test_a_name_that_is_not_a_unit_name_is_refused_before_the_host_is_touched(
    site: dict[str, Any], index: int
) -> None:
    outcome = site["run"][f"hostile_{index}"]
    assert outcome["failed"] is True
    assert "is not a unit name" in outcome["msg"]
    # Only the five good and broken calls reached the supervisor: no hostile name, and nothing a
    # hostile name could have run (`touch x`, `id`) did.
    assert len(site["calls_after_run"]) == 5
    assert not any(HOSTILE_NAMES[index] in call for call in site["calls_after_run"] if HOSTILE_NAMES[index])


def test_supervised_without_a_command_is_refused(site: dict[str, Any]) -> None:
    for outcome in (site["run"]["no_command"], site["unset"]):
        assert outcome["failed"] is True
        assert "no supervisor command is set" in outcome["msg"]


def test_an_unknown_manager_is_refused(site: dict[str, Any]) -> None:
    assert site["bogus"]["failed"] is True
    assert "'upstart'" in site["bogus"]["msg"] and "systemd or supervised" in site["bogus"]["msg"]


def test_check_mode_asks_status_and_reports_what_a_run_would_change(site: dict[str, Any]) -> None:
    check = site["check"]
    assert check["check_running"]["changed"] is False
    assert (
        check["check_stopped"]["changed"] is True and "would start svc-new" in check["check_stopped"]["msg"]
    )
    assert check["check_restart"]["changed"] is True
    # Check mode only asked; it started and restarted nothing.
    assert site["calls"][len(site["calls_after_run"]) :] == [
        "status|svc-a|",
        "status|svc-new|",
        "status|svc-a|",
    ]
    assert site["running"] == site["running_after_run"] == ["aifactory-loop-m.timer", "svc-a"]
