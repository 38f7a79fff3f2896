"""The decision log: durable, chained, signed heads; every kind of tampering is seen by verify_log."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from waiting import scaled, wait_for

from aifactory.chain import canonical_json, record_hash
from aifactory.signing import ssh_keygen_verify
from aifactory.trust.decisionlog import DecisionLog, heads_path_for, log_key_dir, verify_log


def _decision(i: int) -> dict[str, object]:
    return {
        "decision_id": f"d{i:04d}",
        "tenant": "health" if i % 2 else "research",
        "action": "infer",
        "resource": "model/vitals-mlp",
        "allow": bool(i % 2),
        "reasons": [] if i % 2 else ["no-grant"],
    }


@pytest.fixture()
def written_log(tmp_path: Path) -> Path:
    """12 records from 4 threads, signed every 5 records (so heads at 5, 10 and the final one at 12)."""
    path = tmp_path / "decisions.jsonl"
    decisions = DecisionLog(path, sign_every=5, sign_interval=60)
    threads = [
        threading.Thread(target=lambda k=k: [decisions.record(_decision(k * 3 + j)) for j in range(3)])
        for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decisions.close()
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_log_verifies_and_every_head_is_signed(written_log: Path) -> None:
    report = verify_log(written_log)
    assert report.ok, report.render()
    assert report.records == 12 and report.last_signed_seq == 11 and report.unsigned_tail == 0
    assert report.signed_heads >= 3  # every 5 records at most, plus the final head at close
    assert {json.loads(line)["decision_id"] for line in _lines(written_log)} == {
        f"d{i:04d}" for i in range(12)
    }
    assert oct(written_log.stat().st_mode & 0o777) == "0o600"


def test_signed_heads_verify_with_ssh_keygen(tmp_path: Path, written_log: Path) -> None:
    head = json.loads(_lines(heads_path_for(written_log))[-1])
    signature = head.pop("signature")
    (tmp_path / "head").write_text(canonical_json(head))
    (tmp_path / "head.sig").write_text(signature)
    identity = (log_key_dir(written_log) / "allowed_signers").read_text().split()[0]
    result = ssh_keygen_verify(
        tmp_path / "head",
        tmp_path / "head.sig",
        allowed_signers=log_key_dir(written_log) / "allowed_signers",
        identity=identity,
        namespace="aifactory-log",
    )
    assert result.returncode == 0, result.stderr


def _tamper(path: Path, how: str) -> None:
    lines = _lines(path)
    if how == "edit":
        record = json.loads(lines[3])
        record["allow"] = not record["allow"]
        lines[3] = canonical_json(record) + "\n"
    elif how == "delete":
        del lines[4]
    elif how == "insert":
        lines.insert(6, lines[6])
    elif how == "reorder":
        lines[2], lines[7] = lines[7], lines[2]
    elif how == "truncate":
        lines = lines[:8]
    elif how == "rewrite-chain":  # edit and recompute every later hash: only the signed heads catch it
        records = [json.loads(line) for line in lines]
        records[2]["allow"] = not records[2]["allow"]
        for index in range(2, len(records)):
            records[index]["prev"] = records[index - 1]["hash"]
            records[index]["hash"] = record_hash(records[index])
        lines = [canonical_json(r) + "\n" for r in records]
    path.write_text("".join(lines))


@pytest.mark.parametrize("how", ["edit", "delete", "insert", "reorder", "truncate", "rewrite-chain"])
def test_each_kind_of_tampering_is_detected(written_log: Path, how: str) -> None:
    _tamper(written_log, how)
    report = verify_log(written_log)
    assert not report.ok, f"{how} went unnoticed"
    assert report.problems


def test_forged_head_is_detected(written_log: Path) -> None:
    heads = heads_path_for(written_log)
    lines = _lines(heads)
    head = json.loads(lines[-1])
    head["seq"] = 7
    lines[-1] = json.dumps(head) + "\n"
    heads.write_text("".join(lines))
    report = verify_log(written_log)
    assert not report.ok and any("does not verify" in p for p in report.problems)


def test_heads_checked_against_a_trust_file_kept_elsewhere(tmp_path: Path, written_log: Path) -> None:
    elsewhere = tmp_path / "auditor-signers"
    shutil.copy(log_key_dir(written_log) / "allowed_signers", elsewhere)
    assert verify_log(written_log, allowed_signers=elsewhere).ok
    # An attacker on the host replaces the key and re-signs: the auditor's trust file still catches it.
    shutil.rmtree(log_key_dir(written_log))
    heads_path_for(written_log).unlink()
    _tamper(written_log, "truncate")
    forger = DecisionLog(written_log, sign_every=1, sign_interval=60)
    forger.record(_decision(99))
    forger.close()
    assert verify_log(written_log).ok  # against the key beside the log, the forgery passes
    report = verify_log(written_log, allowed_signers=elsewhere)
    assert not report.ok


def test_unsigned_tail_is_reported_when_the_writer_dies(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    decisions = DecisionLog(path, sign_every=4, sign_interval=60)
    for i in range(6):
        decisions.record(_decision(i))
    # No close(): as after kill -9, records 4 and 5 are durable but not yet covered by a head.
    report = verify_log(path)
    assert report.ok and report.last_signed_seq == 3 and report.unsigned_tail == 2


def test_time_bound_signs_an_idle_log(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    decisions = DecisionLog(path, sign_every=1000, sign_interval=0.2)
    decisions.record(_decision(1))
    wait_for(lambda: decisions.heads_signed, what="the 0.2 s bound to sign a head", timeout=3, every=0.05)
    assert decisions.heads_signed == 1
    decisions.close()


def test_head_copies_are_written(tmp_path: Path) -> None:
    path = tmp_path / "node" / "decisions.jsonl"
    copy = tmp_path / "control-host" / "lab-cpu-001.heads.jsonl"
    decisions = DecisionLog(path, sign_every=2, sign_interval=60, head_copies=[copy])
    for i in range(4):
        decisions.record(_decision(i))
    decisions.close()
    assert copy.read_text() == heads_path_for(path).read_text()
    assert verify_log(path, heads_path=copy).ok


def test_two_writers_on_one_log_keep_it_verifiable(tmp_path: Path) -> None:
    """A node's server and a training launcher append to the same log, each signing heads."""
    path = tmp_path / "decisions.jsonl"
    server, launcher = (DecisionLog(path, sign_every=3, sign_interval=60) for _ in range(2))
    threads = [
        threading.Thread(target=lambda w=w, k=k: [w.record(_decision(k * 10 + j)) for j in range(10)])
        for k, w in enumerate((server, launcher))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.close()
    launcher.close()
    report = verify_log(path)
    assert report.ok and report.records == 20 and report.unsigned_tail == 0, report.render()


STARTERS = 8
OPEN_ON_SIGNAL = """
import sys, time
from pathlib import Path
from aifactory.trust.decisionlog import DecisionLog
go = Path(sys.argv[2])
while not go.exists():
    pass
log = DecisionLog(Path(sys.argv[1]))
log.record({"who": sys.argv[3]})
log.close()
print(log.signer)
"""


def test_launchers_starting_at_once_on_a_fresh_folder_share_one_key(tmp_path: Path) -> None:
    """The training launchers of a job's hosts may open one fresh runtime folder at the same moment
    (shared storage): all of them start, and the log has one signing key."""
    import subprocess
    import sys

    path, go = tmp_path / "runtime" / "decisions.jsonl", tmp_path / "go"
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_ON_SIGNAL, str(path), str(go), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(STARTERS)
    ]
    go.touch()
    results = [starter.communicate(timeout=scaled(60)) for starter in starters]
    assert [s.returncode for s in starters] == [0] * STARTERS, [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    report = verify_log(path)
    assert report.ok, report.problems
