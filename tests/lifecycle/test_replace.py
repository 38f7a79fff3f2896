"""`aifactory replace`'s orchestration, journal and known_hosts handling, with the stand-ins of
tests/lifecycle/fake_site.py for Slurm, the front door and the gate, and stand-ins here for the
SSH probe, the provisioning and the deploy (the real parts run on the lab:
tests/pipeline/test_replace_lab.py). The known_hosts file is real: a file written as OpenSSH writes
one and edited by the real code (aifactory.trust.issuing.known_hosts), and the host keys are real
ed25519 keys from the stock `ssh-keygen`.

What a user relies on: a key is never learned on first use (no proof: nothing changes; a key that
does not match the proof: refused, known_hosts byte for byte as it was), a dead host counts as
drained and the log says so, and a replacement killed at any step goes on to the same end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aifactory.cli.main import main
from aifactory.connection import Connection
from aifactory.errors import ExitCode, ReplaceError, ReplaceFailed
from aifactory.lifecycle.journal import VersionRef
from aifactory.lifecycle.replace import (
    ADMIN,
    Provisioned,
    ReplaceParts,
    ReplaceRequest,
    ReplaceStore,
    run_replace,
)
from aifactory.lifecycle.replace_parts import KnownHostsKeys
from aifactory.lifecycle.seams import StepOutcome
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState
from aifactory.trust.issuing import known_hosts
from aifactory.trust.issuing.known_hosts import key_fingerprint

from .fake_site import A, FakeDoor, FakeGate, FakeLog, FakeSite, FakeSlurm, Killed

HOST, OTHER = "lab-cpu-002", "lab-cpu-001"
ADDRESS = "10.200.0.12"
LAB_SPEC = Path(__file__).resolve().parents[2] / "inventory" / "lab" / "site.yaml"


def _key(folder: Path, name: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)], check=True
    )
    kind, blob, *_ = (folder / f"{name}.pub").read_text().split()
    return f"{kind} {blob}"


@dataclass(frozen=True)
class Keys:
    old: str  # the dead machine's
    new: str  # the new machine's, as its provisioning made it
    stranger: str  # what an impostor on the host's address shows
    other: str  # another host's, which no replacement may touch


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("host-keys")
    return Keys(*(_key(folder, name) for name in ("old", "new", "stranger", "other")))


@pytest.fixture
def known(tmp_path: Path, keys: Keys) -> Path:
    """A known_hosts file as the lab writes it (names and addresses per line), with a comment and a
    marker line that must survive every edit byte for byte."""
    path = tmp_path / "known_hosts"
    path.write_text(
        "# the site's hosts\n"
        f"{OTHER},10.200.0.11 {keys.other}\n"
        f"{HOST},{ADDRESS},10.201.0.12 {keys.old}\n"
        "@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYdvd9PE3JmTn4xFuRJ6s3ONrONwHmWlYbMbDGkd3Uf\n"
    )
    return path


@dataclass
class Machine:
    """The replacement machine as the stand-ins see it: what the provisioning records of it and what
    it shows on the network (an impostor shows another key)."""

    site: FakeSite
    recorded: str | None  # the key its provisioning made, or None (a site whose provisioning cannot say)
    shows: str
    alive_old: bool = False  # the old machine still answered
    provisioned: int = 0

    @property
    def proves_host_key(self) -> bool:
        return self.recorded is not None

    def answers(self, host: str) -> bool:
        return self.alive_old

    def provision(self, host: str) -> Provisioned:
        self.site.act("provision", [host])
        self.provisioned += 1
        self.site.done()
        proven_by = "the test's provisioning record" if self.recorded else None
        return Provisioned(self.recorded, proven_by, {"uuid": "u-2", "serial": "SN-NEW"})


@dataclass
class Keyring:
    """The host's key as shown on the network (the Machine's), and the real known_hosts file."""

    site: FakeSite
    machine: Machine
    path: Path

    def offered(self, host: str) -> str:
        return self.machine.shows

    def trusted(self, host: str) -> list[str]:
        return known_hosts.host_keys(known_hosts.read(self.path), [host, ADDRESS])

    def trust_only(self, host: str, key: str, *, note: str) -> None:
        self.site.act("trust-key", [host])
        known_hosts.trust_only(self.path, host=host, names=[host, ADDRESS], key=key, note=note)
        self.site.done()


@dataclass
class Deployer:
    site: FakeSite
    fails: bool = False

    def deploy(self, host: str, version: VersionRef) -> StepOutcome:
        self.site.act("deploy", [host])
        self.site.runs[host] = version.version
        self.site.done()
        return StepOutcome(
            (f"{host}: deploy failed: unreachable",) if self.fails else (), {"event_log": "ev.json"}
        )


@dataclass
class Bench:
    site: FakeSite
    machine: Machine
    keyring: Keyring
    deployer: Deployer
    store: ReplaceStore
    timeouts: list[float] = field(default_factory=list)

    def parts(self) -> ReplaceParts:
        slurm = FakeSlurm(self.site)
        waited = self.timeouts

        class TimedSlurm(FakeSlurm):  # what the replace asked Slurm to wait
            def wait_for_jobs(self, hosts: Sequence[str], *, timeout_s: float) -> list[str]:
                waited.append(timeout_s)
                return slurm.wait_for_jobs(hosts, timeout_s=timeout_s)

        return ReplaceParts(
            probe=self.machine,
            slurm=TimedSlurm(self.site),
            door=FakeDoor(self.site),
            provisioner=self.machine,
            keys=self.keyring,
            deployer=self.deployer,
            gate=FakeGate(self.site),
            log=FakeLog(self.site),
        )

    def run(self, fingerprint: str | None = None) -> dict[str, Any]:
        request = ReplaceRequest("lab", HOST, A, fingerprint, drain_timeout_s=600.0)
        return run_replace(request, self.store, self.parts()).as_dict()

    def records(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.kind, e.detail) for e in self.site.events]


@pytest.fixture
def bench(tmp_path: Path, known: Path, keys: Keys) -> Bench:
    site = FakeSite([OTHER, HOST], serving={OTHER, HOST})
    machine = Machine(site, recorded=keys.new, shows=keys.new)
    store = ReplaceStore(SiteState.for_site("lab", home=tmp_path / "state"))
    return Bench(site, machine, Keyring(site, machine, known), Deployer(site), store)


def test_a_dead_host_is_replaced_and_known_hosts_then_trusts_only_the_proven_new_key(
    bench: Bench, known: Path, keys: Keys
) -> None:
    before = known.read_text().splitlines()
    result = bench.run()
    assert bench.site.actions == [
        f"slurm-drain {HOST}",
        f"door-drain {HOST}",
        f"provision {HOST}",
        f"trust-key {HOST}",
        f"deploy {HOST}",
        f"gate {HOST}",
        f"slurm-resume {HOST}",
        f"door-enable {HOST}",
    ]
    assert bench.timeouts[0] == 0.0  # a dead host runs nothing: its jobs are not waited for
    after = known.read_text().splitlines()
    assert [line for line in after if HOST not in line] == [line for line in before if HOST not in line]
    mine = [line for line in after if HOST in line]
    assert mine == [f"{HOST},{ADDRESS},10.201.0.12 {keys.new} aifactory-replace={result['run']} host={HOST}"]
    assert result["host_key"] == key_fingerprint(keys.new)
    assert result["old_host_keys"] == [key_fingerprint(keys.old)]
    assert result["reachable"] is False and result["system"]["serial"] == "SN-NEW"
    kinds = [kind for kind, _ in bench.records()]
    assert kinds == ["started", "drained", "provisioned", "host-key-learned", "finished"]
    assert {e.change.run for e in bench.site.events} == {result["run"]}
    assert {e.change.kind for e in bench.site.events} == {"replace"}
    assert bench.records()[0][1] == {"host": HOST, "reachable": False}
    assert bench.records()[1][1] == {"host": HOST, "reachable": False}  # counted as drained, on record
    assert bench.store.load() is None  # nothing in progress
    assert (bench.store.folder / "history" / f"{result['run']}.json").is_file()
    replaced = bench.store.replaced()[HOST]
    assert [(r["host_key"], r["old_keys"], r["system"]["serial"]) for r in replaced] == [
        (key_fingerprint(keys.new), [key_fingerprint(keys.old)], "SN-NEW")
    ]


def test_a_host_that_still_answers_is_drained_with_the_drain_timeout_and_its_stuck_jobs_requeued(
    bench: Bench,
) -> None:
    bench.machine.alive_old = True
    bench.site.jobs[HOST] = ["41"]
    bench.site.stuck_jobs = True
    result = bench.run()
    assert bench.timeouts[0] == 600.0
    assert result["requeued"] == ["41"] and bench.site.requeued == ["41"]
    assert ("jobs-requeued", {"hosts": [HOST], "jobs": ["41"], "drain_timeout_s": 600.0}) in bench.records()
    assert bench.records()[0][1]["reachable"] is True


def test_a_key_that_does_not_match_the_proven_fingerprint_is_refused_and_known_hosts_is_left_as_it_was(
    bench: Bench, known: Path, keys: Keys
) -> None:
    before = known.read_bytes()
    bench.machine.shows = keys.stranger
    with pytest.raises(ReplaceError) as refused:
        bench.run()
    assert refused.value.code == "replace-host-key-mismatch"
    assert refused.value.exit_code == ExitCode.INVALID
    assert known.read_bytes() == before
    assert not any(a.startswith(("trust-key", "deploy")) for a in bench.site.actions)
    kind, detail = bench.records()[-1]
    assert kind == "host-key-refused"
    assert detail["offered"] == key_fingerprint(keys.stranger) and detail["expected"] == key_fingerprint(
        keys.new
    )
    # The right machine answers now: the same command goes on, without provisioning it again.
    bench.machine.shows = keys.new
    result = bench.run()
    assert result["resumed"] and bench.machine.provisioned == 1
    assert known_hosts.host_keys(known_hosts.read(known), [HOST]) == [keys.new]


def test_without_a_proof_of_the_new_key_the_replace_refuses_before_it_changes_anything(
    bench: Bench, known: Path
) -> None:
    before = known.read_bytes()
    bench.machine.recorded = None  # the site's provisioning cannot say which key it gave the machine
    with pytest.raises(ReplaceError) as refused:
        bench.run()
    assert refused.value.code == "replace-no-host-key-proof"
    assert bench.site.actions == [] and bench.site.events == []
    assert bench.store.load() is None and known.read_bytes() == before


def test_the_admins_fingerprint_proves_the_key_where_provisioning_cannot(bench: Bench, keys: Keys) -> None:
    bench.machine.recorded = None
    result = bench.run(key_fingerprint(keys.new))
    assert result["host_key"] == key_fingerprint(keys.new) and result["host_key_proven_by"] == ADMIN


def test_once_the_key_is_learned_a_rerun_needs_no_fingerprint_again(bench: Bench, keys: Keys) -> None:
    bench.machine.recorded = None
    bench.deployer.fails = True
    with pytest.raises(ReplaceFailed):
        bench.run(key_fingerprint(keys.new))
    bench.deployer.fails = False
    result = bench.run()  # the admin fixed the deploy; the fingerprint was proven and used already
    assert result["resumed"] and result["host_key"] == key_fingerprint(keys.new)


def test_an_admins_fingerprint_that_is_not_the_provisioning_records_is_refused(
    bench: Bench, known: Path, keys: Keys
) -> None:
    before = known.read_bytes()
    with pytest.raises(ReplaceError) as refused:
        bench.run(key_fingerprint(keys.stranger))
    assert refused.value.code == "replace-fingerprint-conflict"
    assert known.read_bytes() == before


def test_a_failed_gate_stops_the_replacement_open_and_the_same_command_goes_on_without_a_second_deploy(
    bench: Bench,
) -> None:
    bench.site.failing[A.version] = {HOST}
    with pytest.raises(ReplaceFailed) as stopped:
        bench.run()
    assert stopped.value.exit_code == ExitCode.HOSTS_FAILED
    assert bench.records()[-1][0] == "step-failed" and bench.records()[-1][1]["step"] == "health-gate"
    journal = bench.store.load()
    assert journal is not None and journal.phase == "deployed"
    assert bench.site.slurm[HOST] == "drain"  # never back to work unhealthy
    bench.site.failing.clear()
    result = bench.run()
    assert result["resumed"] and bench.site.actions.count(f"deploy {HOST}") == 1
    assert [kind for kind, _ in bench.records()].count("finished") == 1


def test_a_failed_deploy_stops_before_the_gate(bench: Bench) -> None:
    bench.deployer.fails = True
    with pytest.raises(ReplaceFailed):
        bench.run()
    assert f"gate {HOST}" not in bench.site.actions
    assert bench.records()[-1][1]["step"] == "deploy"


def test_another_hosts_replacement_in_progress_is_refused(bench: Bench) -> None:
    bench.deployer.fails = True
    with pytest.raises(ReplaceFailed):
        bench.run()
    request = ReplaceRequest("lab", OTHER, A)
    with pytest.raises(ReplaceError) as refused:
        run_replace(request, bench.store, bench.parts())
    assert refused.value.code == "replace-in-progress"


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("step", range(8))
def test_a_replacement_killed_at_any_step_goes_on_to_the_same_end_on_the_rerun(
    bench: Bench, known: Path, keys: Keys, step: int, after: bool
) -> None:
    bench.site.kill_at, bench.site.kill_after = step, after
    with pytest.raises(Killed):
        bench.run()
    bench.site.kill_at = None
    result = bench.run()
    assert known_hosts.host_keys(known_hosts.read(known), [HOST]) == [keys.new]
    assert bench.site.slurm[HOST] == "idle" and bench.site.door[HOST] == "ready"
    assert bench.site.runs[HOST] == A.version
    assert {e.change.run for e in bench.site.events} == {result["run"]}  # one change on record
    kinds = [kind for kind, _ in bench.records()]
    assert kinds.count("started") == 1 and kinds.count("finished") == 1
    assert bench.store.load() is None and len(bench.store.replaced()[HOST]) == 1
    # A step is done again only when the kill came before it was journaled; the gate never passes
    # a host that was not deployed first.
    assert bench.site.actions.index(f"deploy {HOST}") < bench.site.actions.index(f"gate {HOST}")


def _connection_showing(*lines: str) -> Connection:
    """A Connection whose "control host" answers every command with these lines: the stand-in for
    ssh-keyscan's output (what it prints for a host is all that matters here)."""
    script = "printf '%s\\n' " + " ".join(f"'{line}'" for line in lines)
    return Connection(description="a stand-in control host", control_prefix=("sh", "-c", script, "--"))


