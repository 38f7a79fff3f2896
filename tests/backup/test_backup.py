"""`aifactory backup` and `aifactory restore` (docs/operations.md) on a state folder made by the real
code: the secret store, the site's token, model-signing and CA keys, a decision log with signed
heads, the operator log, a signed audit report citing both logs, plus what a backup leaves out (the
lab, the fact cache, an SSH control socket, a link deploy makes, the lock, a bytecode cache).

After a restore onto the same path, `aifactory audit verify --require-logs` and `audit verify-log`
pass on the restored evidence; every kept file comes back byte for byte with its mode. Tampering, an
untrusted or missing signature and a wrong passphrase are refused before anything is written; the
signature verifies with the stock `ssh-keygen -Y verify`; with the salt, nonce prefix and time fixed
(the test seam of `write_backup`) two backups of one state are byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aifactory.audit import ReportOptions, produce_report
from aifactory.audit.evidence.backups import INTACT, WRITTEN, backup_evidence
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS
from aifactory.backup import backup_site, restore_backup, site_backup_key, write_backup
from aifactory.backup.contents import gather, write_tar
from aifactory.backup.envelope import FOOTER_BYTES
from aifactory.chain import iter_records
from aifactory.cli.main import main
from aifactory.errors import BackupError, SecretError, SiteLocked, UsageError
from aifactory.plan import plan_site
from aifactory.secrets import STORE_FILE, SecretStore
from aifactory.state import SiteState
from aifactory.trust.decisionlog import DecisionLog
from aifactory.trust.issuing.certs import ensure_site_ca
from aifactory.trust.issuing.models import ensure_model_key
from aifactory.trust.issuing.tokens import ensure_site_key
from aifactory.trust.tokens import TrustFiles

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventory" / "lab" / "site.yaml"
TIMESTAMP = "2026-11-22T09:00:00Z"
PASSPHRASE = b"correct horse battery staple"
# What the fixture puts where a backup must leave it out.
LEFT_OUT = ("lab/hosts/lab-cpu-001/etc.upper/hostname", "deploy/facts/lab-cpu-001", "__pycache__/x.pyc")


def _passphrase() -> bytes:
    return PASSPHRASE


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(folder))
    return folder


@pytest.fixture
def small(home: Path) -> SiteState:
    """A small state: two log records, a 0600 key and a few hundred kB that do not compress."""
    state = SiteState.for_site("lab")
    state.record(command="secret set", result="stored", detail={"reference": "secret://bmc/{host}"})
    key = state.subdir("runtime") / "token_key"
    key.write_bytes(b"not a real key\n")
    key.chmod(0o600)
    (state.subdir("up") / "blob").write_bytes(os.urandom(300_000))
    return state


@pytest.fixture
def realistic(home: Path, tmp_path: Path) -> Iterator[SiteState]:
    """The lab site's state folder as the real code writes it (see the module docstring)."""
    spec = tmp_path / "spec" / "site.yaml"
    spec.parent.mkdir()
    shutil.copy(LAB, spec)
    shutil.copy(LAB.with_name("site.alloc.json"), spec.with_name("site.alloc.json"))
    planned = plan_site(spec, write_lock=False)
    state = SiteState.for_site(planned.plan.name)
    SecretStore(state.path(STORE_FILE), b"store passphrase").set("secret://bmc/{host}", "hunter2")
    state.record(command="secret set", result="stored", detail={"reference": "secret://bmc/{host}"})
    runtime = state.subdir("runtime")
    ensure_site_key(TrustFiles(runtime), site=state.site)
    ensure_site_ca(TrustFiles(runtime), site=state.site)
    ensure_model_key(runtime)
    decisions = DecisionLog(runtime / "decisions.jsonl", sign_every=3, sign_interval=60)
    for number in range(7):
        decisions.record({"decision_id": f"d{number}", "tenant": "health", "allow": True, "reasons": []})
    decisions.close()
    produce_report(planned, state.subdir("up") / "report", ReportOptions(timestamp=TIMESTAMP))
    for name in LEFT_OUT:
        path = state.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("made again when needed\n")
    (state.subdir("deploy") / "collections").mkdir()
    (state.path("deploy", "collections") / "factory").symlink_to(ROOT / "playbooks")
    state.subdir("deploy/cp")
    with state.lock("test"):
        control = socket.socket(socket.AF_UNIX)
        control.bind(str(state.path("deploy", "cp", "master")))
        try:
            yield state
        finally:
            control.close()


