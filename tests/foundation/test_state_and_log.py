"""The state folder, the site lock between real processes, and the hash-chained operator log."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_for

from aifactory.chain import verify_chain
from aifactory.errors import SiteLocked, StateError
from aifactory.state import SiteState

HOLDER = """
import sys, time
from pathlib import Path
from aifactory.state import SiteState
with SiteState.for_site("lab").lock("deploy (test holder)"):
    Path(sys.argv[1]).write_text("held")
    time.sleep(float(sys.argv[2]))
"""


def _holding(argv: list[str], flag: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process started with `argv`, once it has written `flag` (it holds the lock by then)."""
    holder = subprocess.Popen(argv, env=env)
    wait_for(
        lambda: flag.exists() or holder.poll() is not None,
        what="the lock holder to take the lock",
        timeout=30,
    )
    assert holder.poll() is None, "the lock holder ended before it held the lock"
    return holder


def _hold_lock(state_home: Path, tmp_path: Path, seconds: float) -> subprocess.Popen[bytes]:
    flag = tmp_path / "held"
    return _holding(
        [sys.executable, "-c", HOLDER, str(flag), str(seconds)],
        flag,
        env={**os.environ, "AIFACTORY_STATE_HOME": str(state_home)},
    )


def test_state_folder_is_private(state_home: Path) -> None:
    state = SiteState.for_site("lab")
    assert state.root == state_home / "lab"
    assert stat.S_IMODE(state.root.stat().st_mode) == 0o700
    state.record(command="test", result="ok")
    assert stat.S_IMODE(state.operator_log.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.subdir("deploy").stat().st_mode) == 0o700


@pytest.mark.parametrize("name", ["", "..", "../etc", "a/b"])
def test_a_site_name_cannot_escape_the_state_home(name: str, state_home: Path) -> None:
    with pytest.raises(StateError, match="cannot name a state folder"):
        SiteState.for_site(name)
    assert not state_home.exists() or not any(state_home.parent.glob("etc"))


def test_second_changing_command_refuses_while_the_site_is_locked(
    state_home: Path, tmp_path: Path, aifactory, passphrase_file: Path
) -> None:
    holder = _hold_lock(state_home, tmp_path, 30)
    try:
        refused = aifactory(
            "secret",
            "set",
            "lab",
            "secret://lab/token",
            "--passphrase-file",
            str(passphrase_file),
            input="value\n",
        )
        assert refused.returncode == 3
        assert "site 'lab' is busy: `deploy (test holder)`" in refused.stderr
        assert f"(pid {holder.pid})" in refused.stderr
        assert "--wait" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        holder.kill()
        holder.wait()


def test_second_changing_command_waits_with_wait(
    state_home: Path, tmp_path: Path, aifactory, passphrase_file: Path
) -> None:
    holder = _hold_lock(state_home, tmp_path, 2.0)
    started = time.monotonic()
    waited = aifactory(
        "secret",
        "set",
        "lab",
        "secret://lab/token",
        "--passphrase-file",
        str(passphrase_file),
        "--wait",
        "60",
        input="value\n",
    )
    assert waited.returncode == 0, waited.stderr
    assert holder.poll() == 0, "the waiter finished while the holder still held the lock"
    assert time.monotonic() - started >= 1.0  # it waited for the holder's remaining time
    owner = json.loads((state_home / "lab" / "lock.owner").read_text())
    assert owner["command"] == "secret set"
    records = [
        json.loads(line) for line in (state_home / "lab" / "operator.log.jsonl").read_text().splitlines()
    ]
    assert [r["command"] for r in records] == ["secret set"]


# A child of a killed command: it holds the lock's open file (flock) without taking the lock itself,
# so the owner file still names the command that took it.
ORPHAN_HOLDER = """
import fcntl, os, sys, time
from pathlib import Path
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
Path(sys.argv[2]).write_text("held")
time.sleep(float(sys.argv[3]))
"""