@pytest.fixture(scope="module")
def lab_plan_copy(tmp_path_factory: pytest.TempPathFactory) -> SitePlan:
    from aifactory.plan import plan_site

    folder = tmp_path_factory.mktemp("replace-plan")
    shutil.copy(LAB_SPEC, folder / "site.yaml")
    shutil.copy(LAB_SPEC.with_name("site.alloc.json"), folder / "site.alloc.json")
    return plan_site(folder / "site.yaml").plan


def test_the_key_scanned_from_the_control_host_is_the_hosts_one_ed25519_key(
    lab_plan_copy: SitePlan, keys: Keys, tmp_path: Path
) -> None:
    address = lab_plan_copy.host(HOST).management_address
    scanned = _connection_showing(f"# {address}:22 SSH-2.0-OpenSSH_9.2", f"{address} {keys.new}")
    assert KnownHostsKeys(lab_plan_copy, scanned, tmp_path / "k").offered(HOST) == keys.new


def test_two_machines_answering_on_the_hosts_address_are_refused(
    lab_plan_copy: SitePlan, keys: Keys, tmp_path: Path
) -> None:
    address = lab_plan_copy.host(HOST).management_address
    scanned = _connection_showing(f"{address} {keys.new}", f"{address} {keys.stranger}")
    with pytest.raises(ReplaceError) as refused:
        KnownHostsKeys(lab_plan_copy, scanned, tmp_path / "k").offered(HOST)
    assert refused.value.code == "replace-host-key-ambiguous"


