"""Issue 19: what an attacker with root on one node would try on its decision log. Each attack makes
`aifactory audit verify-log` exit 1 and the audit's AU-9 (integrity) or AU-11 (retention) fail, with a
message that names the record (file, line, seq)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aifactory.audit.evidence.logs import decision_log_evidence
from aifactory.audit.model import Evidence
from aifactory.chain import ChainWriter, canonical_bytes, record_hash, segments_of
from aifactory.cli.main import main
from aifactory.headcopies import collect_heads, collected_dir, merge_incoming
from aifactory.state import SiteState
from aifactory.trust import decisionlog
from aifactory.trust.decisionlog import DecisionLog, heads_path_for, log_key_dir, verify_log

HOST = "lab-cpu-001"


def _decision(i: int, *, when: datetime | None = None) -> dict[str, object]:
    moment = when or datetime.now(UTC)
    return {
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "host": HOST,
        "decision_id": f"d{i:04d}",
        "tenant": "health" if i % 2 else "research",
        "action": "infer",
        "resource": "model/vitals-mlp",
        "allow": bool(i % 2),
        "reasons": [] if i % 2 else ["no-grant"],
    }


@pytest.fixture()
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SiteState:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    return SiteState.for_site("logattack")


def _write(path: Path, count: int, *, start: int = 0, rotate_bytes: int | None = None) -> None:
    log = DecisionLog(path, sign_every=4, sign_interval=3600, rotate_bytes=rotate_bytes)
    for i in range(start, start + count):
        log.record(_decision(i))
    log.close()


def _collect(state: SiteState, path: Path) -> Path:
    """What deploy and audit do: pull the node's heads (and its log key) into the state folder."""
    collect_heads(state, HOST, heads_path_for(path), signers=log_key_dir(path) / "allowed_signers")
    return collected_dir(state, HOST)


