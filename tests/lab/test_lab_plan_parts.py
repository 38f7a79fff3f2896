"""The lab's pure parts, no root needed: names, mount plans, generated access files, credentials,
the supervisor's unit parsing, the CLI's exec arguments."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from aifactory.errors import LabError, SecretError
from aifactory.lab import access, hosts
from aifactory.lab.bmc import BmcCredential, emulator_config, system_uuid
from aifactory.lab.layout import LabLayout
from aifactory.lab.names import LabNames
from aifactory.plan import plan_site
from tests.conftest import copy_lab_spec

SUPERVISOR = Path(__file__).resolve().parents[2] / "aifactory" / "lab" / "files" / "aifactory-service"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return plan_site(copy_lab_spec(tmp_path_factory.mktemp("spec"), "unit")).plan


def supervisor():
    loader = importlib.machinery.SourceFileLoader("aifactory_service", str(SUPERVISOR))
    spec = importlib.util.spec_from_loader("aifactory_service", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_names_of_two_sites_never_collide(plan):
    one, two = LabNames("unit"), LabNames("unit-b")
    host = plan.hosts[0].name
    made = {one.fabric_ns, one.host_ns(host), one.bmc_ns("bmc")}
    assert not made & {two.fabric_ns, two.host_ns(host), two.bmc_ns("bmc")}
    assert all(name.startswith("aif.unit.") for name in made)


def test_bridge_names_fit_the_kernel_limit(plan):
    names = LabNames("unit")
    assert names.bridge(plan, "mgmt") == "br-mgmt"
    for fabric in plan.fabrics:
        assert len(names.bridge(plan, fabric.name)) <= 15
    assert len(LabNames.host_port(plan, plan.hosts[-1], 3)) <= 15


def test_missing_mount_points_are_made_inside_an_overlay_of_their_parent(plan, tmp_path):
    layout = LabLayout(tmp_path / "lab")
    host = plan.hosts[1]
    mounts = hosts.mount_plan(layout, host)
    overlaid = [lower for lower, _ in mounts.overlays]
    assert overlaid[0] == "/etc" and "/var/lib" in overlaid
    targets = [target for _, target in mounts.binds]
    assert {"/opt", "/var/log", "/var/spool", "/var/lib/aifactory", host.mounts[0].path} <= set(targets)
    for target in targets:
        if not Path(target).exists():
            assert any(Path(lower) in Path(target).parents for lower in overlaid), target
    assert mounts.machine_dirs == []
    script = hosts.setup_script(layout, host, mounts)
    assert script.index("mount -t overlay") < script.index("mount --bind")
    assert f"echo {host.name} > /proc/sys/kernel/hostname" in script


def test_the_labs_tools_under_a_noexec_mount_stay_executable_and_nothing_else(plan):
    """A checkout (and its .venv) under /tmp or /home, noexec in a host's layout, is bound onto itself
    with that mount's other options; one under /opt, /work or /usr needs nothing."""
    host = plan.hosts[0]
    trees = ["/tmp/ci/.venv", "/home/alice/aifactory", "/var/log/odd", "/opt/aifactory-src", "/work/main"]
    assert hosts.exec_exceptions(host, trees) == [
        ("/tmp/ci/.venv", "nodev,nosuid,exec"),
        ("/home/alice/aifactory", "nodev,nosuid,exec"),
        ("/var/log/odd", "nodev,nosuid,exec"),
    ]
    lines = hosts.layout_lines(host, ["/tmp/ci/.venv"])
    tmp = lines.index("mount -o remount,bind,nodev,nosuid,noexec /tmp")
    assert lines[tmp + 1 :].index("mount --bind /tmp/ci/.venv /tmp/ci/.venv") >= 0
    assert "mount -o remount,bind,nodev,nosuid,exec /tmp/ci/.venv" in lines
    assert all("/work" not in line for line in hosts.layout_lines(host, ["/work/main"]))


def test_lab_state_under_a_private_path_is_refused(plan):
    with pytest.raises(LabError, match="lies under a path lab hosts get privately"):
        hosts.check_state_location(LabLayout(Path("/opt/state/lab")), plan)