def test_a_host_that_shows_no_key_in_time_is_reported_silent(lab_plan_copy: SitePlan, tmp_path: Path) -> None:
    silent = _connection_showing("# nothing answered")
    keys = KnownHostsKeys(lab_plan_copy, silent, tmp_path / "k", timeout_s=0.0)
    with pytest.raises(ReplaceError) as refused:
        keys.offered(HOST)
    assert refused.value.code == "replace-host-silent"


def test_trusting_only_the_new_key_keeps_hashed_and_marker_lines_of_other_hosts(
    tmp_path: Path, keys: Keys
) -> None:
    path = tmp_path / "known_hosts"
    hashed_other = "|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg="
    path.write_text(
        f"{hashed_other} {keys.other}\n@cert-authority *.example {keys.stranger}\n"
        f"{HOST} {keys.old}\n{ADDRESS} {keys.old}\n"
    )
    dropped = known_hosts.trust_only(path, host=HOST, names=[HOST, ADDRESS], key=keys.new, note="n")
    assert dropped == [keys.old, keys.old]
    assert path.read_text().splitlines() == [
        f"{hashed_other} {keys.other}",
        f"@cert-authority *.example {keys.stranger}",
        f"{HOST} {keys.new} n",
    ]


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "spec"
    folder.mkdir()
    shutil.copy(LAB_SPEC, folder / "site.yaml")
    shutil.copy(LAB_SPEC.with_name("site.alloc.json"), folder / "site.alloc.json")
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    return folder / "site.yaml"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--format", "json"])
    return code, json.loads(capsys.readouterr().out or "{}")


