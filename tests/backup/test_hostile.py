"""Hostile archives inside a backup that verifies: what a stolen backup key could sign. Each tar is made
here with the stock `tarfile`, then gzipped, encrypted and signed exactly as `aifactory backup` does
(the real EnvelopeWriter and a real key), so only the archive's content is hostile. Every one is
refused at its member, naming it, and leaves nothing: no site folder, no half-unpacked copy."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifactory import signing
from aifactory.backup import restore_backup
from aifactory.backup.envelope import NAMESPACE, EnvelopeWriter, Header
from aifactory.errors import BackupError

PASSPHRASE = b"hostile test"


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _entry(tar: tarfile.TarFile, name: str, kind: bytes, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    for field, value in fields.items():
        setattr(info, field, value)
    tar.addfile(info)


def _archive(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _entry(tar, "runtime", tarfile.DIRTYPE, mode=0o700)
        _file(tar, "runtime/token_key")
        build(tar)
    return buffer.getvalue()


def _huge_member(tar: tarfile.TarFile) -> None:
    """A header claiming 64 GiB, followed by a few bytes: a restore must refuse before writing."""
    info = tarfile.TarInfo("up/huge")
    info.size = 64 << 30
    tar.fileobj.write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
    tar.fileobj.write(b"\0" * 1024)


HOSTILE: dict[str, tuple[Callable[[tarfile.TarFile], None], str]] = {
    "absolute path": (lambda tar: _file(tar, "/etc/cron.d/evil"), "an absolute path"),
    "parent traversal": (lambda tar: _file(tar, "runtime/../../escape"), "`..`"),
    "dot component": (lambda tar: _file(tar, "runtime/./token_key"), "'.' component"),
    "symlink out": (
        lambda tar: _entry(tar, "runtime/link", tarfile.SYMTYPE, linkname="/etc/shadow"),
        "symbolic link out of the state folder",
    ),
    "symlink up": (
        lambda tar: _entry(tar, "runtime/up", tarfile.SYMTYPE, linkname="../../.."),
        "symbolic link out of the state folder",
    ),
    "symlink inside": (
        lambda tar: _entry(tar, "runtime/alias", tarfile.SYMTYPE, linkname="token_key"),
        "symbolic link to",
    ),
    "hard link": (
        lambda tar: _entry(tar, "runtime/hard", tarfile.LNKTYPE, linkname="runtime/token_key"),
        "hard link",
    ),
    "character device": (
        lambda tar: _entry(tar, "runtime/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        "device file",
    ),
    "block device": (lambda tar: _entry(tar, "runtime/sda", tarfile.BLKTYPE, devmajor=8), "device file"),
    "fifo": (lambda tar: _entry(tar, "runtime/pipe", tarfile.FIFOTYPE), "FIFO"),
    "duplicate": (lambda tar: _file(tar, "runtime/token_key", b"replaced"), "twice"),
    "file over a folder": (lambda tar: _file(tar, "runtime/token_key/inner"), "clashes"),
    "huge member": (_huge_member, "68719476736-byte member"),
}


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    keys = signing.generate_keypair(tmp_path / "key", identity="backup@lab", namespaces=NAMESPACE)
    return signing.load_private_key(keys.private), keys.allowed_signers


def _backup(path: Path, tar: bytes, key: Ed25519PrivateKey, *, stated: int | None = None) -> None:
    header = Header("lab", "2026-12-02T00:00:00Z", "/elsewhere/lab", "backup@lab", b"s" * 16, b"n" * 7)
    with path.open("wb") as sink:
        envelope = EnvelopeWriter(sink, header, passphrase=PASSPHRASE, key=key)
        with gzip.GzipFile(filename="", mode="wb", fileobj=envelope, mtime=0) as compressed:
            compressed.write(tar)
        envelope.finish(tar_bytes=len(tar) if stated is None else stated, files=1, directories=1)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_member_is_refused_and_nothing_is_left(
    case: str, signer: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    key, trust = signer
    build, said = HOSTILE[case]
    _backup(tmp_path / "hostile.aifbackup", _archive(build), key)
    home = tmp_path / "state"
    with pytest.raises(BackupError) as refused:
        restore_backup(tmp_path / "hostile.aifbackup", trust=trust, passphrase=lambda: PASSPHRASE, home=home)
    error = refused.value
    assert error.code == "backup-hostile", error.render()
    assert said in error.message and "nothing was restored" in error.message
    assert error.location.path  # names the member
    assert list(home.iterdir()) == []
    assert not Path("/etc/cron.d/evil").exists() and not (tmp_path / "escape").exists()


def test_a_stream_that_expands_past_its_signed_summary_is_stopped(
    signer: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    key, trust = signer
    tar = _archive(lambda tar: _file(tar, "up/blob", b"\0" * 200_000))
    _backup(tmp_path / "bomb.aifbackup", tar, key, stated=50_000)
    home = tmp_path / "state"
    with pytest.raises(BackupError) as refused:
        restore_backup(tmp_path / "bomb.aifbackup", trust=trust, passphrase=lambda: PASSPHRASE, home=home)
    assert refused.value.code == "backup-hostile" and list(home.iterdir()) == []


def test_the_same_envelope_with_a_plain_archive_restores(
    signer: tuple[Ed25519PrivateKey, Path], tmp_path: Path
) -> None:
    """The control for the cases above: only their hostile member made them fail."""
    key, trust = signer
    _backup(tmp_path / "plain.aifbackup", _archive(lambda tar: None), key)
    restored = restore_backup(
        tmp_path / "plain.aifbackup", trust=trust, passphrase=lambda: PASSPHRASE, home=tmp_path / "state"
    )
    assert (restored.files, restored.directories) == (1, 1)
    assert (tmp_path / "state" / "lab" / "runtime" / "token_key").read_bytes() == b"x"


def test_a_body_that_is_not_gzip_is_refused(signer: tuple[Ed25519PrivateKey, Path], tmp_path: Path) -> None:
    key, trust = signer
    header = Header("lab", "2026-12-02T00:00:00Z", "/elsewhere/lab", "backup@lab", b"s" * 16, b"n" * 7)
    with (tmp_path / "plain.aifbackup").open("wb") as sink:
        envelope = EnvelopeWriter(sink, header, passphrase=PASSPHRASE, key=key)
        envelope.write(_archive(lambda tar: None))  # a tar, never compressed
        envelope.finish(tar_bytes=1 << 20, files=1, directories=1)
    home = tmp_path / "state"
    with pytest.raises(BackupError) as refused:
        restore_backup(tmp_path / "plain.aifbackup", trust=trust, passphrase=lambda: PASSPHRASE, home=home)
    assert "not gzip data" in refused.value.message and list(home.iterdir()) == []