def test_inventory_reaches_every_host_by_management_address(plan):
    inventory = access.inventory(plan)
    assert inventory == access.inventory(plan)
    hosts_ = inventory["all"]["hosts"]
    assert {name: v["ansible_host"] for name, v in hosts_.items()} == {
        h.name: h.management_address for h in plan.hosts
    }
    lab_vars = inventory["all"]["vars"]
    assert lab_vars["aifactory_kernel_shared"] is True and lab_vars["aifactory_packages_preinstalled"] is True
    assert lab_vars["aifactory_service_manager"] == "supervised"
    assert lab_vars["monitoring_bmc_scheme"] == "http" and lab_vars["fabric_manage_links"] is False
    assert set(inventory["all"]["children"]["control"]["hosts"]) == {plan.control_host}
    yaml.safe_load(yaml.safe_dump(inventory))


def test_the_ssh_sites_description_of_the_lab_hosts_is_the_labs_own():
    """tests/ssh_site.py writes the lab's hosts down as an admin would (without aifactory.lab): what it
    says they are must be what the lab's own Connection says, or the SSH tests deploy other hosts."""
    from tests.ssh_site import HOST_VARS

    assert {k: v for k, v in HOST_VARS.items() if k != "ansible_python_interpreter"} == access.LAB_HOST_VARS


def test_ssh_config_and_ansible_cfg_keep_host_key_checking_and_speed_settings(plan, tmp_path):
    layout = LabLayout(tmp_path / "lab")
    config = access.ssh_config(layout, plan)
    for host in plan.hosts:
        assert f"Host {host.name}\n    HostName {host.management_address}" in config
    assert "StrictHostKeyChecking yes" in config and f"UserKnownHostsFile {layout.known_hosts}" in config
    cfg = access.ansible_cfg(layout)
    for line in (
        "forks = 20",
        "pipelining = True",
        "host_key_checking = True",
        "gathering = smart",
        "fact_caching = ansible.builtin.jsonfile",
        "ControlPersist=600s",
    ):
        assert line in cfg


def test_sshd_refuses_passwords_and_listens_on_lab_addresses_only(plan, tmp_path):
    host = plan.hosts[1]
    config = access.sshd_config(LabLayout(tmp_path / "lab"), host)
    assert "PasswordAuthentication no" in config and "UsePAM no" in config
    listens = [line.split()[1] for line in config.splitlines() if line.startswith("ListenAddress")]
    assert listens == access.lab_addresses(host)


def test_bmc_credentials_never_show_their_password():
    credential = BmcCredential.parse("admin:s3cret:with-colon")
    assert credential.password == "s3cret:with-colon"
    assert "s3cret" not in repr(credential)
    for bad in ("admin", ":pw", "admin:"):
        with pytest.raises(SecretError):
            BmcCredential.parse(bad)


def test_emulator_config_keeps_notifications_off_and_auth_on(plan, tmp_path):
    host = next(h for h in plan.hosts if h.bmc)
    text = emulator_config("unit", host, tmp_path, host_namespace="/run/netns/aif.unit.host.x")
    settings: dict = {}
    exec(compile(text, "emulator.conf", "exec"), settings)  # the emulator reads it the same way
    assert settings["SUSHY_EMULATOR_LISTEN_IP"] == host.bmc.address
    assert settings["SUSHY_EMULATOR_AUTH_FILE"] == str(tmp_path / "htpasswd")
    (system,) = settings["SUSHY_EMULATOR_FAKE_SYSTEMS"]
    assert system["external_notifier"] is False and system["name"] == host.name
    assert system["uuid"] == system_uuid("unit", host.name) != system_uuid("other", host.name)


