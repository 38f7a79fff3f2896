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