def _a_gone_command_took_the_lock(
    state: SiteState, tmp_path: Path, seconds: float
) -> subprocess.Popen[bytes]:
    """The lock held by a live process while its owner file names a command that has ended."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state.root.mkdir(parents=True, exist_ok=True)
    state.path("lock.owner").write_text(
        json.dumps({"pid": gone.pid, "command": "lab up", "since": "2026-12-04T12:21:12Z"}) + "\n"
    )
    flag = tmp_path / "orphan-held"
    return _holding(
        [sys.executable, "-c", ORPHAN_HOLDER, str(state.path("lock")), str(flag), str(seconds)], flag
    )


def test_a_lock_left_in_a_killed_commands_child_is_waited_for_not_refused(
    state_home: Path, tmp_path: Path
) -> None:
    state = SiteState.for_site("lab")
    holder = _a_gone_command_took_the_lock(state, tmp_path, 1.5)
    try:
        with state.lock("lab down"):  # no --wait: the grace is for a lock whose command is gone
            assert holder.poll() == 0, "the lock was taken while the child still held it"
        owner = json.loads(state.path("lock.owner").read_text())
        assert owner["command"] == "lab down" and owner["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_held_on_after_its_command_ended_is_refused_after_the_grace_naming_it(
    state_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aifactory.state

    monkeypatch.setattr(aifactory.state, "RELEASE_GRACE_SECONDS", 0.5)
    state = SiteState.for_site("lab")
    holder = _a_gone_command_took_the_lock(state, tmp_path, 30)
    try:
        with pytest.raises(SiteLocked) as refused, state.lock("lab down"):
            pass
        assert "`lab up` (pid " in str(refused.value)
        assert "no longer running" in str(refused.value)
        assert "a process it started still holds it" in str(refused.value)
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_operator_log_detects_an_edited_record(state_home: Path) -> None:
    state = SiteState.for_site("lab")
    for result in ("ok", "ok", "failed: deploy"):
        state.record(command="deploy", result=result, spec_digest="sha256:" + "1" * 64)
    assert state.verify_operator_log().ok
    lines = state.operator_log.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["result"] = "ok"  # someone hides a failure
    lines[2] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    state.operator_log.write_text("\n".join(lines) + "\n")
    report = state.verify_operator_log()
    assert not report.ok
    assert report.problems == (
        "operator.log.jsonl line 3 (seq 2): the record was edited (its hash does not match)",
    )


def test_operator_log_detects_a_deleted_record(state_home: Path) -> None:
    state = SiteState.for_site("lab")
    for n in range(4):
        state.record(command=f"step {n}", result="ok")
    lines = state.operator_log.read_text().splitlines()
    state.operator_log.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    problems = verify_chain(state.operator_log).problems
    assert any("expected seq 1, found 2" in p for p in problems)
    assert any("does not link to the previous record" in p for p in problems)


def test_operator_log_records_who_what_and_digests(state_home: Path) -> None:
    state = SiteState.for_site("lab")
    record = state.record(
        command="bundle import", result="ok", spec_digest="sha256:aa", bundle_digest="sha256:bb"
    )
    for key in (
        "time",
        "user",
        "host",
        "command",
        "site",
        "spec_digest",
        "bundle_digest",
        "result",
        "hash",
        "prev",
    ):
        assert key in record
    assert record["seq"] == 0 and record["bundle_digest"] == "sha256:bb"


def test_plan_that_updates_the_allocation_lock_is_recorded(
    state_home: Path, tmp_path: Path, aifactory
) -> None:
    root = Path(__file__).resolve().parents[2]
    spec = tmp_path / "site.yaml"
    spec.write_text((root / "inventory" / "lab" / "site.yaml").read_text())
    first = aifactory("plan", str(spec))
    again = aifactory("plan", str(spec))
    assert first.returncode == again.returncode == 0
    assert "allocation lock updated" in first.stdout and "allocation lock updated" not in again.stdout
    log = state_home / "lab" / "operator.log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["command"], r["result"]) for r in records] == [("plan", "allocation lock updated")]
    assert verify_chain(log).ok


def test_the_lock_is_reentrant_within_one_process(state_home: Path, tmp_path: Path) -> None:
    """`up` holds the lock and plans a fresh spec: planning must not refuse its own process."""
    from aifactory.plan import plan_site

    root = Path(__file__).resolve().parents[2]
    spec = tmp_path / "site.yaml"
    spec.write_text((root / "inventory" / "lab" / "site.yaml").read_text())
    state = SiteState.for_site("lab")
    with state.lock("up"):
        with state.lock("nested step"):
            pass
        planned = plan_site(spec)
        assert planned.lock_changed and planned.lock_path.exists()
    records = [json.loads(line) for line in state.operator_log.read_text().splitlines()]
    assert [r["command"] for r in records] == ["plan"]
    with state.lock("after"):  # released: can be taken again
        pass


def test_writers_in_turn_on_one_chained_log_each_chain_onto_the_true_head(tmp_path: Path) -> None:
    """Two writers (as the server and a training launcher on one node) interleave appends; each one
    must see the other's records, not reuse the head its own last append left."""
    from aifactory.chain import ChainWriter

    log = tmp_path / "decisions.jsonl"
    first, second = ChainWriter(log, durable=False), ChainWriter(log, durable=False)
    for writer in (first, first, second, first, second, second, first):
        writer.append_many([{"n": 1}, {"n": 2}])
    first.append({"n": 3})
    first.close()
    second.close()
    report = verify_chain(log)
    assert report.ok, report.problems
    assert report.records == 15
    assert [json.loads(line)["seq"] for line in log.read_text().splitlines()] == list(range(15))