def test_supervisor_reads_units_as_systemd_does(tmp_path):
    service = supervisor()
    (tmp_path / "env").write_text("# defaults\nOPTIONS='--verbose --port 9'\n")
    unit = tmp_path / "demo.service"
    unit.write_text(
        "[Unit]\nDescription=demo\n[Service]\nType=simple\n"
        f"EnvironmentFile=-{tmp_path}/missing\nEnvironmentFile={tmp_path}/env\n"
        'Environment="GREETING=hello world" NAME=%N\n'
        "ExecStartPre=-/bin/false\n"
        "ExecStart=/usr/bin/demo $OPTIONS ${GREETING} --name=${NAME} \\\n  --end\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    parsed = service.parse_unit(str(unit))
    env = service.environment(parsed, "demo.service")
    argv, ignore = service.command(parsed["ExecStart"][-1], env, "demo.service")
    assert argv == ["/usr/bin/demo", "--verbose", "--port", "9", "hello world", "--name=demo", "--end"]
    assert not ignore
    assert service.command(parsed["ExecStartPre"][0], env, "demo.service") == (["/bin/false"], True)
    assert "WantedBy" not in parsed
    shell = service.command('/bin/sh -c "echo $$PPID ${NAME}"', env, "demo.service")[0]
    assert shell == ["/bin/sh", "-c", "echo $PPID demo"]
    assert service.seconds("90s", 1) == 90 and service.seconds("2min", 1) == 120
    assert service.seconds("500ms", 1) == 0.5


def test_supervisor_is_active_answers_for_several_units_as_systemctl_does(tmp_path, monkeypatch, capsys):
    """Real processes stand for a running service's monitor and main process; the states on disk
    are the files the supervisor itself writes."""
    import subprocess
    import sys

    service = supervisor()
    units, run = tmp_path / "units", tmp_path / "run"
    units.mkdir()
    run.mkdir()
    monkeypatch.setattr(service, "UNIT_DIRS", (str(units),))
    monkeypatch.setattr(service, "RUN_DIR", str(run))
    for name in ("up", "done", "broken", "idle"):
        (units / f"{name}.service").write_text("[Service]\nExecStart=/bin/true\n")
    (run / "done.service.state").write_text("exited\n")
    (run / "broken.service.state").write_text("failed\n")
    pretend_monitor = [sys.executable, "-c", "import time; time.sleep(60)", "__monitor", "up.service"]
    sleeper = subprocess.Popen(pretend_monitor)
    try:
        (run / "up.service.monitor").write_text(f"{sleeper.pid}\n")
        (run / "up.service.pid").write_text(f"{sleeper.pid}\n")
        code = service.main(["aifactory-service", "is-active", "--", "up", "done", "broken", "idle", "gone"])
        assert capsys.readouterr().out.split() == ["active", "active", "failed", "inactive", "inactive"]
        assert code == 0  # as systemctl's: 0 when any of them is active
        assert service.main(["aifactory-service", "is-active", "up", "done.service"]) == 0
        assert capsys.readouterr().out.split() == ["active", "active"]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert service.main(["aifactory-service", "is-active", "up", "broken", "gone"]) == 3  # none active
    assert capsys.readouterr().out.split() == ["inactive", "failed", "inactive"]  # up: its monitor is gone
    assert service.main(["aifactory-service", "is-active"]) == 2


def test_supervisor_a_failed_oneshot_is_failed_until_it_next_runs(tmp_path, monkeypatch, capsys):
    """As systemd: a oneshot whose command fails is `failed` (what a daily check's failure leaves
    for is-active to report), and `inactive` again once a run succeeds."""
    service = supervisor()
    units, run, logs = tmp_path / "units", tmp_path / "run", tmp_path / "log"
    for folder in (units, run, logs):
        folder.mkdir()
    monkeypatch.setattr(service, "UNIT_DIRS", (str(units),))
    monkeypatch.setattr(service, "RUN_DIR", str(run))
    monkeypatch.setattr(service, "LOG_DIR", str(logs))
    verdict = tmp_path / "verdict"
    exec_start = f"/bin/sh -c 'exit $(cat {verdict})'"
    (units / "check.service").write_text(f"[Service]\nType=oneshot\nExecStart={exec_start}\n")
    verdict.write_text("1")
    assert service.main(["aifactory-service", "start", "check.service"]) == 1
    capsys.readouterr()
    assert service.main(["aifactory-service", "is-active", "check"]) == 3
    assert capsys.readouterr().out.split() == ["failed"]
    verdict.write_text("0")
    assert service.main(["aifactory-service", "start", "check.service"]) == 0
    capsys.readouterr()
    assert service.main(["aifactory-service", "is-active", "check"]) == 3
    assert capsys.readouterr().out.split() == ["inactive"]


def test_exec_takes_host_after_the_site():
    from aifactory.cli.lab import split_exec_argv

    assert split_exec_argv(["--host", "h1", "--", "ls", "-l"], None) == (["ls", "-l"], "h1")
    assert split_exec_argv(["--host=h2", "--", "ls"], None) == (["ls"], "h2")
    assert split_exec_argv(["--", "ansible", "--host", "x"], "h0") == (["ansible", "--host", "x"], "h0")


def test_without_root_the_lab_refuses_and_its_tests_skip_with_the_reason(monkeypatch):
    from aifactory.errors import PrerequisiteError
    from aifactory.lab.system import check_prerequisites
    from tests.conftest import lab_unavailable

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(PrerequisiteError, match="needs root"):
        check_prerequisites()
    assert "needs root" in lab_unavailable()


def test_a_missing_tool_is_named_with_the_package_to_install(monkeypatch):
    from aifactory.errors import PrerequisiteError
    from aifactory.lab import system

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(system, "which", lambda tool: None if tool == "sshd" else f"/usr/bin/{tool}")
    with pytest.raises(PrerequisiteError) as caught:
        system.check_prerequisites()
    assert "sshd" in caught.value.message and "apt-get install -y openssh-server" in caught.value.hint


@pytest.mark.parametrize(
    ("event", "after", "expected"),
    [
        ("minutely", (2026, 12, 1, 21, 37, 12), (2026, 12, 1, 21, 38, 0)),
        ("hourly", (2026, 12, 1, 21, 37, 12), (2026, 12, 1, 22, 0, 0)),
        ("daily", (2026, 12, 31, 23, 59, 59), (2027, 1, 1, 0, 0, 0)),
        ("*:0/5", (2026, 12, 1, 21, 37, 12), (2026, 12, 1, 21, 40, 0)),
        ("*-*-* *:*:0/10", (2026, 12, 1, 21, 37, 12), (2026, 12, 1, 21, 37, 20)),
        ("Mon *-*-* 03:00", (2026, 12, 1, 21, 37, 12), (2026, 12, 7, 3, 0, 0)),
        ("Sat..Sun 10:30", (2026, 12, 1, 21, 37, 12), (2026, 12, 5, 10, 30, 0)),
        ("*-02-29 12:00", (2026, 12, 1, 0, 0, 0), (2028, 2, 29, 12, 0, 0)),
        ("*-*-01 00:00:00", (2026, 12, 1, 0, 0, 0), (2027, 1, 1, 0, 0, 0)),  # strictly after
        ("08,20:15", (2026, 12, 1, 9, 0, 0), (2026, 12, 1, 20, 15, 0)),
    ],
)
def test_supervisor_calendar_events_fire_at_the_next_matching_time(event, after, expected):
    import time

    module = supervisor()
    now = time.mktime((*after, 0, 0, -1))
    assert time.localtime(module.CalendarEvent(event).next_after(now))[:6] == expected


@pytest.mark.parametrize("event", ["every full moon", "*-*-* 25:00", "12", "*:0/0", "Funday 10:00"])
def test_supervisor_refuses_calendar_events_it_cannot_read(event):
    module = supervisor()
    with pytest.raises(module.Failure):
        module.CalendarEvent(event)


def test_supervisor_reads_systemd_time_spans():
    module = supervisor()
    assert [module.span(v) for v in ("90", "1min 30s", "2h", "500ms", "1d 1s")] == [90, 90, 7200, 0.5, 86401]
    assert module.span("soon") is None and module.span("5 parsecs") is None


def test_a_host_brought_back_blank_gets_a_new_key_that_the_labs_known_hosts_does_not_trust(plan, tmp_path):
    """`lab host recreate`'s files (access.host_identity): a host whose folder went with it gets a new
    host key, and the known_hosts `lab up` wrote, the one file the lab's ssh config and the deploy
    check host keys against (no other: the global file is /dev/null), is left byte for byte: only
    `aifactory replace` learns the new key, from a proof (tests/lifecycle/test_replace.py)."""
    from aifactory.trust.issuing import known_hosts

    layout = LabLayout(tmp_path / "lab")
    access.generate_keys(layout, plan)
    access.write_access_files(layout, plan)
    host = plan.hosts[-1]
    written = layout.known_hosts.read_bytes()
    old = access.host_key(layout, host).with_suffix(".pub").read_text()
    kept_config = (layout.host_dir(host.name) / "sshd_config").read_text()
    again = access.host_identity(layout, host)  # the host still has its folder: its key is kept
    assert again.read_text() == old
    shutil.rmtree(layout.host_dir(host.name))  # `lab host destroy`: its disk state is gone
    new = access.host_identity(layout, host).read_text()
    assert new.split()[:2] != old.split()[:2]
    assert (layout.host_dir(host.name) / "sshd_config").read_text() == kept_config
    assert layout.known_hosts.read_bytes() == written
    trusted = known_hosts.host_keys(known_hosts.read(layout.known_hosts), [host.name])
    assert " ".join(new.split()[:2]) not in trusted and " ".join(old.split()[:2]) in trusted
    config = access.ssh_config(layout, plan)
    assert f"UserKnownHostsFile {layout.known_hosts}\n    GlobalKnownHostsFile /dev/null" in config