def _tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under root: kind, permission bits and, for a file, its bytes."""
    found: dict[str, tuple[str, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
        found[str(path.relative_to(root))] = (
            kind,
            stat.S_IMODE(mode),
            path.read_bytes() if kind == "file" else b"",
        )
    return found


def _kept(tree: dict[str, tuple[str, int, bytes]]) -> dict[str, tuple[str, int, bytes]]:
    left_out = ("lab", "deploy/facts", "deploy/cp", "deploy/collections", "lock", "lock.owner", "__pycache__")
    return {
        path: entry
        for path, entry in tree.items()
        if not any(path == top or path.startswith(f"{top}/") for top in left_out)
    }


def _trust_copy(state: SiteState, folder: Path) -> Path:
    """The backup key's allowed_signers, kept off the host as the admin is told to."""
    folder.mkdir(exist_ok=True)
    copy = folder / "backup_allowed_signers"
    shutil.copy(site_backup_key(state).allowed_signers, copy)
    return copy


def _records(state: SiteState) -> list[dict[str, Any]]:
    return [record for _, record, _ in iter_records(state.operator_log) if record is not None]


def test_round_trip_restores_every_kept_file_and_the_evidence_verifies(
    realistic: SiteState, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = realistic
    audit_trust = tmp_path / "kept" / "audit_allowed_signers"
    audit_trust.parent.mkdir()
    shutil.copy(state.path("audit", "allowed_signers"), audit_trust)
    backup = tmp_path / "offline" / "lab.aifbackup"
    backup.parent.mkdir()
    result = backup_site(state, backup, passphrase=_passphrase, wait=5)
    before = _tree(state.root)
    trust = _trust_copy(state, tmp_path / "kept")
    assert set(result.left_out) >= {
        "lab",
        "deploy/facts",
        "deploy/cp",
        "deploy/collections",
        "lock",
        "__pycache__",
    }
    assert result.skipped == ()  # what is neither a file nor a folder lies under what is left out
    assert (
        stat.S_IMODE(backup.stat().st_mode) == 0o600
        and not backup.with_name(backup.name + ".partial").exists()
    )

    state.root.rename(home / "lab.lost")  # the control host's state is gone
    restored = restore_backup(backup, trust=trust, passphrase=_passphrase)

    assert restored.target == state.root and restored.replaced is None and restored.signer == "backup@lab"
    after = _tree(state.root)
    records = _records(state)
    # the backup's own record follows it in the lost log; the restored one goes on with the restore
    assert [r["command"] for r in records[-2:]] == ["secret set", "restore"]
    assert records[-1]["result"] == "restored" and records[-1]["detail"]["sha256"] == result.sha256
    after.pop("operator.log.jsonl")
    kept = _kept(before)
    kept.pop("operator.log.jsonl")
    assert after == kept, set(after) ^ set(kept)
    for key in ("runtime/token/signing_key", "backup/backup_key", "audit/audit_key", STORE_FILE):
        if key in after:
            assert after[key][1] == 0o600, key
    assert sum(1 for entry in after.values() if entry[1] == 0o600) >= 5
    assert not [p for p in home.iterdir() if ".restoring-" in p.name]
    report = state.path("up", "report")
    assert main(["audit", "verify", str(report), "--trust", str(audit_trust), "--require-logs"]) == 0
    for log in (state.operator_log, state.path("runtime", "decisions.jsonl")):
        assert main(["audit", "verify-log", str(log)]) == 0, capsys.readouterr().out
    assert restored.files == result.files


def test_the_signature_verifies_with_the_stock_ssh_keygen(small: SiteState, tmp_path: Path) -> None:
    """The recipe docs/operations.md gives: the footer's last number is the signature's length."""
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    trust = _trust_copy(small, tmp_path / "kept")
    script = (
        'read -r _ _ G < <(tail -c 39 "$1"); G=$((10#$G)); size=$(stat -c %s "$1"); '
        'tail -c $((39 + G)) "$1" | head -c "$G" > "$1.sig"; '
        'head -c $((size - 39 - G)) "$1" '
        '| ssh-keygen -Y verify -f "$2" -I backup@lab -n aifactory-backup -s "$1.sig"'
    )
    assert FOOTER_BYTES == 39
    good = subprocess.run(["bash", "-c", script, "-", backup, trust], capture_output=True, text=True)
    assert good.returncode == 0 and 'Good "aifactory-backup" signature for backup@lab' in good.stdout, good
    with backup.open("r+b") as handle:  # one byte of the encrypted body
        handle.seek(2000)
        byte = handle.read(1)
        handle.seek(2000)
        handle.write(bytes([byte[0] ^ 1]))
    bad = subprocess.run(["bash", "-c", script, "-", backup, trust], capture_output=True, text=True)
    assert bad.returncode != 0


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "body", "summary", "signature", "cut", "appended"])
def test_a_tampered_file_is_refused_before_anything_is_written(
    small: SiteState, home: Path, tmp_path: Path, where: str
) -> None:
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    trust = _trust_copy(small, tmp_path / "kept")
    shutil.rmtree(small.root)
    data = backup.read_bytes()
    summary_at = data.rindex(b'{"chunks"')
    offsets = {"header": 30, "body": len(data) // 2, "summary": summary_at + 12, "signature": len(data) - 100}
    if where == "cut":
        backup.write_bytes(data[: len(data) // 2] + data[-FOOTER_BYTES - 400 :])
    elif where == "appended":
        backup.write_bytes(data + b"more")
    else:
        _flip(backup, offsets[where])
    asked: list[bool] = []

    def passphrase() -> bytes:
        asked.append(True)
        return PASSPHRASE

    with pytest.raises(BackupError) as refused:
        restore_backup(backup, trust=trust, passphrase=passphrase)
    assert refused.value.code in ("backup-signature-invalid", "backup-invalid"), refused.value.render()
    assert not asked, "the passphrase is asked for only once the signature verified"
    assert not home.joinpath("lab").exists() and list(home.iterdir()) == []


def test_an_unsigned_file_or_an_untrusted_signer_is_refused(
    small: SiteState, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    shutil.rmtree(small.root)
    other = SiteState.for_site("other")
    stranger = _trust_copy(other, tmp_path / "stranger")
    shutil.rmtree(other.root)
    with pytest.raises(BackupError) as untrusted:
        restore_backup(backup, trust=stranger, passphrase=_passphrase)
    assert untrusted.value.code == "backup-signer-untrusted"
    assert "--trust" not in untrusted.value.message and "allowed_signers" in (untrusted.value.hint or "")
    data = backup.read_bytes()
    unsigned = tmp_path / "unsigned.aifbackup"
    unsigned.write_bytes(data[: data.rindex(b"-----BEGIN SSH SIGNATURE-----")])
    with pytest.raises(BackupError) as refused:
        restore_backup(unsigned, trust=stranger, passphrase=_passphrase)
    assert refused.value.code == "backup-invalid" and "footer" in refused.value.message
    assert list(home.iterdir()) == []


def test_a_wrong_passphrase_is_refused_with_a_clear_message(
    small: SiteState, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    trust = _trust_copy(small, tmp_path / "kept")
    shutil.rmtree(small.root)
    with pytest.raises(SecretError) as wrong:
        restore_backup(backup, trust=trust, passphrase=lambda: b"not it")
    assert "wrong passphrase" in wrong.value.message and "not it" not in wrong.value.render()
    assert wrong.value.exit_code == 3
    assert list(home.iterdir()) == []  # not even the folder the restore's lock was taken in


def test_an_existing_state_is_kept_unless_forced_and_then_set_aside(
    small: SiteState, home: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    trust = _trust_copy(small, tmp_path / "kept")
    small.record(command="token issue", result="issued")  # the state moved on after the backup
    with pytest.raises(UsageError) as exists:
        restore_backup(backup, trust=trust, passphrase=_passphrase)
    assert exists.value.code == "state-exists" and "--force" in (exists.value.hint or "")
    assert _records(small)[-1]["result"] == "refused: state-exists"  # recorded in the state that is there
    restored = restore_backup(backup, trust=trust, passphrase=_passphrase, force=True)
    assert restored.replaced is not None and restored.replaced.parent == home
    assert [r["command"] for r in _records(SiteState("lab", restored.replaced))][-2:] == [
        "token issue",
        "restore",
    ]
    assert "token issue" not in [r["command"] for r in _records(small)]


def test_restore_into_another_state_home(small: SiteState, tmp_path: Path) -> None:
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    trust = _trust_copy(small, tmp_path / "kept")
    elsewhere = tmp_path / "new-host" / "state"
    restored = restore_backup(backup, trust=trust, passphrase=_passphrase, home=elsewhere)
    assert restored.target == elsewhere / "lab" and restored.source == str(small.root)
    assert (elsewhere / "lab" / "up" / "blob").read_bytes() == small.path("up", "blob").read_bytes()
    assert stat.S_IMODE((elsewhere / "lab").stat().st_mode) == 0o700


def test_backup_refuses_to_overwrite_or_to_write_into_the_state(small: SiteState, tmp_path: Path) -> None:
    existing = tmp_path / "there"
    existing.write_text("keep me")
    with pytest.raises(UsageError) as exists:
        backup_site(small, existing, passphrase=_passphrase)
    assert exists.value.code == "output-exists" and existing.read_text() == "keep me"
    with pytest.raises(UsageError) as inside:
        backup_site(small, small.path("up", "self.aifbackup"), passphrase=_passphrase)
    assert inside.value.code == "output-in-state"


def test_backup_waits_for_the_site_lock(small: SiteState, tmp_path: Path) -> None:
    """A backup is a consistent copy: no changing command runs while it reads (another process holds it)."""
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)",
            str(small.path("lock")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(SiteLocked):
            backup_site(small, tmp_path / "lab.aifbackup", passphrase=_passphrase)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "lab.aifbackup").exists()


def test_two_backups_of_one_state_are_byte_identical_with_the_seams_fixed(
    small: SiteState, tmp_path: Path
) -> None:
    """Salt and nonce prefix are random in use (a fixed nonce would reuse the key stream across
    backups): with them and the time fixed, the bytes depend on the state alone."""
    key = site_backup_key(small)
    fixed = {"created": TIMESTAMP, "randomness": lambda n: bytes(range(n))}
    one = write_backup(small, tmp_path / "one", passphrase=PASSPHRASE, key=key, **fixed)  # type: ignore[arg-type]
    os.utime(small.path("up", "blob"), (1, 1))  # times are not part of the archive
    two = write_backup(small, tmp_path / "two", passphrase=PASSPHRASE, key=key, **fixed)  # type: ignore[arg-type]
    assert one.sha256 == two.sha256
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()
    fresh = write_backup(small, tmp_path / "three", passphrase=PASSPHRASE, key=key)
    assert fresh.sha256 != one.sha256  # a fresh salt and nonce prefix every time
    small.path("up", "blob").write_bytes(b"changed")
    changed = write_backup(small, tmp_path / "four", passphrase=PASSPHRASE, key=key, **fixed)  # type: ignore[arg-type]
    assert changed.sha256 != one.sha256


def test_the_plain_archive_is_sorted_with_fixed_times_and_owners_and_modes_kept(
    small: SiteState, tmp_path: Path
) -> None:
    contents = gather(small.root)
    with (tmp_path / "one.tar").open("wb") as sink:
        write_tar(sink, contents)
    with tarfile.open(tmp_path / "one.tar") as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/")) and "lock" not in names
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["runtime/token_key"] == 0o600 and modes["runtime"] == 0o700
    os.utime(small.path("runtime", "token_key"), (5, 5))
    with (tmp_path / "two.tar").open("wb") as sink:
        write_tar(sink, gather(small.root))
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_cp9_is_assessed_from_the_backup_records(small: SiteState, tmp_path: Path) -> None:
    def rules() -> dict[str, str]:
        return {result.id: result.status for _, result in backup_evidence(small).rules}

    assert rules() == {WRITTEN: NOT_ASSESSED}
    backup = tmp_path / "lab.aifbackup"
    backup_site(small, backup, passphrase=_passphrase)
    evidence = backup_evidence(small)
    assert rules() == {WRITTEN: PASS, INTACT: PASS} and evidence.status == PASS, evidence.summary
    assert (
        evidence.detail["latest"]["file"] == str(backup.resolve())
        and evidence.detail["changes_since_latest"] == 0
    )
    small.record(command="token issue", result="issued")
    assert backup_evidence(small).detail["changes_since_latest"] == 1
    _flip(backup, 3000)
    evidence = backup_evidence(small)
    assert rules()[INTACT] == FAIL and evidence.findings[0].controls == ("CP-9",)
    backup.rename(tmp_path / "offsite.aifbackup")  # moved off the host: not checked, not failed
    assert rules() == {WRITTEN: PASS, INTACT: NOT_ASSESSED}
    with pytest.raises(UsageError):
        backup_site(small, tmp_path / "offsite.aifbackup", passphrase=_passphrase)  # refused before the lock
    small.record(command="backup", result="failed: os-error", detail={"file": "x"})
    assert rules()[WRITTEN] == FAIL


def test_the_commands_through_the_cli(
    small: SiteState,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "pass"
    secret.write_bytes(PASSPHRASE + b"\n")
    monkeypatch.setenv("AIFACTORY_PASSPHRASE_FILE", str(secret))
    backup = tmp_path / "lab.aifbackup"
    assert main(["backup", "lab", "-o", str(backup), "--format", "json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["file"] == str(backup.resolve()) and written["signer"] == "backup@lab"
    assert "lock" in written["left_out"]
    trust = _trust_copy(small, tmp_path / "kept")
    assert main(["restore", str(backup), "--trust", str(trust)]) == 2  # the state is there
    assert "error[state-exists]" in capsys.readouterr().err
    assert main(["restore", str(backup), "--trust", str(trust), "--force"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"restored site 'lab' into {small.root}") and "kept at" in out
    assert PASSPHRASE.decode() not in out
    assert main(["backup", "nosuchsite", "-o", str(tmp_path / "x")]) == 1
    assert "error[no-state]" in capsys.readouterr().err
