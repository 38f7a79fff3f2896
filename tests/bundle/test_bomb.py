"""Hostile bundles from a USB stick: a 66 KB zstd stream that expands to 2 GiB is refused having
written at most 64 MiB (the kernel enforces it: the CLI runs with RLIMIT_FSIZE at 64 MiB), and a
bundle whose signature does not verify writes nothing under any site's state folder."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.bundle import import_bundle
from aifactory.bundle.manifest import NAMESPACE, SIGNATURE
from aifactory.bundle.seal import frame, statement
from aifactory.errors import BundleError

from .conftest import Signer, SmallBundle, make_signer
from .test_tamper import read_entries, write_entries

needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd tool")

WRITE_LIMIT = 64 * 1024**2
EXPANDS_TO = 2 * 1024**3
BLOCK = 128 * 1024  # zstd's largest block


def zstd_bomb() -> bytes:
    """One zstd frame of RLE blocks (each: 3-byte header, 1 byte repeated 128 KiB times)."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 7 << 3])  # no content size; window 2^(10+7) = 128 KiB
    blocks = EXPANDS_TO // BLOCK
    rle = (1 << 1) | (BLOCK << 3)  # block type 1 (RLE), size 128 KiB
    body = (struct.pack("<I", rle)[:3] + b"\x00") * (blocks - 1)
    return header + body + struct.pack("<I", rle | 1)[:3] + b"\x00"  # the last block


def sealed(data: bytes, key: Path, *, tar_bytes: int) -> bytes:
    """`data` with a seal signed by `key`, stating `tar_bytes` as the expanded size."""
    signed = statement(
        compressed_bytes=len(data),
        compressed_sha256="sha256:" + hashlib.sha256(data).hexdigest(),
        tar_bytes=tar_bytes,
        manifest="sha256:" + "0" * 64,
        site="victim",
        version="9.0",
    )
    return data + frame(signed, signing.sign(signed, signing.load_private_key(key), NAMESPACE))


def cli_limited(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The aifactory CLI in a child that cannot write any file past 64 MiB."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (WRITE_LIMIT, WRITE_LIMIT))

    code = "import sys; from aifactory.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        preexec_fn=limit,
        timeout=300,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, bytes | None]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    path = tmp_path / "media" / "site.tar.zst"
    path.parent.mkdir()
    path.write_bytes(zstd_bomb())
    return path


@needs_zstd
def test_the_bomb_is_one(bomb: Path) -> None:
    assert 60_000 < bomb.stat().st_size < 70_000
    stream = subprocess.Popen(["zstd", "-dc", str(bomb)], stdout=subprocess.PIPE)
    assert stream.stdout is not None
    seen = 0
    while seen <= WRITE_LIMIT and (block := stream.stdout.read(1 << 20)):
        seen += len(block)
    stream.kill()
    stream.wait()
    assert seen > WRITE_LIMIT  # it expands past what the refusal may write (to 2 GiB in all)


@needs_zstd
@pytest.mark.parametrize("command", ["verify", "import"])
@pytest.mark.parametrize("seal", ["none", "untrusted key", "trusted key, small size"])
def test_a_zstd_bomb_is_refused_having_written_at_most_64_mib(
    bomb: Path, signer: Signer, tmp_path: Path, command: str, seal: str
) -> None:
    if seal == "untrusted key":
        bomb.write_bytes(
            sealed(bomb.read_bytes(), make_signer(tmp_path / "mallory").key, tar_bytes=EXPANDS_TO)
        )
    elif seal == "trusted key, small size":  # a signer's mistake: the expansion stops at what it said
        bomb.write_bytes(sealed(bomb.read_bytes(), signer.key, tar_bytes=1024**2))
    home, state, scratch = tmp_path / "home", tmp_path / "state", tmp_path / "scratch"
    scratch.mkdir()
    env = {"AIFACTORY_STATE_HOME": str(state), "AIFACTORY_BUNDLES_HOME": str(home), "TMPDIR": str(scratch)}
    done = cli_limited(["bundle", command, str(bomb), "--trust", str(signer.allowed_signers)], env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "File too large" not in done.stderr
    expected = {"none": "seal-missing", "untrusted key": "signature-untrusted"}.get(seal, "expands-too-far")
    assert f"error[{expected}]" in done.stderr, done.stderr
    assert snapshot(state) == {} and not list(scratch.iterdir())
    assert not home.exists() or not [p for p in home.rglob("*") if p.is_file()]


@pytest.mark.parametrize("how", ["unsigned", "signed by a stranger"])
def test_a_bundle_naming_another_site_leaves_its_state_folder_byte_identical(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    state_home = tmp_path / "state"
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(state_home))
    victim = state_home / "victim"
    (victim / "bundle").mkdir(parents=True, mode=0o700)
    (victim / "operator.log.jsonl").write_text('{"seq": 1}\n')
    (victim / "bundle" / "current.json").write_text('{"version": "1.0"}\n')
    before = snapshot(victim)
    if how == "unsigned":
        original = small_bundle(site="victim")
        bundle = write_entries(
            [e for e in read_entries(original) if e[0].name != SIGNATURE], original.with_name("unsigned.tar")
        )
    else:
        bundle = small_bundle(site="victim", key=make_signer(tmp_path / "stranger").key)
    with pytest.raises(BundleError) as caught:
        import_bundle(bundle, trust=signer.allowed_signers, home=tmp_path / "home")
    assert caught.value.code in {"missing-file", "signature-untrusted"}
    assert snapshot(victim) == before
    assert sorted(p.name for p in state_home.iterdir()) == ["victim"]  # no other site's folder either
