"""What a full run managed (read from its events), the inputs fingerprint, and when a host counts as
converged. The lab tests (test_deploy_lab.py) run the same code against real hosts."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifactory.bundle.collection import source_collections_path
from aifactory.deploy.converged import (
    PROMOTE_HOST_KEY,
    HostRecord,
    ManagedCapture,
    difference,
    inputs_fingerprint,
    read_records,
    write_records,
)
from aifactory.resources import resource_dir
from aifactory.state import SiteState

SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"


def ok(host: str, action: str, res: dict, **data: object) -> dict:
    return {
        "event": "runner_on_ok",
        "event_data": {"host": host, "resolved_action": f"ansible.builtin.{action}", "res": res, **data},
    }


def invoked(args: dict, **res: object) -> dict:
    return {"invocation": {"module_args": args}, **res}


def test_capture_takes_paths_services_and_packages_from_results() -> None:
    capture = ManagedCapture()
    events = [
        ok("h1", "template", {"dest": "/etc/aifactory/runtime.yaml", "changed": True}),
        ok("h1", "file", {"path": "/opt/aifactory/current/", "state": "link"}),
        ok(
            "h1",
            "copy",
            {
                "results": [
                    {"dest": "/var/lib/a"},
                    {"skipped": True, "dest": "/var/lib/skipped"},
                    {"dest": "/var/lib/b"},
                ]
            },
        ),
        ok("h1", "stat", invoked({"path": "/opt/aifactory/current"}, stat={"exists": True})),
        ok(
            "h1",
            "aifactory.factory.aifactory_files",
            {"paths": ["/etc/chrony/conf.d", "/etc/chrony/conf.d/a.conf"]},
        ),
        ok(
            "h1",
            "aifactory.factory.aifactory_service",
            {"service": "slurmd", "manager": "supervised", "command": SUPERVISOR},
        ),
        ok(
            "h1",
            "aifactory.factory.aifactory_service",
            {
                "results": [
                    {"service": "a.timer", "manager": "supervised", "command": SUPERVISOR},
                    {"skipped": True, "service": "b.timer"},
                ]
            },
        ),
        # a role's packages, checked where preinstalled or installed with apt: the action names them
        ok(
            "h1",
            "aifactory.factory.aifactory_packages",
            {"packages": ["aide", "aide-common"], "preinstalled": True, "changed": False},
        ),
        # a command that looks like the supervisor's is not a service: only the action says so
        ok("h1", "command", invoked({"argv": [SUPERVISOR, "start", "nothing"]}, rc=0)),
        ok("h2", "aifactory.factory.aifactory_service", {"service": "munge", "manager": "systemd"}),
        ok("h2", "systemd_service", invoked({"name": "aifactory-serve", "state": "restarted"})),
        ok("h2", "systemd_service", invoked({"name": "stopped-one", "state": "stopped"})),
        ok("h2", "apt", invoked({"name": ["slurmd", "munge"], "state": "present"})),
        ok("h2", "apt", invoked({"name": "chrony"})),
        # done on the control host for h2 (a delegated stat): not h2's state
        ok(
            "h2",
            "stat",
            invoked(
                {"path": "/root/state/runtime/revoked-tokens.json"},
                _ansible_delegated_vars={"ansible_host": "localhost"},
            ),
        ),
        {
            "event": "runner_on_failed",
            "event_data": {
                "host": "h2",
                "resolved_action": "ansible.builtin.copy",
                "res": {"dest": "/etc/failed"},
            },
        },
    ]
    for event in events:
        capture.feed(event)

    specs = capture.specs(["h1", "h2", "h3"])

    assert specs["h1"] == {
        "paths": [
            "/etc/aifactory/runtime.yaml",
            "/etc/chrony/conf.d",
            "/etc/chrony/conf.d/a.conf",
            "/opt/aifactory/current",
            "/var/lib/a",
            "/var/lib/b",
        ],
        "services": ["a.timer", "slurmd"],
        "service_command": SUPERVISOR,
        "packages": ["aide", "aide-common"],
    }
    assert specs["h2"] == {
        "paths": [],
        "services": ["aifactory-serve", "munge"],
        "service_command": "",
        "packages": ["chrony", "munge", "slurmd"],
    }
    assert "h3" not in specs  # nothing managed: no record, a full run next time


def test_specs_of_the_same_inputs_accumulate() -> None:
    capture = ManagedCapture()
    capture.feed(ok("h1", "template", {"dest": "/etc/b"}))
    earlier = {
        "h1": {
            "paths": ["/opt/aifactory/current"],
            "services": ["aifactory-serve"],
            "service_command": SUPERVISOR,
            "packages": [],
        }
    }

    spec = capture.specs(["h1"], earlier)["h1"]

    assert spec["paths"] == ["/etc/b", "/opt/aifactory/current"]
    assert spec["services"] == ["aifactory-serve"] and spec["service_command"] == SUPERVISOR


STATE = {
    "paths": {
        "/etc/a": {"type": "file", "sha256": "1" * 64, "mode": "0644", "uid": 0, "gid": 0},
        "/opt/aifactory/current": {"type": "link", "target": "/opt/aifactory/1"},
    },
    "services": {"aifactory-serve": "running"},
    "packages": {"munge": "0.5.15"},
}


def record(**changes: object) -> HostRecord:
    return HostRecord(**{"fingerprint": "sha256:f", "run_id": "r1", "spec": {}, "state": STATE, **changes})


def test_a_host_is_converged_only_when_inputs_and_state_match() -> None:
    same = json.loads(json.dumps(STATE))
    assert difference(record(), "sha256:f", same) is None
    assert "changed" in difference(record(), "sha256:other", same)
    assert "could not be read" in difference(record(), "sha256:f", None)

    edited = json.loads(json.dumps(STATE))
    edited["paths"]["/etc/a"]["sha256"] = "2" * 64
    assert "/etc/a" in difference(record(), "sha256:f", edited)

    switched = json.loads(json.dumps(STATE))
    switched["paths"]["/opt/aifactory/current"]["target"] = "/opt/aifactory/0"
    assert "/opt/aifactory/current" in difference(record(), "sha256:f", switched)

    stopped = json.loads(json.dumps(STATE))
    stopped["services"]["aifactory-serve"] = "not running"
    assert "not running: aifactory-serve" == difference(record(), "sha256:f", stopped)

    downgraded = json.loads(json.dumps(STATE))
    downgraded["packages"]["munge"] = "0.5.14"
    assert "munge" in difference(record(), "sha256:f", downgraded)


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the playbooks, an inventory naming control-host files, and the trust folder."""
    playbooks = tmp_path / "playbooks"
    shutil.copytree(resource_dir("playbooks"), playbooks)
    trust = tmp_path / "runtime"
    (trust / "token-key").mkdir(parents=True)
    for name in ("token-key/allowed_signers", "revoked-tokens.json", "revoked-tokens.json.sig"):
        (trust / name).write_text(name)
    signers = tmp_path / "allowed_signers"
    signers.write_text("bundle@site ssh-ed25519 AAAA\n")
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "group_vars" / "all.yml").write_text(
        yaml.safe_dump(
            {
                "aifactory_bundle": {"allowed_signers": str(signers), "digest": "sha256:1"},
                "aifactory_runtime_trust_dir": str(trust),
            }
        )
    )
    return playbooks, inventory, trust


