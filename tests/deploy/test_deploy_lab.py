"""`aifactory deploy` on the session's lab, in the order an admin meets it:

1. a dry run on the fresh lab reports changes and changes nothing; with a site store the control
   host cannot write (a file where the payload folder goes), the bundle role's hosts receive their
   payload over SSH, verify it and succeed;
2. the first deploy, with one host made unreachable halfway (its sshd and its SSH control master
   killed): that host is reported, the run exits 4, the other hosts finish; after sshd is back, a
   re-run completes it; the host is then proven back and converged (later modules share this lab);
3. a further deploy with every role (--full) changes nothing on any host; a plain re-run leaves
   out the hosts that still match their last full run, and finds and repairs the ones that drifted
   (a file edited by hand, a service stopped); --limit and --tags narrow a run;
4. over SSH, every host's /opt/aifactory/current is the bundle's version and the inference server
   started from it answers /healthz;
5. a spec whose plan differs from the bundle's signed plan is refused before Ansible starts;
6. a host given a server certificate from the site CA serves HTTPS (and plain HTTP again once it is
   taken away);
7. the signed heads of a host's decision log are collected into the state folder (`--tags
   runtime_heads`), and the host's log, cut shorter than what was collected, no longer verifies.

The tests share the lab and run in file order (each needs the state the one before left).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from waiting import scaled, wait_for

from aifactory.deploy import DeployOptions, DeployResult, Progress, Update, deploy_site
from aifactory.deploy.evidence import installed_path
from aifactory.deploy.payload import STORE_FOLDER, site_store
from aifactory.errors import DeployError, ExitCode
from aifactory.lab import restart_sshd
from aifactory.plan import PlannedSite, plan_site
from aifactory.state import SiteState
from tests.ssh_site import lab_back_for_the_test, lab_unimportable, ssh_connection_to

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# What a deploy may touch on a host; the dry run must leave all of it as it was.
WATCHED = "/opt /etc /var/lib/aifactory /var/log"
SNAPSHOT = (
    f"find {WATCHED} -xdev \\( -path /etc/ld.so.cache \\) -prune -o "
    "-printf '%p %y %s %m %T@ %l\\n' 2>/dev/null | sort | sha256sum"
)
# The serving process's command line (from the lab supervisor), then its health check's HTTP status.
HEALTH_PROBE = """set -e
status=$(/run/aifactory-lab/bin/aifactory-service status aifactory-serve)
pid=$(printf '%s' "$status" | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
tr '\\0' ' ' < /proc/$pid/cmdline; echo
/usr/bin/python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).status)' URL
"""


def ssh(lab, host: str, script: str, *, check: bool = True):  # noqa: ANN001, ANN201
    """Run `script` on `host` over SSH from the control host, as an admin would."""
    config = lab.status.paths["ssh_config"]
    return lab.exec(["ssh", "-F", config, host, script], check=check, timeout=scaled(60))


def management_address(lab, host: str) -> str:  # noqa: ANN001
    return lab.plan.host(host).management_address


def cut_off(lab, host: str) -> None:  # noqa: ANN001
    """Kill the host's sshd, then the control host's SSH control master to it."""
    lab.sh("kill $(cat /run/sshd.pid)", host=host)
    config = lab.status.paths["ssh_config"]
    for target in (management_address(lab, host), host):
        lab.exec(["ssh", "-F", config, "-O", "exit", target], check=False)


def restore(lab, host: str) -> None:  # noqa: ANN001
    """Start the host's sshd again through the lab, which records it (the shared lab stays `up`)."""
    status = restart_sshd(lab.site, host)
    assert status.state == "up", f"the lab did not heal: {status.state}"
    wait_for(
        lambda: ssh(lab, host, "true", check=False).returncode == 0,
        what=f"sshd of {host} to answer again",
        timeout=20,
        every=0.5,
    )


