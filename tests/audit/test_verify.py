"""`aifactory audit verify`: passes on a fresh report, fails when any byte of any file changes, and
the stock `ssh-keygen -Y verify` accepts the signature. Two runs with one --timestamp are identical."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from auditfixtures import TIMESTAMP

from aifactory import signing
from aifactory.audit import ReportOptions, WrittenReport, produce_report
from aifactory.audit.report import REPORT_FILES
from aifactory.audit.sign import ALLOWED_SIGNERS, MANIFEST, NAMESPACE, SIGNATURE
from aifactory.audit.verify import verify_report
from aifactory.cli.main import main
from aifactory.plan import plan_site
from aifactory.state import SiteState


def _site_trust(site: str) -> Path:
    """The site audit key's allowed_signers, as the control host keeps it (not the report's copy)."""
    return SiteState.for_site(site).path("audit", ALLOWED_SIGNERS)


SIGNED_FOLDER_FILES = (*REPORT_FILES, MANIFEST, SIGNATURE, ALLOWED_SIGNERS)


def _copy(report: WrittenReport, target: Path) -> Path:
    shutil.copytree(report.folder, target)
    return target


def test_fresh_report_verifies(failing_report: WrittenReport) -> None:
    result = verify_report(failing_report.folder, trust=_site_trust("labfail"))
    assert result.ok, result.problems
    assert result.signer == "audit@labfail"
    assert sorted(result.files) == sorted(REPORT_FILES)


def test_ssh_keygen_accepts_the_signature(failing_report: WrittenReport) -> None:
    folder = failing_report.folder
    done = signing.ssh_keygen_verify(
        folder / MANIFEST,
        folder / SIGNATURE,
        allowed_signers=folder / ALLOWED_SIGNERS,
        identity="audit@labfail",
        namespace=NAMESPACE,
    )
    assert done.returncode == 0, done.stderr
    sums = subprocess.run(["sha256sum", "--check", "--quiet", MANIFEST], cwd=folder, check=False)
    assert sums.returncode == 0


@pytest.mark.parametrize("name", SIGNED_FOLDER_FILES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_changed_byte_fails(failing_report: WrittenReport, tmp_path: Path, name: str, where: str) -> None:
    folder = _copy(failing_report, tmp_path / "copy")
    path = folder / name
    data = bytearray(path.read_bytes())
    index = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    result = verify_report(folder, trust=_site_trust("labfail"))
    assert not result.ok
    assert main(["audit", "verify", str(folder), "--trust", str(_site_trust("labfail"))]) == 1


def test_a_report_re_signed_with_another_key_fails_against_the_real_trust(
    failing_report: WrittenReport, failing_site: Path, tmp_path: Path
) -> None:
    keys = signing.generate_keypair(tmp_path / "keys", identity="mallory", namespaces=NAMESPACE)
    forged = produce_report(
        plan_site(failing_site, write_lock=False),
        tmp_path / "forged",
        ReportOptions(timestamp=TIMESTAMP, key=keys.private),
    )
    assert verify_report(forged.folder, trust_check=False).ok  # self-consistent ...
    trusted = _site_trust("labfail")
    result = verify_report(forged.folder, trust=trusted)  # ... but not by the key the auditor trusts
    assert not result.ok and "not trusted" in " ".join(result.problems)


def test_without_trust_the_signer_is_not_checked_and_verify_fails(
    failing_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = signing.generate_keypair(tmp_path / "keys", identity="mallory", namespaces=NAMESPACE)
    forged = produce_report(
        plan_site(failing_site, write_lock=False),
        tmp_path / "forged",
        ReportOptions(timestamp=TIMESTAMP, key=keys.private),
    )
    capsys.readouterr()
    assert main(["audit", "verify", str(forged.folder)]) == 1
    assert "the signer was not checked: no --trust was given" in capsys.readouterr().out
    assert main(["audit", "verify", str(forged.folder), "--no-trust-check"]) == 0
    assert "signer not checked" in capsys.readouterr().out
    assert main(["audit", "verify", str(forged.folder), "--trust", str(_site_trust("labfail"))]) == 1


@pytest.mark.parametrize("extra", ["index.html", "report.html.orig", ".hidden", "folder/"])
def test_a_file_not_listed_in_sha256sums_fails(
    failing_report: WrittenReport, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str
) -> None:
    folder = _copy(failing_report, tmp_path / "copy")
    if extra.endswith("/"):
        (folder / extra).mkdir()
    else:
        (folder / extra).write_text("<script>fetch('https://example.invalid/')</script>\n")
    result = verify_report(folder, trust=_site_trust("labfail"))
    name = extra.rstrip("/")
    assert f"{name} is in the report folder but not listed in SHA256SUMS" in result.problems
    capsys.readouterr()
    assert main(["audit", "verify", str(folder), "--trust", str(_site_trust("labfail"))]) == 1
    assert f"{name} is in the report folder but not listed" in capsys.readouterr().out


def test_same_timestamp_same_bytes(failing_site: Path, failing_report: WrittenReport, tmp_path: Path) -> None:
    again = produce_report(
        plan_site(failing_site, write_lock=False), tmp_path / "again", ReportOptions(timestamp=TIMESTAMP)
    )
    for name in SIGNED_FOLDER_FILES:
        assert (again.folder / name).read_bytes() == (failing_report.folder / name).read_bytes(), name
    later = produce_report(
        plan_site(failing_site, write_lock=False),
        tmp_path / "later",
        ReportOptions(timestamp="2026-11-23T09:00:00Z"),
    )
    assert (later.folder / "report.json").read_bytes() != (failing_report.folder / "report.json").read_bytes()


def test_a_cited_log_rewritten_after_the_report_fails(tmp_path: Path) -> None:
    from auditfixtures import failing_spec

    from aifactory.state import SiteState

    spec = failing_spec(tmp_path / "spec", name="labrewrite")
    state = SiteState.for_site("labrewrite")
    for command in ("plan", "deploy", "up"):
        state.record(command=command, result="ok")
    written = produce_report(
        plan_site(spec, write_lock=False), tmp_path / "report", ReportOptions(timestamp=TIMESTAMP)
    )
    assert [log.kind for log in written.report.logs] == ["operator-log"]
    trust = _site_trust("labrewrite")
    assert verify_report(written.folder, trust=trust).ok
    state.record(command="later", result="ok")  # growing the log is fine
    assert verify_report(written.folder, trust=trust).ok
    lines = state.operator_log.read_text().splitlines(keepends=True)
    state.operator_log.write_text("".join(lines[:2]))  # cutting it is not
    result = verify_report(written.folder, trust=trust)
    assert not result.ok and "rewritten or cut" in " ".join(result.problems)


def test_bad_timestamp_is_a_usage_error(
    failing_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "report", str(failing_site), "-o", str(tmp_path / "r"), "--timestamp", "yesterday"])
    assert code == 2
    assert "error[usage]" in capsys.readouterr().err


def test_the_trust_file_must_grant_the_key_to_the_signer_the_report_names(
    failing_report: WrittenReport, tmp_path: Path
) -> None:
    _identity, rest = (failing_report.folder / ALLOWED_SIGNERS).read_text().split(" ", 1)
    trust = tmp_path / "trust"
    trust.write_text(f"someone@else {rest}")  # the right key, listed for another signer
    result = verify_report(failing_report.folder, trust=trust)
    assert not result.ok and "for signer 'audit@labfail'" in " ".join(result.problems)
    trust.write_text(f"audit@* {rest}")
    assert verify_report(failing_report.folder, trust=trust).ok