def test_fingerprint_follows_every_input(inputs: tuple[Path, Path, Path]) -> None:
    playbooks, inventory, trust = inputs

    def fingerprint(extra: dict | None = None) -> str:
        return inputs_fingerprint(playbooks=playbooks, inventory_dir=inventory, extra_vars=extra or {})

    first = fingerprint()
    assert fingerprint() == first  # deterministic
    seen = {first}
    changes = [
        lambda: (playbooks / "roles" / "base" / "defaults" / "main.yml").open("a").write("# edit\n"),
        lambda: (inventory / "group_vars" / "all.yml").open("a").write("extra: 1\n"),
        lambda: (trust / "revoked-tokens.json").write_text("revoked one more"),
        lambda: (inventory.parent / "allowed_signers").write_text("another key\n"),
        lambda: (trust / "site-ca").mkdir() or (trust / "site-ca" / "ca.pem").write_text("a CA"),
        lambda: (trust / "server-certs").mkdir() or (trust / "server-certs" / "h1.pem").write_text("cert"),
        lambda: (trust / "server-certs" / "h1.key").write_text("key"),
    ]
    for change in changes:
        change()
        now = fingerprint()
        assert now not in seen
        seen.add(now)
    assert fingerprint({"runtime_serve_port": 9000}) not in seen
    (trust / "revoked-tokens.json.sig").unlink()
    assert fingerprint() not in seen