def deploy(
    lab,  # noqa: ANN001
    *,
    options: DeployOptions,
    planned: PlannedSite | None = None,
    on_update: Callable[[Update, Progress], None] | None = None,
    site_name: str | None = None,
) -> DeployResult:
    """`deploy_site` as a real site runs it: over plain SSH (a Connection this test builds, not the
    lab's), with `aifactory.lab` unimportable while it runs."""
    connection = ssh_connection_to(lab.status)

    def test_side(update: Update, progress: Progress) -> None:
        assert on_update is not None
        with lab_back_for_the_test():  # the test's own callback may use the lab (to cut a host off)
            on_update(update, progress)

    with lab_unimportable():
        return deploy_site(
            planned or lab.planned,
            connection=connection,
            options=options,
            on_update=test_side if on_update else None,
            site_name=site_name,
        )


def by_host(result: DeployResult) -> dict[str, dict]:
    return {h["host"]: h for h in result.hosts}


def explain(result: DeployResult) -> str:
    return (
        "\n".join(
            f"{h['host']}: {h['status']} {h['message']} (last task: {h['last_task']})" for h in result.hosts
        )
        + f"\nevent log: {result.event_log}"
    )


def test_check_on_a_fresh_lab_reports_changes_and_changes_nothing(lab, lab_bundle_import) -> None:  # noqa: ANN001
    for host in lab.hosts:
        assert ssh(lab, host, "test -e /opt/aifactory", check=False).returncode != 0, (
            f"the lab is not fresh: {host} already has /opt/aifactory"
        )
    before = {host: ssh(lab, host, SNAPSHOT).stdout for host in lab.hosts}

    result = deploy(lab, options=DeployOptions(check=True))

    assert result.exit_code == ExitCode.OK, explain(result)
    assert result.check and result.installed is None
    rows = by_host(result)
    assert sorted(rows) == sorted(lab.hosts)
    assert all(rows[h]["changed"] > 0 and rows[h]["failed"] == 0 for h in lab.hosts), rows
    after = {host: ssh(lab, host, SNAPSHOT).stdout for host in lab.hosts}
    assert after == before, "the dry run changed files on a host"
    assert not installed_path(SiteState.for_site(lab.site)).exists()
    events = [json.loads(line) for line in result.event_log.read_text().splitlines()]
    diffs = [e for e in events if (e["event_data"].get("res") or {}).get("diff")]
    assert diffs, "--check shows no diff"


def test_a_store_the_control_host_cannot_write_sends_each_host_its_payload_over_ssh(
    lab, lab_bundle_import
) -> None:  # noqa: ANN001
    """A site store the control host cannot write (as a root-squashing NFS export refuses root): here a
    file planted where the payload folder goes. The control host's copy fails into the rescue, which
    says why, and every host receives its payload over SSH, checks it and is marked verified; the
    deploy succeeds. Only the bundle role runs (its tag), so the next test's first deploy still finds
    hosts without a runtime."""
    plan = lab.plan
    store = site_store(plan)
    assert store is not None, "the lab site has no site store"
    control = plan.host(plan.control_host)
    mount = next(m for m in control.mounts if m.storage == str(store["storage"]))
    folder = f"{mount.path}/{STORE_FOLDER}"
    lab.sh(f"rm -rf '{folder}' && mkdir -p \"$(dirname '{folder}')\" && echo planted > '{folder}'")
    try:
        result = deploy(lab, options=DeployOptions(tags=("bundle_install",)))
    finally:
        lab.sh(f"rm -f '{folder}'")
    assert result.exit_code == ExitCode.OK, explain(result)
    events = [json.loads(line) for line in result.event_log.read_text().splitlines()]

    def ran(task: str) -> list[dict]:
        return [
            e["event_data"]
            for e in events
            if e["event"] == "runner_on_ok" and e["event_data"].get("task") == task
        ]

    (rescue,) = ran("Bundle | store | the hosts receive their payload over SSH instead")
    assert "could not put the payloads on the site store" in rescue["res"]["msg"], rescue["res"]
    copied = {e["host"] for e in ran("Bundle | install | copy the payload over SSH (not on the site store)")}
    verified = {
        e["host"] for e in ran("Bundle | install | mark this version verified") if e["res"].get("changed")
    }
    assert copied == verified == set(lab.hosts), (copied, verified)
    for host in lab.hosts:
        assert ssh(lab, host, "test -e /opt/aifactory", check=False).returncode != 0, host


