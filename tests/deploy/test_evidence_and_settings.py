"""Deploy evidence keeps what is known per host; the ansible.cfg a deploy writes keeps the lab's access."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest

from aifactory.deploy.evidence import installed_path, report_from_event, write_installed
from aifactory.deploy.progress import Progress
from aifactory.deploy.settings import (
    LINEAR_STRATEGY,
    MITOGEN_STRATEGY,
    STOCK_SSH_ARGS,
    DeploySettings,
    mitogen_strategy_dir,
    module_run_strategy,
    render_ansible_cfg,
)
from aifactory.state import SiteState


def report(host: str, *, packages: bool = True) -> dict:
    return {
        "host": host,
        "bundle": {"version": "2", "digest": "sha256:" + "b" * 64},
        "runtime": {
            "version": "2",
            "packages": [
                {"name": "torch", "version": "2.13.0+cpu"},
                {"name": "aifactory", "version": "0.1.0"},
            ],
        }
        if packages
        else {},
        "config_files": {"/etc/aifactory/runtime.yaml": "c" * 64},
    }


def ok_event(host: str, payload: dict) -> dict:
    return {
        "event": "runner_on_ok",
        "event_data": {"host": host, "res": {"ansible_facts": {"aifactory_deploy_report": payload}}},
    }


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SiteState:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path))
    return SiteState.for_site("evidence")


def test_unreachable_and_narrowed_runs_keep_the_last_known_install(state: SiteState) -> None:
    found = report_from_event(ok_event("h1", report("h1")))
    assert found is not None and found[0] == "h1"
    write_installed(
        state,
        run_id="r1",
        when="t1",
        plan_digest="sha256:p",
        reports={"h1": report("h1"), "h2": report("h2")},
        results={"h1": "changed", "h2": "changed"},
    )
    # run 2: h2 unreachable, h1 narrowed by --tags (no runtime in its report)
    write_installed(
        state,
        run_id="r2",
        when="t2",
        plan_digest="sha256:p",
        reports={"h1": report("h1", packages=False)},
        results={"h1": "ok", "h2": "unreachable"},
    )
    hosts = json.loads(installed_path(state).read_text())["hosts"]
    assert hosts["h1"]["run_id"] == "r2" and [p["name"] for p in hosts["h1"]["runtime"]["packages"]] == [
        "aifactory",
        "torch",
    ]
    assert hosts["h2"]["run_id"] == "r1" and hosts["h2"]["last_run"] == {
        "run_id": "r2",
        "at": "t2",
        "result": "unreachable",
    }
    assert oct(installed_path(state).stat().st_mode & 0o777) == "0o600"


def test_progress_takes_ansible_recap_as_the_authority() -> None:
    progress = Progress()
    progress.feed({"event": "playbook_on_task_start", "event_data": {"task": "Base | configure | x"}})
    progress.feed(
        {"event": "runner_on_ok", "event_data": {"host": "h1", "task": "x", "res": {"changed": True}}}
    )
    update = progress.feed(
        {
            "event": "runner_on_unreachable",
            "event_data": {"host": "h2", "task": "x", "res": {"msg": "Connection refused"}},
        }
    )
    assert update is not None and update.kind == "unreachable" and "refused" in update.message
    progress.feed(
        {
            "event": "playbook_on_stats",
            "event_data": {
                "ok": {"h1": 5},
                "changed": {"h1": 2},
                "dark": {"h2": 1},
                "failures": {},
                "skipped": {"h1": 1},
            },
        }
    )
    rows = {r.host: r for r in progress.rows()}
    assert (rows["h1"].ok, rows["h1"].changed, rows["h1"].status) == (5, 2, "changed")
    assert rows["h2"].status == "unreachable" and rows["h2"].message == "Connection refused"


def test_a_run_cut_off_before_its_recap_finishes_no_host() -> None:
    """A cancelled or killed run sends no recap: hosts whose tasks so far passed are not converged."""
    progress = Progress()
    progress.feed({"event": "playbook_on_task_start", "event_data": {"task": "Base | configure | x"}})
    for host in ("h1", "h2"):
        progress.feed(
            {"event": "runner_on_ok", "event_data": {"host": host, "task": "x", "res": {"changed": True}}}
        )
    assert {r.status for r in progress.rows()} == {"changed"}
    assert progress.finished_hosts() == []
    progress.feed(
        {
            "event": "playbook_on_stats",
            "event_data": {"ok": {"h1": 4, "h2": 2}, "changed": {"h1": 1}, "failures": {"h2": 1}},
        }
    )
    assert progress.finished_hosts() == ["h1"]


def test_a_run_cut_off_before_its_recap_reports_its_hosts_incomplete(state: SiteState) -> None:
    """Closing a run without a recap marks hosts that had not failed `incomplete`: they are named for a
    re-run and the deploy evidence does not record them deployed; a host that failed stays failed."""
    progress = Progress()
    progress.feed({"event": "runner_on_ok", "event_data": {"host": "h1", "task": "Base | x", "res": {}}})
    progress.feed(
        {"event": "runner_on_failed", "event_data": {"host": "h2", "task": "Base | x", "res": {"msg": "no"}}}
    )
    progress.close()
    rows = {r.host: r for r in progress.rows()}
    assert (rows["h1"].status, rows["h2"].status) == ("incomplete", "failed")
    assert "Base | x" in rows["h1"].message
    results = {r.host: r.status for r in progress.rows()}
    installed = write_installed(
        state,
        run_id="r1",
        when="2026-01-01T00:00:00Z",
        plan_digest="d",
        reports={"h1": {"bundle": {}}},
        results=results,
    )
    hosts = json.loads(installed.read_text())["hosts"]
    assert hosts["h1"]["last_run"]["result"] == "incomplete" and "deployed_at" not in hosts["h1"]


def test_closing_a_run_that_sent_its_recap_changes_nothing() -> None:
    progress = Progress()
    progress.feed(
        {"event": "runner_on_ok", "event_data": {"host": "h1", "task": "x", "res": {"changed": True}}}
    )
    progress.feed({"event": "playbook_on_stats", "event_data": {"ok": {"h1": 1}, "changed": {"h1": 1}}})
    progress.close()
    assert [r.status for r in progress.rows()] == ["changed"] and progress.finished_hosts() == ["h1"]


def test_settings_lay_over_the_lab_config_and_keep_its_ssh_config(tmp_path: Path) -> None:
    lab_cfg = {
        "defaults": {"forks": "20", "remote_tmp": "/run/x"},
        "ssh_connection": {
            "pipelining": "True",
            "ssh_common_args": "-F /lab/ssh_config",
            "control_path_dir": "/run/aifactory-lab/ssh",
            "control_path": "/run/aifactory-lab/ssh/%%C",
        },
    }
    for settings in (DeploySettings(), DeploySettings.stock()):
        config = configparser.ConfigParser(interpolation=None)
        config.read_string(render_ansible_cfg(settings, folder=tmp_path, base=lab_cfg))
        assert config["defaults"]["remote_tmp"] == "/run/x"
        assert config["ssh_connection"]["ssh_common_args"] == "-F /lab/ssh_config"
        assert config["ssh_connection"]["control_path"] == "/run/aifactory-lab/ssh/%%C"
        assert config["defaults"]["forks"] == str(settings.forks)
        assert config["ssh_connection"]["pipelining"] == str(settings.pipelining)
    stock = configparser.ConfigParser(interpolation=None)
    stock.read_string(render_ansible_cfg(DeploySettings.stock(), folder=tmp_path, base=lab_cfg))
    assert stock["ssh_connection"]["ssh_args"] == STOCK_SSH_ARGS
    assert "fact_caching" not in stock["defaults"] and "internal_poll_interval" not in stock["defaults"]


def test_a_playbook_that_cannot_start_says_why(tmp_path: Path) -> None:
    """ansible-runner hands what a launcher that cannot run printed as a `verbose` event (real
    ansible-runner, a launcher failing as nsenter does on a noexec mount); the deploy's error names it,
    each line capped, instead of only the exit code."""
    import ansible_runner

    from aifactory.deploy.runner import STARTUP_LINE_CHARS, _did_not_run

    launcher = tmp_path / "ansible-playbook"
    launcher.write_text(
        "#!/bin/sh\necho 'nsenter: failed to execute ansible-playbook: Permission denied' >&2\nexit 126\n"
    )
    launcher.chmod(0o755)
    events: list[dict] = []
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path),
        binary=str(launcher),
        playbook="site.yml",
        quiet=True,
        event_handler=lambda e: events.append(e) is None,
        settings={"suppress_ansible_output": True, "suppress_output_file": True},
    )
    said = [e["stdout"] for e in events if e.get("event") == "verbose" and e.get("stdout")]
    assert runner.rc == 126 and said == ["nsenter: failed to execute ansible-playbook: Permission denied"]
    error = _did_not_run(str(runner.status), runner.rc, tmp_path / "events.jsonl", [*said, "x" * 1000])
    assert error.message.startswith("ansible-playbook stopped before any host ran (status failed, rc 126): ")
    denied = "failed to execute ansible-playbook: Permission denied; "
    assert denied + "x" * STARTUP_LINE_CHARS in error.message
    assert "x" * (STARTUP_LINE_CHARS + 1) not in error.message
    assert _did_not_run("failed", 2, tmp_path / "e").message.endswith("(status failed, rc 2)")


def test_mitogen_strategy_where_installed_else_ansible_linear(tmp_path: Path) -> None:
    """The tuned settings run Mitogen's strategy from the folder found for it; without that folder,
    or with the stock settings, Ansible's own linear strategy (no plugin path left behind)."""
    plugins = mitogen_strategy_dir()
    assert plugins is not None, "mitogen is in the [control] extra that scripts/setup.sh installs"
    assert (plugins / f"{MITOGEN_STRATEGY}.py").is_file()

    def rendered(settings: DeploySettings, mitogen: Path | None) -> configparser.SectionProxy:
        config = configparser.ConfigParser(interpolation=None)
        base = {"defaults": {"strategy": "free", "strategy_plugins": "/elsewhere"}}
        config.read_string(render_ansible_cfg(settings, folder=tmp_path, base=base, mitogen=mitogen))
        return config["defaults"]

    tuned = rendered(DeploySettings(), plugins)
    assert (tuned["strategy"], tuned["strategy_plugins"]) == (MITOGEN_STRATEGY, str(plugins))
    for settings, mitogen in ((DeploySettings(), None), (DeploySettings.stock(), plugins)):
        defaults = rendered(settings, mitogen)
        assert defaults["strategy"] == "linear" and "strategy_plugins" not in defaults