def test_a_one_time_action_is_not_an_input(inputs: tuple[Path, Path, Path]) -> None:
    """A rotation's rollout promotes each host's staged SSH host key with PROMOTE_HOST_KEY; the run
    leaves the host as a plain run would, so the next plain deploy finds it converged. Any other
    extra variable is configuration, and an input."""
    playbooks, inventory, _ = inputs

    def fingerprint(extra: dict[str, object]) -> str:
        return inputs_fingerprint(playbooks=playbooks, inventory_dir=inventory, extra_vars=extra)

    plain = fingerprint({})
    assert fingerprint({PROMOTE_HOST_KEY: True}) == plain
    assert fingerprint({PROMOTE_HOST_KEY: True, "runtime_serve_port": 9000}) == fingerprint(
        {"runtime_serve_port": 9000}
    )
    assert fingerprint({"runtime_serve_port": 9000}) != plain


def test_records_round_trip_with_tight_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path))
    state = SiteState.for_site("unit")
    assert read_records(state) == {}
    path = write_records(state, {"h1": record()})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_records(state) == {"h1": record()}
    path.write_text("{not json")
    assert read_records(state) == {}  # unreadable: every host gets a full run


LAB_SUPERVISOR_SOURCE = Path(__file__).resolve().parents[2] / "aifactory/lab/files/aifactory-service"


def run_host_state(tmp_path: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The module itself, run by Ansible on this machine (connection local); its JSON result."""
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible")),
            "localhost",
            "-c",
            "local",
            "-m",
            "aifactory.factory.aifactory_host_state",
            "-a",
            json.dumps(args),
            "-o",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "HOME": str(tmp_path),
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            "ANSIBLE_COLLECTIONS_PATH": str(
                source_collections_path(resource_dir("playbooks"), tmp_path / "collections")
            ),
        },
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict[str, Any] = json.loads(run.stdout.split("=>", 1)[1])
    return result


def test_host_state_module_reads_without_changing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    target = site / "managed.conf"
    target.write_text("setting = 1\n")
    target.chmod(0o640)
    (site / "current").symlink_to(site / "v1")
    # No systemd on this machine: the lab's supervisor answers `is-active` as systemctl does, and
    # has no unit of these names here.
    supervisor = tmp_path / "aifactory-service"
    shutil.copyfile(LAB_SUPERVISOR_SOURCE, supervisor)
    supervisor.chmod(0o755)
    before = sorted((p.name, p.lstat().st_mtime_ns) for p in site.iterdir())
    result = run_host_state(
        tmp_path,
        {
            "paths": [str(target), str(site / "current"), str(site / "missing"), str(site)],
            "packages": ["dpkg", "no-such-package-here"],
            "services": ["no-such-unit-b", "no-such-unit-a"],
            "service_command": str(supervisor),
        },
    )
    paths = result["state"]["paths"]
    assert paths[str(target)]["type"] == "file" and paths[str(target)]["mode"] == "0640"
    assert len(paths[str(target)]["sha256"]) == 64
    assert paths[str(site / "current")]["type"] == "link"
    assert paths[str(site / "current")]["target"] == str(site / "v1")
    assert paths[str(site / "missing")] == {"type": "absent"}
    assert paths[str(site)]["type"] == "directory"
    assert result["state"]["packages"]["no-such-package-here"] == "absent"
    assert result["state"]["packages"]["dpkg"] not in ("", "absent")
    assert result["state"]["services"] == {"no-such-unit-a": "not running", "no-such-unit-b": "not running"}
    assert result["changed"] is False
    assert sorted((p.name, p.lstat().st_mtime_ns) for p in site.iterdir()) == before


def test_host_state_module_reads_an_unreadable_service_answer_as_not_running(tmp_path: Path) -> None:
    """A manager that answers nothing it can read (here `true`, which prints no word) must not make
    the host look converged: the controller then gives it a full run."""
    result = run_host_state(tmp_path, {"services": ["munge", "slurmd"], "service_command": "/bin/true"})
    assert result["state"]["services"] == {"munge": "not running", "slurmd": "not running"}