def test_unreachable_host_mid_deploy_others_finish_and_rerun_completes(lab, lab_bundle_import) -> None:  # noqa: ANN001
    victim = lab.hosts[-1]
    others = [h for h in lab.hosts if h != victim]
    cut: list[str] = []

    def on_update(update: Update, progress: Progress) -> None:
        if update.kind == "task" and update.task.startswith("Fabric |") and not cut:
            cut_off(lab, victim)
            cut.append(update.task)

    try:
        first = deploy(lab, options=DeployOptions(), on_update=on_update)
    finally:
        if cut:
            restore(lab, victim)
    assert cut, "the deploy never reached the fabric role"
    rows = by_host(first)
    assert first.exit_code == ExitCode.HOSTS_FAILED
    assert rows[victim]["status"] in ("unreachable", "failed"), rows[victim]
    assert first.failed_hosts == [victim]
    for host in others:
        assert rows[host]["failed"] == 0 and rows[host]["unreachable"] == 0, rows[host]
        assert ssh(lab, host, "test -L /opt/aifactory/current").returncode == 0
    assert ssh(lab, victim, "test -e /opt/aifactory/current", check=False).returncode != 0

    second = deploy(lab, options=DeployOptions())

    assert second.exit_code == ExitCode.OK, explain(second)
    assert by_host(second)[victim]["changed"] > 0
    assert ssh(lab, victim, "test -L /opt/aifactory/current").returncode == 0


def test_the_cut_off_host_is_back_and_converged(lab, lab_bundle_import) -> None:  # noqa: ANN001
    """The test before restored the host it cut off, for every later test and module on this lab: the
    lab counts every host up, SSH from the control host reaches it (host keys checked), and a re-run
    finds it converged like the others, with nothing to run."""
    from aifactory.lab import lab_status

    victim = lab.hosts[-1]
    assert lab_status(lab.site).state == "up"
    assert ssh(lab, victim, "hostname").stdout.strip() == victim
    result = deploy(lab, options=DeployOptions())
    assert result.exit_code == ExitCode.OK, explain(result)
    assert {h["host"]: (h["changed"], h["converged"]) for h in result.hosts} == {
        h: (0, True) for h in lab.hosts
    }, explain(result)


def test_second_full_deploy_changes_nothing(lab, lab_bundle_import) -> None:  # noqa: ANN001
    """Every role on every host again (--full): the roles themselves are idempotent."""
    result = deploy(lab, options=DeployOptions(full=True))

    assert result.exit_code == ExitCode.OK, explain(result)
    assert {h["host"]: h["changed"] for h in result.hosts} == {h: 0 for h in lab.hosts}
    assert not any(h["converged"] for h in result.hosts)
    assert all(h["ok"] > 20 for h in result.hosts), "the roles did not run"


# AIDE's report (0.18): a summary line, then one line per entry, "<kind><flags>: <path>", the
# flags '+' for an added entry. The deploy's own files: they must all be in the baseline.
AIDE_ENTRY = re.compile(r"^([fdlbcps!])([^:\n]{2,}): (/.*)$", re.M)
DEPLOYED = ("/opt/aifactory/", "/etc/aifactory/", "/etc/slurm/", "/etc/munge/", "/etc/systemd/system/")


def test_aides_baseline_is_the_deployed_host(lab, lab_bundle_import) -> None:  # noqa: ANN001
    """AIDE's first database is made by the deploy's last play, after every role wrote its files: a
    check on the control host right after the deploys reports none of the deploy's own files (the
    runtime tree, the runtime's, MUNGE's and Slurm's configuration, the units) as added or changed;
    a file planted under /opt/aifactory afterwards is reported as added (the check does see)."""
    host = lab.control_host
    probe = "/opt/aifactory/aide-probe"
    ssh(lab, host, f"echo planted > {probe}")
    try:
        done = ssh(lab, host, "aide --check --config=/etc/aide/aide.conf", check=False)
    finally:
        ssh(lab, host, f"rm -f {probe}")
    # AIDE's exit code is a bit mask: 1 added, 2 removed, 4 changed; 14 and above are errors.
    assert 0 < done.returncode < 14, done.stdout[-3000:] + done.stderr[-2000:]
    entries = [(kind + flags, path.strip()) for kind, flags, path in AIDE_ENTRY.findall(done.stdout)]
    assert any(path == probe and "+" in kind for kind, path in entries), done.stdout[-3000:]
    from_deploy = [(k, p) for k, p in entries if p != probe and p.startswith(DEPLOYED)]
    assert from_deploy == [], from_deploy[:20]


