"""Logs, signed heads and reports written before canonical JSON became RFC 8785 (the `canon` field)
still verify: tests/fixtures/logformat-v0 was written by main at ae8eaf5 (see generate.py there)."""

from __future__ import annotations

import shutil
from pathlib import Path

from aifactory.audit.verify import verify_report
from aifactory.chain import verify_chain
from aifactory.runtime.decisionlog import verify_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "logformat-v0"


def _copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES, tmp_path / "v0"))


def test_old_decision_log_and_heads_verify(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    report = verify_log(
        folder / "decisions.jsonl",
        folder / "decisions.heads.jsonl",
        folder / "decisions.allowed_signers",
    )
    assert report.ok, report.render()
    assert report.records == 10 and report.last_signed_seq == 9


def test_old_decision_log_edited_still_fails(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    log = folder / "decisions.jsonl"
    log.write_text(log.read_text().replace('"decision_id":"d0003"', '"decision_id":"d0033"'))
    report = verify_log(log, folder / "decisions.heads.jsonl", folder / "decisions.allowed_signers")
    assert not report.ok


def test_old_operator_log_verifies(tmp_path: Path) -> None:
    report = verify_chain(_copy(tmp_path) / "operator.log.jsonl")
    assert report.ok and report.records == 3, report.problems


def test_old_report_verifies_against_its_signer(tmp_path: Path) -> None:
    folder = _copy(tmp_path) / "report"
    result = verify_report(folder, trust=FIXTURES / "report" / "allowed_signers")
    assert result.ok, result.problems
    assert result.signer == "audit@fixture"