def test_the_dry_run_shows_the_steps_and_changes_nothing(
    spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, shown = _cli(capsys, "replace", str(spec), HOST, "--dry-run")
    assert code == 0 and shown["status"] == "dry-run" and len(shown["steps"]) == 6
    assert not (spec.parent.parent / "state" / "lab" / "replace" / "journal.json").exists()


@pytest.mark.parametrize(
    ("argv", "code", "error"),
    [
        (["nope"], 2, "replace-unknown-host"),
        (["lab-control-001"], 1, "replace-control-host"),
        ([HOST, "--host-key-fingerprint", "MD5:aa:bb"], 1, "replace-fingerprint-format"),
        ([HOST, "--drain-timeout", "-1"], 2, "usage"),
        ([HOST], 3, "replace-no-bundle"),
    ],
    ids=["unknown-host", "control-host", "bad-fingerprint", "negative-timeout", "no-bundle"],
)
def test_cli_errors_are_one_message_with_their_exit_code(
    spec: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, error: str
) -> None:
    got, shown = _cli(capsys, "replace", str(spec), *argv)
    assert got == code and shown["error"]["code"] == error, shown


def test_the_deploy_drops_the_dead_machines_cached_facts_first(tmp_path: Path) -> None:
    """Ansible's fact cache (a day long) describes the old machine: the roles must read the new one's.
    The installer is a stand-in that records what the cache held when the deploy began."""
    from aifactory.lifecycle.replace_parts import DeployHost

    facts = tmp_path / "facts"
    facts.mkdir()
    (facts / HOST).write_text('{"ansible_machine_id": "the-dead-machine"}')
    (facts / OTHER).write_text("{}")
    seen: list[bool] = []

    class Installer:
        def install(self, hosts: Sequence[str], version: VersionRef) -> StepOutcome:
            seen.append((facts / HOST).exists())
            return StepOutcome()

    DeployHost(Installer(), facts).deploy(HOST, A)  # type: ignore[arg-type]  # the stand-in above
    assert seen == [False] and (facts / OTHER).exists()


def test_a_site_whose_hosts_do_not_run_the_imported_bundle_is_refused(
    spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an aborted upgrade the hosts run the version before the imported one: the new machine
    would get the imported bundle in full, another version than the site's. Refused, saying how on."""
    from aifactory.state import SiteState

    state = SiteState.for_site("lab")
    imported = {"site": "lab", "version": "1.1.0", "digest": "sha256:" + "b" * 64}
    record = {**imported, "root": str(state.path("bundle", "1.1.0")), "imported_at": "t", "signer": "s"}
    (state.subdir("bundle") / "current.json").write_text(json.dumps(record))
    running = {"version": "1.0.0", "digest": "sha256:" + "a" * 64}
    (state.subdir("upgrade") / "running.json").write_text(json.dumps(running))
    code, shown = _cli(capsys, "replace", str(spec), HOST)
    assert code == 1 and shown["error"]["code"] == "replace-version-mismatch", shown
    assert "1.0.0" in shown["error"]["message"] and "1.1.0" in shown["error"]["message"]
    assert not (state.path("replace", "journal.json")).exists()