def test_the_converged_probe_runs_ansible_linear_strategy_unless_told_and_mitogen_runs(
    tmp_path: Path,
) -> None:
    """The probe's one task per host runs under Ansible's linear strategy whatever the deploy's; under
    Mitogen's only when the settings ask and the run's ansible.cfg already names Mitogen's plugins. The
    module run hands ansible the strategy in its environment: real ansible-runner, with a launcher in
    place of `ansible` that records it."""
    from aifactory.deploy.runner import _Ansible

    assert module_run_strategy(DeploySettings(), MITOGEN_STRATEGY) == LINEAR_STRATEGY
    asked = DeploySettings(probe_strategy=MITOGEN_STRATEGY)
    assert module_run_strategy(asked, MITOGEN_STRATEGY) == MITOGEN_STRATEGY
    assert module_run_strategy(asked, LINEAR_STRATEGY) == LINEAR_STRATEGY  # no Mitogen plugins named

    seen = tmp_path / "strategy-seen"
    record = f'printf %s "$ANSIBLE_STRATEGY" > {seen}'
    for strategy in (LINEAR_STRATEGY, MITOGEN_STRATEGY):
        ansible = _Ansible(
            folder=tmp_path,
            inventory=tmp_path,
            env={"ANSIBLE_STRATEGY": "free"},  # the strategy of the module run wins over the environment's
            prefix=("/bin/sh", "-c", record, "sh"),
            playbooks=tmp_path,
            strategy=MITOGEN_STRATEGY,
            module_strategy=strategy,
        )
        ansible.run(handle=lambda _event: False, limit=None, cmdline=[], module="ansible.builtin.ping")
        assert seen.read_text() == strategy


def test_the_summary_says_when_ansible_linear_strategy_ran_instead_of_mitogen(tmp_path: Path) -> None:
    """A control host without Mitogen deploys all the same, and the summary says why it was slower;
    the JSON output names the strategy either way."""
    from aifactory.cli.deploy import render_summary
    from aifactory.deploy.runner import DeployResult

    def result(strategy: str) -> DeployResult:
        return DeployResult(
            site="lab",
            run_id="r1",
            check=False,
            bundle_version="1.0",
            bundle_digest="sha256:" + "a" * 64,
            plan_digest="sha256:" + "b" * 64,
            hosts=[],
            status="successful",
            rc=0,
            wall_seconds=1.0,
            controller_cpu_seconds=0.5,
            event_log=tmp_path / "events.jsonl",
            inventory=tmp_path / "inventory",
            installed=None,
            connection="ssh",
            strategy=strategy,
        )

    assert "Mitogen is not installed" in render_summary(result("linear"))
    assert "Mitogen" not in render_summary(result(MITOGEN_STRATEGY))
    assert result(MITOGEN_STRATEGY).as_dict()["strategy"] == MITOGEN_STRATEGY