def _node_log(state: SiteState, count: int = 12) -> Path:
    path = state.subdir("runtime") / "decisions.jsonl"
    _write(path, count)
    _collect(state, path)
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _verify_log_cli(path: Path, state: SiteState, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    collected = collected_dir(state, HOST)
    args = ["audit", "verify-log", str(path), "--trust", str(collected / "allowed_signers")]
    if (collected / "decisions.heads.jsonl").exists():
        args += ["--collected", str(collected / "decisions.heads.jsonl")]
    capsys.readouterr()
    code = main([*args, *extra])
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    assert "Traceback" not in out.err
    return out.out


def _failed(evidence: Evidence, control: str) -> str:
    rules = {rule.id: rule.status for _, rule in evidence.rules}
    suffix = {"AU-9": "chain", "AU-11": "retention"}[control]
    assert rules[f"logs.decision_log_{suffix}"] == "fail", rules
    messages = [f.message for f in evidence.findings if control in f.controls]
    assert messages, evidence.findings
    return " ".join(messages)


def test_the_untouched_log_verifies(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state)
    collected = collected_dir(state, HOST)
    code = main(
        [
            "audit",
            "verify-log",
            str(path),
            "--trust",
            str(collected / "allowed_signers"),
            "--collected",
            str(collected / "decisions.heads.jsonl"),
        ]
    )
    assert code == 0, capsys.readouterr().out
    assert decision_log_evidence(state).status == "pass"


def test_heads_deleted(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = state.subdir("runtime") / "decisions.jsonl"
    _write(path, 12)  # never collected
    shutil.copy(log_key_dir(path) / "allowed_signers", state.path("trust-from-elsewhere"))
    heads_path_for(path).unlink()
    out = main(["audit", "verify-log", str(path), "--trust", str(state.path("trust-from-elsewhere"))])
    assert out == 1
    text = capsys.readouterr().out
    assert "no signed head covers this log: records seq 0..11" in text
    assert "records seq 0..11" in _failed(decision_log_evidence(state), "AU-9")


def test_heads_stop_short_of_the_records(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state, 4)
    heads = collected_dir(state, HOST) / "decisions.heads.jsonl"
    heads.unlink()  # nothing collected yet ...
    appender = DecisionLog(path, sign_every=1000, sign_interval=3600)
    for i in range(4, 12):
        appender.record(_decision(i))
    heads_path_for(path).write_bytes(_lines(heads_path_for(path))[0])  # ... and later heads cut
    text = _verify_log_cli(path, state, capsys)
    assert "records seq 4..11 run 8 past the last signed head (seq 3)" in text
    assert "seq 4..11" in _failed(decision_log_evidence(state), "AU-9")


def test_tenant_dropped_chain_recomputed_heads_re_signed(
    state: SiteState, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root on the node has its key: drop one tenant's records, re-chain and re-sign every head. Only
    the heads the control host collected before can tell."""
    path = _node_log(state)
    kept = [json.loads(line) for line in _lines(path)]
    kept = [r for r in kept if r["tenant"] != "research"]
    path.unlink()
    heads_path_for(path).unlink()
    rewriter = DecisionLog(path, sign_every=2, sign_interval=3600)  # same key dir: the node's key
    for record in kept:
        rewriter.record({k: v for k, v in record.items() if k not in ("seq", "prev", "hash", "canon")})
    rewriter.close()
    assert verify_log(path).ok  # consistent on the node itself ...
    text = _verify_log_cli(path, state, capsys)  # ... not against what was collected
    assert "the signed head at seq 3" in text and "does not match the log's record seq 3" in text
    assert "rewritten at or before seq 3" in _failed(decision_log_evidence(state), "AU-9")


def test_log_and_heads_truncated_together(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state)  # 12 records, heads at 3, 7, 11 collected
    path.write_bytes(b"".join(_lines(path)[:6]))
    node_heads = heads_path_for(path)
    node_heads.write_bytes(_lines(node_heads)[0])  # the node's own heads stop at seq 3: consistent
    assert verify_log(path).ok
    text = _verify_log_cli(path, state, capsys)
    assert "the signed head at seq 11" in text and "records seq 6..11 are gone" in text
    assert "records seq 6..7 are gone" in _failed(decision_log_evidence(state), "AU-9")


def test_a_later_collection_does_not_forget_what_was_collected(state: SiteState) -> None:
    path = _node_log(state)
    path.write_bytes(b"".join(_lines(path)[:6]))
    node_heads = heads_path_for(path)
    node_heads.write_bytes(_lines(node_heads)[0])
    result = collect_heads(state, HOST, node_heads, signers=log_key_dir(path) / "allowed_signers")
    assert result.added == 0 and result.missing_on_node == 2
    assert not verify_log(
        path,
        allowed_signers=collected_dir(state, HOST) / "allowed_signers",
        collected=[collected_dir(state, HOST) / "decisions.heads.jsonl"],
    ).ok


def test_duplicate_key(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state)
    lines = _lines(path)
    lines[4] = lines[4].replace(b'"allow":false', b'"allow":false,"allow":true')
    path.write_bytes(b"".join(lines))
    text = _verify_log_cli(path, state, capsys)
    assert "decisions.jsonl line 5: duplicate key 'allow'" in text
    assert "line 5: duplicate key 'allow'" in _failed(decision_log_evidence(state), "AU-9")


def test_line_not_in_canonical_form(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state)
    lines = _lines(path)
    lines[2] = json.dumps(json.loads(lines[2]), sort_keys=True).encode() + b"\n"  # same values, spaces
    path.write_bytes(b"".join(lines))
    text = _verify_log_cli(path, state, capsys)
    assert "line 3 (seq 2): the line is not its record's canonical form" in text


def test_undecodable_bytes(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state)
    lines = _lines(path)
    lines[6] = lines[6].replace(b"research", b"r\xffsearch")
    path.write_bytes(b"".join(lines))
    text = _verify_log_cli(path, state, capsys)
    assert "decisions.jsonl line 7: not UTF-8 (byte 0xff at column" in text
    assert "line 7: not UTF-8" in _failed(decision_log_evidence(state), "AU-9")


def test_edit_with_the_hash_recomputed(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _node_log(state)
    lines = _lines(path)
    record = json.loads(lines[5])
    record["allow"] = not record["allow"]
    record["hash"] = record_hash(record)
    lines[5] = canonical_bytes(record) + b"\n"
    path.write_bytes(b"".join(lines))
    text = _verify_log_cli(path, state, capsys)
    assert "line 7 (seq 6): does not link to the previous record" in text


# --- rotation and retention -----------------------------------------------------------------------------


def _rotated(state: SiteState, count: int = 40) -> Path:
    path = state.subdir("runtime") / "decisions.jsonl"
    _write(path, count, rotate_bytes=2000)
    _collect(state, path)
    return path


def test_a_rotated_log_verifies_as_one_chain(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rotated(state)
    files = segments_of(path)
    assert len(files) >= 4, files
    report = verify_log(path, allowed_signers=collected_dir(state, HOST) / "allowed_signers")
    assert report.ok, report.render()
    assert report.records == 40 and report.segments == [f.name for f in files]
    first = json.loads(_lines(files[1])[0])
    last_before = json.loads(_lines(files[0])[-1])
    assert first["prev"] == last_before["hash"] and first["seq"] == last_before["seq"] + 1
    capsys.readouterr()
    assert main(["audit", "verify-log", str(path)]) == 0
    assert f"40 records in {len(files)} files" in capsys.readouterr().out


def test_two_writers_keep_a_rotating_log_one_chain(state: SiteState) -> None:
    path = state.subdir("runtime") / "decisions.jsonl"
    server = DecisionLog(path, sign_every=3, sign_interval=3600, rotate_bytes=1500)
    launcher = DecisionLog(path, sign_every=3, sign_interval=3600, rotate_bytes=1500)
    for i in range(30):
        (server if i % 2 else launcher).record(_decision(i))
    server.close()
    launcher.close()
    report = verify_log(path)
    assert report.ok and report.records == 30 and len(report.segments) > 3, report.render()


def test_the_middle_segment_deleted(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rotated(state)
    files = segments_of(path)
    middle = files[len(files) // 2]
    gone = [json.loads(line)["seq"] for line in _lines(middle)]
    middle.unlink()
    text = _verify_log_cli(path, state, capsys)
    assert f"expected seq {gone[0]}, found {gone[-1] + 1}" in text
    assert f"records seq {gone[0]}..{gone[-1]} are missing" in text
    evidence = decision_log_evidence(state)
    assert f"expected seq {gone[0]}" in _failed(evidence, "AU-9")
    assert f"records seq {gone[0]}..{gone[-1]} are missing" in _failed(evidence, "AU-11")


def test_the_oldest_segment_deleted_while_young(state: SiteState, capsys: pytest.CaptureFixture[str]) -> None:
    path = _rotated(state)
    oldest = segments_of(path)[0]
    gone = [json.loads(line)["seq"] for line in _lines(oldest)]
    oldest.unlink()
    text = _verify_log_cli(path, state, capsys)
    assert f"records seq 0..{gone[-1]} are missing before" in text
    assert "within the retention of 183 days" in text
    assert f"records seq 0..{gone[-1]} are missing" in _failed(decision_log_evidence(state), "AU-11")


def test_a_segment_older_than_the_retention_may_be_archived(state: SiteState) -> None:
    path = state.subdir("runtime") / "decisions.jsonl"
    old = datetime.now(UTC) - timedelta(days=200)
    log = DecisionLog(path, sign_every=4, sign_interval=3600, rotate_bytes=2000)
    for i in range(40):
        log.record(_decision(i, when=old + timedelta(seconds=i)))
    log.close()
    segments_of(path)[0].unlink()  # archived off the node: older than 183 days
    trust = log_key_dir(path) / "allowed_signers"
    assert verify_log(path, allowed_signers=trust).ok
    report = verify_log(path, allowed_signers=trust, retention_days=365)  # a site that keeps a year
    assert not report.ok and report.retention_problems and not report.problems
    assert decision_log_evidence(state).status == "pass"
    assert _failed(decision_log_evidence(state, retention_days=365), "AU-11")


def test_the_disk_running_low_is_reported(state: SiteState) -> None:
    path = state.subdir("runtime") / "decisions.jsonl"
    # Thresholds above any real free space: the states a nearly full disk would give.
    log = DecisionLog(path, disk_warn_free=0.9999999, disk_shed_free=0.0)
    assert log.disk_state == "low" and 0 < log.disk_free_fraction < 1
    log.close()
    log = DecisionLog(path, disk_warn_free=0.9999999, disk_shed_free=0.9999999)
    assert log.disk_state == "critical"
    log.close()


def test_shedding_ends_once_space_is_back_without_a_write(
    state: SiteState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server sheds while the disk is nearly full and writes nothing for the requests it sheds: the
    log must notice freed space on its own, not only after a record it will never get."""
    monkeypatch.setattr(decisionlog, "DISK_CHECK_INTERVAL", 0.0)  # every read looks at the disk
    log = DecisionLog(
        state.subdir("runtime") / "decisions.jsonl", disk_warn_free=0.9999999, disk_shed_free=0.9999999
    )
    try:
        assert log.disk_state == "critical"
        written = log.records_written
        log.disk_warn_free = log.disk_shed_free = 0.0  # as if the disk had been cleared
        assert log.disk_state == "ok"
        assert log.records_written == written == 0
    finally:
        log.close()


def test_deploy_merges_what_the_role_fetched_and_keeps_the_first_key(state: SiteState) -> None:
    path = state.subdir("runtime") / "decisions.jsonl"
    _write(path, 8)
    incoming = state.path("heads", HOST, "incoming")
    incoming.mkdir(parents=True)
    shutil.copy(heads_path_for(path), incoming / "decisions.heads.jsonl")
    shutil.copy(log_key_dir(path) / "allowed_signers", incoming / "allowed_signers")
    (result,) = merge_incoming(state)
    collected = collected_dir(state, HOST)
    assert result.added == 2 and not result.problems
    assert (collected / "decisions.heads.jsonl").read_bytes() == heads_path_for(path).read_bytes()
    first_key = (collected / "allowed_signers").read_bytes()
    # The node's root replaces the log key: the next collection reports it and keeps the first key.
    (incoming / "allowed_signers").write_text(first_key.decode().replace("decision-log@", "someone@"))
    (result,) = merge_incoming(state)
    assert result.added == 0 and "the log key of lab-cpu-001 changed" in result.problems[0]
    assert (collected / "allowed_signers").read_bytes() == first_key


def test_a_control_host_log_naming_the_same_host_is_not_compared(state: SiteState) -> None:
    """The scheduler's decisions on the control host name the control host, whose own node log was
    collected too: two logs, two keys; each is checked with its own."""
    _node_log(state)  # collected from HOST
    other = state.path("elsewhere", "decisions.jsonl")
    other.parent.mkdir()
    _write(other, 6)  # another log (another key) whose records name HOST as well
    evidence = decision_log_evidence(state, [other])
    assert evidence.status == "pass", evidence.findings
    warnings = [w for log in evidence.detail["logs"] for w in log["verifier"].get("warnings", [])]
    assert any("not compared with the heads collected from lab-cpu-001" in w for w in warnings)


def test_a_node_re_keyed_after_collection(state: SiteState) -> None:
    """Root on the node replaces its log key and re-signs: the heads it then writes to the outbox are
    collected, and do not verify against the key collected first."""
    path = _node_log(state)
    shutil.rmtree(log_key_dir(path))
    heads_path_for(path).unlink()
    forger = DecisionLog(path, sign_every=2, sign_interval=3600)  # a new key
    forger.record(_decision(99))
    forger.close()
    result = collect_heads(state, HOST, heads_path_for(path), signers=log_key_dir(path) / "allowed_signers")
    assert "the log key of lab-cpu-001 changed" in result.problems[0]
    text = _failed(decision_log_evidence(state), "AU-9")
    assert "decisions.heads.jsonl line 4: signed head does not verify" in text


def test_the_issued_tokens_log_beside_is_checked_as_a_plain_chain(state: SiteState) -> None:
    _node_log(state)
    with ChainWriter(state.path("runtime", "issued-tokens.jsonl")) as issued:  # what `token issue` keeps
        issued.append({"event": "issued", "token_id": "t1"})
    evidence = decision_log_evidence(state)
    assert evidence.status == "pass", evidence.findings
    assert len(evidence.logs) == 2
