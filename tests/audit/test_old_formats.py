"""Logs, signed heads and reports written before canonical JSON became RFC 8785 (the `canon` field)
still verify: tests/fixtures/logformat-v0 was written by main at ae8eaf5 (see generate.py there)."""

from __future__ import annotations

import shutil
from pathlib import Path

from aifactory.audit.verify import verify_report
from aifactory.chain import verify_chain
from aifactory.trust.decisionlog import verify_log

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


def test_an_old_log_goes_on_in_the_new_form(tmp_path: Path) -> None:
    """A node upgraded in place appends RFC 8785 records (and heads) after the old ones: one chain."""
    from aifactory.trust.decisionlog import DecisionLog, log_key_dir

    folder = _copy(tmp_path)
    log = folder / "decisions.jsonl"
    writer = DecisionLog(log, sign_every=2, sign_interval=3600)  # a new key: the old one was not kept
    for i in range(3):
        writer.record({"decision_id": f"n{i}", "tenant": "santé", "allow": True, "score": 0.5})
    writer.close()
    trust = folder / "both.allowed_signers"
    trust.write_text(
        (folder / "decisions.allowed_signers").read_text()
        + (log_key_dir(log) / "allowed_signers").read_text()
    )
    report = verify_log(log, folder / "decisions.heads.jsonl", trust)
    assert report.ok, report.render()
    assert report.records == 13 and report.last_signed_seq == 12
    lines = log.read_text().splitlines()
    assert '"canon"' not in lines[9] and '"canon":"rfc8785"' in lines[10] and '"score":0.5' in lines[10]
