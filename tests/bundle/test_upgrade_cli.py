"""`aifactory upgrade` before it touches a host: the bundle is verified (a tampered one is refused and
nothing changes), the version change and the batches are shown, `--dry-run` stops there; the command
line is checked. Small sealed bundles for the lab's site name (the real upgrade is the lab test's,
tests/pipeline/test_upgrade_lab.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aifactory.bundle import current_import, import_bundle
from aifactory.cli.main import main
from aifactory.durable import atomic_write
from aifactory.lifecycle.journal import JournalStore, VersionRef
from aifactory.plan import plan_site
from aifactory.state import SiteState

from .conftest import LAB_SITE, REPO, Signer, SmallBundle
from .test_tamper import PAYLOAD, flip_byte_in_place


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_bundle: SmallBundle, signer: Signer) -> Path:
    """The lab spec (a copy) with bundle 1 imported as the version it runs."""
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("AIFACTORY_BUNDLES_HOME", str(tmp_path / "bundles"))
    spec = tmp_path / "spec" / "site.yaml"
    spec.parent.mkdir()
    shutil.copy(REPO / LAB_SITE, spec)
    shutil.copy((REPO / LAB_SITE).with_name("site.alloc.json"), spec.with_name("site.alloc.json"))
    name = plan_site(spec, write_lock=False).plan.name
    import_bundle(small_bundle(version="1", site=name), trust=signer.allowed_signers, site_state=_state(name))
    return spec


def _state(name: str = "lab") -> SiteState:
    return SiteState.for_site(name)


def _upgrade(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["upgrade", *argv])
    return code, capsys.readouterr().out


def test_a_dry_run_shows_the_version_change_and_the_batches_and_changes_nothing(
    site: Path, small_bundle: SmallBundle, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = small_bundle(version="2", site="lab")
    trust = str(signer.allowed_signers)
    code, out = _upgrade(
        capsys, str(site), "--bundle", str(bundle), "--trust", trust, "--dry-run", "--format", "json"
    )
    assert code == 0, out
    shown = json.loads(out)
    assert shown["status"] == "dry-run"
    assert (shown["change"]["from"]["version"], shown["change"]["to"]["version"]) == ("1", "2")
    plan = plan_site(site, write_lock=False).plan
    assert shown["batches"][0] == [plan.control_host]  # slurmctld's host first
    assert sorted(h for b in shown["batches"] for h in b) == sorted(h.name for h in plan.hosts)
    assert not (_state().root / "upgrade" / "journal.json").exists()
    imported = current_import(_state())
    assert imported is not None and imported.version == "1"  # not imported by a dry run
    code, out = _upgrade(
        capsys, str(site), "--bundle", str(bundle), "--trust", trust, "--dry-run", "--batch", "50%"
    )
    assert code == 0 and out.startswith("upgrade: 1 -> 2 (bundle sha256:")
    assert "plan: previous plan not available" in out  # bundle 1's plan.json is not a site plan
    assert "BATCH  HOST" in out


def test_a_tampered_bundle_is_refused_before_anything_changes(
    site: Path, small_bundle: SmallBundle, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = flip_byte_in_place(small_bundle(version="2", site="lab"), PAYLOAD)
    argv = [str(site), "--bundle", str(bundle), "--trust", str(signer.allowed_signers), "--format", "json"]
    code, out = _upgrade(capsys, *argv)
    assert code == 1
    assert json.loads(out)["error"]["code"] == "hash-mismatch"
    assert not (_state().root / "upgrade" / "journal.json").exists()
    imported = current_import(_state())
    assert imported is not None and imported.version == "1"


def test_the_same_version_again_is_nothing_to_do(
    site: Path, small_bundle: SmallBundle, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = small_bundle(version="1", site="lab")
    code, out = _upgrade(capsys, str(site), "--bundle", str(bundle), "--trust", str(signer.allowed_signers))
    assert (code, out.strip()) == (0, "site already runs 1")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "needs --bundle FILE and --trust"),
        (["--abort", "--bundle", "b.tar"], "--abort takes no --bundle"),
        (["--bundle", "b.tar", "--trust", "t", "--batch", "0"], "not a number of hosts or a percentage"),
        (["--bundle", "b.tar", "--trust", "t", "--drain-timeout", "-1"], "cannot be negative"),
    ],
)
def test_a_wrong_command_line_is_refused_with_exit_2(
    site: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code = main(["upgrade", str(site), *argv])
    assert code == 2 and expected in capsys.readouterr().err


def test_abort_with_no_upgrade_in_progress_says_so(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["upgrade", str(site), "--abort", "--format", "json"])
    assert code == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "upgrade-nothing-to-abort"


def test_after_an_abort_the_next_upgrade_starts_from_the_version_the_hosts_run(
    site: Path, small_bundle: SmallBundle, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    imported_one = current_import(_state())
    assert imported_one is not None
    import_bundle(small_bundle(version="2", site="lab"), trust=signer.allowed_signers, site_state=_state())
    store = JournalStore.for_state(_state())  # as an aborted upgrade to 2 leaves it: the hosts on 1
    atomic_write(
        store.folder / "running.json", json.dumps({"version": "1", "digest": imported_one.digest}).encode()
    )
    assert store.running() == VersionRef("1", imported_one.digest)
    bundle = small_bundle(version="3", site="lab")
    argv = [
        str(site),
        "--bundle",
        str(bundle),
        "--trust",
        str(signer.allowed_signers),
        "--dry-run",
        "--format",
        "json",
    ]
    code, out = _upgrade(capsys, *argv)
    assert code == 0 and json.loads(out)["change"]["from"] == {"version": "1", "digest": imported_one.digest}


def test_rollback_without_an_activation_record_is_refused_with_exit_1_and_changes_nothing(
    site: Path,
    small_bundle: SmallBundle,
    signer: Signer,
    admin: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    key, trust = admin
    import_bundle(small_bundle(version="2", site="lab"), trust=trust, site_state=_state())
    log_before = _state().operator_log.read_bytes()
    argv = ["rollback", str(site), "--to", "1", "--trust", str(trust), "--format", "json"]
    assert main(argv) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "activation-missing" and "version 1 for site lab" in error["message"]
    imported = current_import(_state())
    assert imported is not None and imported.version == "2"
    assert not (_state().root / "upgrade" / "journal.json").exists()
    assert _state().operator_log.read_bytes() == log_before
    # Signed, the same command's dry run shows the change, the record, and Slurm's controller last.
    sign = ["activation", "authorize", str(site), "--to", "1", "--reason", "INC-42", "--key", str(key)]
    assert main([*sign, "--trust", str(trust)]) == 0
    capsys.readouterr()
    assert main(["rollback", str(site), "--to", "1", "--trust", str(trust), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rollback: 2 -> 1 (bundle sha256:")
    assert "authorized: version 1 authorized for site lab by admin@tamperlab.example" in out
    plan = plan_site(site, write_lock=False).plan
    last_row = [line for line in out.splitlines() if line[:1].isdigit()][-1].split()
    assert last_row[1:] == [plan.control_host, "slurmctld"]
    imported = current_import(_state())
    assert imported is not None and imported.version == "2"  # a dry run changes nothing


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "needs --to VERSION and --trust"),
        (["--abort", "--to", "1"], "--abort takes no --to"),
        (["--to", "1", "--trust", "t", "--batch", "0%"], "not a number of hosts or a percentage"),
    ],
)
def test_a_wrong_rollback_command_line_is_refused_with_exit_2(
    site: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code = main(["rollback", str(site), *argv])
    assert code == 2 and expected in capsys.readouterr().err


def test_rollback_abort_with_nothing_in_progress_says_so(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rollback", str(site), "--abort", "--format", "json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "upgrade-nothing-to-abort" and "no rollback is in progress" in error["message"]
