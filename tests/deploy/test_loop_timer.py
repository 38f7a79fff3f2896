"""The loop's timers (playbooks/roles/loop_timer, docs/loop.md "The timer"), without the lab:

- the plan's loop section reaches the inventory as `aifactory_loop` only when the plan has one: a
  plan without it keeps every byte of its inventory;
- real ansible-playbook (local connection) runs the role on the control host into a scratch unit
  folder: one .service and one .timer per model, which `systemd-analyze verify` accepts; a second run
  changes nothing, and check mode writes nothing;
- hostile values (newline, `%`, `$`, spaces, quotes) in the paths that reach ExecStart are quoted
  for systemd (and still verify); in a model name or a calendar they are refused before any file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_env import ansible_env

from aifactory.inventory import build_inventory, write_inventory
from aifactory.inventory.render import load_inventory_yaml, render_files
from aifactory.plan import plan_site
from aifactory.plan.model import SitePlan

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "playbooks" / "roles"
LOOP_SPEC = REPO / "tests" / "loop" / "fixtures" / "site.yaml"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
BUNDLE = {"version": "20261201.1", "digest": "sha256:" + "a" * 64}


def _spec(folder: Path, *, loop: bool) -> Path:
    data = yaml.safe_load(LOOP_SPEC.read_text())
    if not loop:
        del data["loop"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    return plan_site(_spec(tmp_path_factory.mktemp("looped"), loop=True), write_lock=False).plan


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    return plan_site(_spec(tmp_path_factory.mktemp("plain"), loop=False), write_lock=False).plan


def test_a_site_without_a_loop_keeps_its_inventory_bytes(looped: SitePlan, plain: SitePlan) -> None:
    files_with = render_files(build_inventory(looped, bundle=BUNDLE))
    files_without = render_files(build_inventory(plain, bundle=BUNDLE))
    assert not any("aifactory_loop" in text for text in files_without.values())
    assert files_with.keys() == files_without.keys()
    for name in files_without:
        if name != "group_vars/all.yml":
            assert files_with[name] == files_without[name], name
    block = re.compile(r"^aifactory_loop:\n(?:[ -] .*\n)+", re.M)
    group_vars = files_with["group_vars/all.yml"]
    assert len(block.findall(group_vars)) == 1
    stripped = (
        block.sub("", group_vars)
        .replace(looped.digest(), plain.digest())
        .replace(looped.spec_digest, plain.spec_digest)
    )
    assert stripped == files_without["group_vars/all.yml"]
    values = load_inventory_yaml(group_vars)
    assert values["aifactory_loop"] == [{"model": "vitals-mlp", "on_calendar": "*-*-* 02:30:00"}]


# ------------------------------------------------------------------------------------ the role

PLAYBOOK = """
- name: The control host's loop timers, as site.yml's play runs them
  hosts: {host}
  gather_facts: false
  roles:
    - role: loop_timer
"""


def _ansible_env(folder: Path) -> dict[str, str]:
    return ansible_env(folder)


def _run_role(
    plan: SitePlan, folder: Path, overrides: dict[str, Any], *, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Real ansible-playbook with the plan's real inventory; the units go to folder/units."""
    inventory = folder / "inventory"
    if not inventory.exists():
        write_inventory(build_inventory(plan, bundle=BUNDLE), inventory)
    playbook = folder / "timers.yml"
    playbook.write_text(PLAYBOOK.format(host=plan.control_host))
    (folder / "units").mkdir(exist_ok=True)
    extra = {
        "ansible_python_interpreter": sys.executable,
        "loop_timer_unit_dir": str(folder / "units"),
        "loop_timer_start": False,  # no systemd here: the units are what is checked
        "loop_timer_aifactory_command": str(Path(sys.executable).with_name("aifactory")),
        **overrides,
    }
    argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), "-c", "local", str(playbook), "-e", json.dumps(extra)]
    if check:
        argv.append("--check")
    return subprocess.run(
        argv, capture_output=True, text=True, env=_ansible_env(folder), timeout=300, check=False
    )