def started_tasks(result: DeployResult) -> int:
    """Tasks of the site playbook that started (the read of the hosts' state is an ad-hoc call, whose
    task has no task file)."""
    events = [json.loads(line) for line in result.event_log.read_text().splitlines()]
    return sum(
        e["event"] == "playbook_on_task_start" and bool(e["event_data"].get("task_path")) for e in events
    )


def test_a_re_run_leaves_out_the_hosts_that_still_match(lab, lab_bundle_import) -> None:  # noqa: ANN001
    result = deploy(lab, options=DeployOptions())

    assert result.exit_code == ExitCode.OK, explain(result)
    assert {h["host"]: (h["changed"], h["converged"]) for h in result.hosts} == {
        h: (0, True) for h in lab.hosts
    }
    assert started_tasks(result) == 0, "the playbook ran although every host matched"


def test_drift_is_found_and_only_the_drifted_hosts_run(lab, lab_bundle_import) -> None:  # noqa: ANN001
    edited, stopped, untouched = lab.hosts[0], lab.hosts[1], lab.hosts[2]
    ssh(lab, edited, "echo '# edited by hand' >> /etc/aifactory/runtime.yaml")
    ssh(lab, stopped, "/run/aifactory-lab/bin/aifactory-service stop aifactory-serve")

    repaired = deploy(lab, options=DeployOptions())

    assert repaired.exit_code == ExitCode.OK, explain(repaired)
    rows = by_host(repaired)
    assert rows[untouched]["converged"] and rows[untouched]["changed"] == 0
    for host in (edited, stopped):
        assert not rows[host]["converged"] and rows[host]["changed"] > 0, rows[host]
    assert "/etc/aifactory/runtime.yaml" in repaired.rerun_reasons[edited], repaired.rerun_reasons
    assert "not running: aifactory-serve" in repaired.rerun_reasons[stopped], repaired.rerun_reasons
    assert untouched not in repaired.rerun_reasons
    assert "edited by hand" not in ssh(lab, edited, "cat /etc/aifactory/runtime.yaml").stdout
    supervisor = "/run/aifactory-lab/bin/aifactory-service"
    running = ssh(lab, stopped, f"{supervisor} status aifactory-serve", check=False)
    assert running.returncode == 0, running.stdout

    again = deploy(lab, options=DeployOptions())
    assert all(h["converged"] for h in again.hosts), explain(again)


def test_limit_and_tags_narrow_the_run(lab, lab_bundle_import) -> None:  # noqa: ANN001
    host = lab.hosts[0]
    result = deploy(lab, options=DeployOptions(limit=host, tags=("nist_ac_17",)))

    assert result.exit_code == ExitCode.OK
    assert [h["host"] for h in result.hosts] == [host]
    events = [json.loads(line) for line in result.event_log.read_text().splitlines()]
    tasks = {e["event_data"].get("task", "") for e in events if e["event"] == "runner_on_ok"}
    assert any(t.startswith("Base | configure | sshd") for t in tasks), tasks
    assert not any(t.startswith("Runtime | install") for t in tasks), tasks


def test_every_host_runs_the_bundle_version_and_answers_health(lab, lab_bundle_import) -> None:  # noqa: ANN001
    version = lab_bundle_import.version
    for host in lab.hosts:
        target = ssh(lab, host, "readlink /opt/aifactory/current").stdout.strip()
        assert target == f"/opt/aifactory/{version}", (host, target)
        record = json.loads(ssh(lab, host, "cat /opt/aifactory/current/aifactory-install.json").stdout)
        assert record["version"] == version and record["bundle_digest"] == lab_bundle_import.digest
        assert {"aifactory", "torch"} <= {p["name"] for p in record["packages"]}
        address = management_address(lab, host)
        probe = HEALTH_PROBE.replace("URL", f"http://{address}:8600/healthz")
        lines = ssh(lab, host, probe).stdout.strip().splitlines()
        assert "/opt/aifactory/current/bin/aifactory-serve" in lines[0], lines
        assert lines[-1] == "200", lines
    installed = json.loads(installed_path(SiteState.for_site(lab.site)).read_text())
    for host in lab.hosts:
        entry = installed["hosts"][host]
        assert entry["runtime"]["version"] == version
        assert entry["bundle"]["digest"] == lab_bundle_import.digest
        assert len(entry["config_files"]["/etc/aifactory/runtime.yaml"]) == 64


SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"
CHECK_LOG = "/var/log/aifactory-service/aifactory-runtime-check.service.log"


def test_the_runtime_in_service_is_checked_against_its_file_listing(lab, lab_bundle_import) -> None:  # noqa: ANN001
    """Each install has its file listing beside it (/opt/aifactory/<version>.sha256); the check's
    timer is running and its oneshot, as deployed (stock sha256sum in the version's folder), passes on
    the deployed tree, fails naming a file rewritten on one host, and passes again once it is put back."""
    version = lab_bundle_import.version
    for host in lab.hosts:
        listing = ssh(lab, host, f"cat /opt/aifactory/{version}.sha256").stdout.splitlines()
        assert len(listing) > 1000 and all(re.fullmatch(r"[0-9a-f]{64}  \S.*", line) for line in listing)
        timer = ssh(lab, host, f"{SUPERVISOR} is-active aifactory-runtime-check.timer")
        assert timer.stdout.split() == ["active"], timer.stdout
        unit = ssh(lab, host, "cat /etc/systemd/system/aifactory-runtime-check.service").stdout
        assert f"WorkingDirectory=/opt/aifactory/{version}\n" in unit, unit
        ssh(lab, host, f"{SUPERVISOR} start aifactory-runtime-check.service")
    host = lab.hosts[-1]
    listing = ssh(lab, host, f"cat /opt/aifactory/{version}.sha256").stdout
    names = [line.split("  ", 1)[1] for line in listing.splitlines()]
    target = next(name for name in names if name.endswith(".dist-info/METADATA"))
    path = f"/opt/aifactory/{version}/{target}"
    ssh(lab, host, f"cp -p {path} /root/check-original && echo tampered >> {path}")
    try:
        check = f": > {CHECK_LOG}; {SUPERVISOR} start aifactory-runtime-check.service"
        failed = ssh(lab, host, check, check=False)
        log = ssh(lab, host, f"cat {CHECK_LOG}").stdout
    finally:
        ssh(lab, host, f"cp -p /root/check-original {path} && rm /root/check-original")
    assert failed.returncode != 0, failed.stdout
    assert f"{target}: FAILED" in log, log[-2000:]
    ssh(lab, host, f"{SUPERVISOR} start aifactory-runtime-check.service")


DENIED_REQUEST = """/usr/bin/python3 - <<'PY'
import urllib.error, urllib.request
for _ in range(3):
    request = urllib.request.Request("http://ADDRESS:8600/v1/models/any/infer", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as error:
        print(error.code)
PY
"""
HEADS_ON_NODE = "/var/lib/aifactory/log-heads/decisions.heads.jsonl"