def _changed(done: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"changed=(\d+)", done.stdout)
    assert found, done.stdout[-3000:]
    return int(found.group(1))


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _systemd_word(value: str) -> str:
    """How systemd.syntax(7) wants one ExecStart word quoted (written here from the man page, apart
    from the role's template, so the two are checked against each other)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


@needs_systemd_analyze
def test_the_role_writes_units_systemd_accepts_idempotently_and_not_in_check_mode(
    looped: SitePlan, tmp_path: Path
) -> None:
    spec = tmp_path / "site.yaml"
    overrides = {"aifactory_site_spec": str(spec), "aifactory_state_home": str(tmp_path / "state")}
    check = _run_role(looped, tmp_path, overrides, check=True)
    assert check.returncode == 0, check.stdout[-4000:]
    assert not list((tmp_path / "units").iterdir())  # check mode wrote nothing
    first = _run_role(looped, tmp_path, overrides)
    assert first.returncode == 0, first.stdout[-4000:]
    assert _changed(first) == 1  # the service and timer units of each loop: one task
    service = tmp_path / "units" / "aifactory-loop-vitals-mlp.service"
    timer = tmp_path / "units" / "aifactory-loop-vitals-mlp.timer"
    assert "OnCalendar=*-*-* 02:30:00\n" in timer.read_text()
    command = str(Path(sys.executable).with_name("aifactory"))
    run = f'loop run {_systemd_word(str(spec))} "vitals-mlp" --if-due --quiet'
    assert f"ExecStart={_systemd_word(command)} {run}\n" in service.read_text()
    verified = _verify([service, timer])
    assert verified.returncode == 0, verified.stderr
    again = _run_role(looped, tmp_path, overrides)
    assert again.returncode == 0 and _changed(again) == 0, again.stdout[-3000:]


@needs_systemd_analyze
def test_a_loop_without_a_schedule_gets_the_default_calendar(looped: SitePlan, tmp_path: Path) -> None:
    entry = (looped.loop or ())[0]
    plan = replace(
        looped, loop=(replace(entry, trigger=replace(entry.trigger, schedule=None, on_calendar=None)),)
    )
    done = _run_role(plan, tmp_path, {"aifactory_site_spec": str(tmp_path / "site.yaml")})
    assert done.returncode == 0, done.stdout[-4000:]
    timer = tmp_path / "units" / "aifactory-loop-vitals-mlp.timer"
    assert "OnCalendar=hourly\n" in timer.read_text()
    assert _verify([timer, timer.with_suffix(".service")]).returncode == 0


@needs_systemd_analyze
def test_hostile_paths_are_quoted_for_systemd(looped: SitePlan, tmp_path: Path) -> None:
    # (`{{` is the inventory's to keep from templating: deploy writes the spec's path `!unsafe`)
    spec = str(tmp_path / 'my site\'s "spec" 100% $HOME \\ %n.yaml')
    home = str(tmp_path / 'state %h $USER "q"')
    done = _run_role(looped, tmp_path, {"aifactory_site_spec": spec, "aifactory_state_home": home})
    assert done.returncode == 0, done.stdout[-4000:]
    service = tmp_path / "units" / "aifactory-loop-vitals-mlp.service"
    text = service.read_text()
    assert f" loop run {_systemd_word(spec)} " in text
    assert 'Environment="AIFACTORY_STATE_HOME=' + home.replace('"', '\\"').replace("%", "%%") + '"\n' in text
    verified = _verify([service, service.with_suffix(".timer")])
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "vitals\nExecStartPre=/bin/sh"),
        ("model", "Vitals Mlp"),
        ("model", "x%n"),
        ("on_calendar", "*-*-* 02:30:00\nOnBootSec=1"),
        ("on_calendar", "%H"),
        ("on_calendar", "*-*-1..3 02:30:00"),
        ("spec", "/srv/site\n[Service]\nExecStartPre=/bin/sh.yaml"),
    ],
)
def test_hostile_values_are_refused_before_any_unit_is_written(
    looped: SitePlan, tmp_path: Path, field: str, value: str
) -> None:
    entry = {"model": "vitals-mlp", "on_calendar": "*-*-* 02:30:00"}
    overrides: dict[str, Any] = {"aifactory_site_spec": str(tmp_path / "site.yaml")}
    if field == "spec":
        overrides["aifactory_site_spec"] = value
    else:
        overrides["loop_timer_loops"] = [{**entry, field: value}]
    done = _run_role(looped, tmp_path, overrides)
    assert done.returncode != 0
    assert "loop_timer:" in done.stdout  # the preflight's message
    assert not list((tmp_path / "units").iterdir())


def test_the_argument_spec_documents_every_default(tmp_path: Path) -> None:
    """meta/argument_specs.yml names every input defaults/main.yml sets, and no other."""
    specs = yaml.safe_load((ROLES / "loop_timer" / "meta" / "argument_specs.yml").read_text())
    defaults = yaml.safe_load((ROLES / "loop_timer" / "defaults" / "main.yml").read_text())
    assert set(specs["argument_specs"]["main"]["options"]) == set(defaults)


def test_the_argument_spec_refuses_a_calendar_default_outside_its_words(
    looped: SitePlan, tmp_path: Path
) -> None:
    done = _run_role(
        looped,
        tmp_path,
        {"aifactory_site_spec": str(tmp_path / "site.yaml"), "loop_timer_default_on_calendar": "*:0/5"},
    )
    assert done.returncode != 0
    assert "loop_timer_default_on_calendar" in done.stdout
    assert not list((tmp_path / "units").iterdir())