def test_signed_log_heads_are_collected_off_the_node(lab, lab_bundle_import, tmp_path: Path) -> None:  # noqa: ANN001
    from aifactory.trust.decisionlog import verify_log

    host = lab.hosts[0]
    answers = ssh(lab, host, DENIED_REQUEST.replace("ADDRESS", management_address(lab, host))).stdout.split()
    # Denied (no token) or not served here: each one decided and recorded.
    assert answers and all(code in ("401", "403", "404") for code in answers), answers
    wait_for(  # the server signs a head within sign_interval (5 s) of a record
        lambda: ssh(lab, host, f"test -s {HEADS_ON_NODE}", check=False).returncode == 0,
        what="a signed head copied to the node's outbox",
        timeout=30,
        every=1,
    )

    result = deploy(lab, options=DeployOptions(tags=("runtime_heads",)))

    assert result.exit_code == ExitCode.OK, explain(result)
    collected = SiteState.for_site(lab.site).path("heads", host)
    heads, trust = collected / "decisions.heads.jsonl", collected / "allowed_signers"
    assert heads.is_file() and trust.is_file(), sorted(p.name for p in collected.iterdir())
    log = tmp_path / "decisions.jsonl"  # the node's log, as an auditor copies it off the node
    log.write_bytes(ssh(lab, host, "cat /var/lib/aifactory/runtime/decisions.jsonl").stdout.encode())
    report = verify_log(log, allowed_signers=trust, collected=[heads])
    assert report.ok and report.signed_heads >= 1, report.render()
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[: report.last_signed_seq]))  # cut below the collected head
    cut = verify_log(log, allowed_signers=trust, collected=[heads])
    assert not cut.ok and any("has no record" in p for p in cut.problems), cut.render()


def test_a_spec_whose_plan_differs_from_the_bundle_is_refused(lab, lab_bundle_import, tmp_path: Path) -> None:  # noqa: ANN001
    spec = tmp_path / "site.yaml"
    spec.write_text(lab.spec.read_text().replace("    count: 2\n", "    count: 3\n", 1))
    (tmp_path / "site.alloc.json").write_text(lab.spec.with_name("site.alloc.json").read_text())

    with pytest.raises(DeployError) as refused:
        deploy(lab, options=DeployOptions(), planned=plan_site(spec, write_lock=False), site_name=lab.site)

    assert refused.value.code == "plan-differs"
    assert refused.value.exit_code == ExitCode.INVALID


TLS_PROBE = """/usr/bin/python3 - <<'PY'
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile="/var/lib/aifactory/runtime/site-ca/ca.pem")
for url in ("https://ADDRESS:8600/healthz", "http://ADDRESS:8600/healthz"):
    try:
        print(url.split(":")[0], urllib.request.urlopen(url, timeout=10, context=context).status)
    except Exception as error:  # the answer we print is the test's evidence
        print(url.split(":")[0], type(error).__name__)
PY
"""


def test_a_host_with_a_certificate_from_the_site_ca_serves_https(lab, lab_bundle_import) -> None:  # noqa: ANN001
    from datetime import UTC, datetime, timedelta

    from aifactory.trust.issuing.certs import issue_server_certificate
    from aifactory.trust.tokens import TrustFiles

    host = lab.hosts[-1]
    address = management_address(lab, host)
    trust = TrustFiles(SiteState.for_site(lab.site).subdir("runtime"))
    certs = trust.root / "server-certs"
    issue_server_certificate(
        trust,
        site=lab.site,
        server=host,
        addresses=(address,),
        expires=datetime.now(UTC) + timedelta(days=30),
        out_dir=certs,
    )
    try:
        served = deploy(lab, options=DeployOptions(limit=host))
        assert served.exit_code == ExitCode.OK, explain(served)
        assert by_host(served)[host]["changed"] > 0
        config = ssh(lab, host, "cat /etc/aifactory/runtime.yaml").stdout
        assert "tls_cert: " in config and "tls_client_ca: " in config, config
        modes = ssh(lab, host, f"stat -c '%a %n' /etc/aifactory/tls/{host}.key /etc/aifactory/tls/{host}.pem")
        assert modes.stdout.split()[0] == "600", modes.stdout
        answers = ssh(lab, host, TLS_PROBE.replace("ADDRESS", address)).stdout.split("\n")
        assert "https 200" in answers, answers
        assert "http 200" not in answers, answers
    finally:
        for path in certs.iterdir():
            path.unlink()
        certs.rmdir()
    plain = deploy(lab, options=DeployOptions(limit=host))
    assert plain.exit_code == ExitCode.OK, explain(plain)
    assert ssh(lab, host, "test -e /etc/aifactory/tls/" + host + ".key", check=False).returncode != 0
    answers = ssh(lab, host, TLS_PROBE.replace("ADDRESS", address)).stdout.split("\n")
    assert "http 200" in answers, answers
