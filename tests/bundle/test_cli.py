"""`aifactory bundle keygen|verify|import|current` at the command line: exit codes and output."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.cli.main import main
from aifactory.errors import AifactoryError

from .conftest import Signer, SmallBundle
from .test_tamper import PAYLOAD, flip_byte_in_place


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_writes_an_encrypted_key_and_a_trust_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    code, out, _ = run(
        capsys,
        "bundle",
        "keygen",
        "-o",
        str(tmp_path / "k"),
        "--identity",
        "ops@site.example",
        "--passphrase-file",
        str(secret),
        "--format",
        "json",
    )
    assert code == 0
    written = json.loads(out)
    key = Path(written["private_key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "correct horse" not in out and "PRIVATE KEY" not in out
    with pytest.raises(AifactoryError):
        signing.load_private_key(key)  # encrypted: no passphrase, no key
    signing.load_private_key(key, b"correct horse battery staple")
    trust = Path(written["allowed_signers"]).read_text()
    assert trust.startswith('ops@site.example namespaces="aifactory-bundle" ssh-ed25519 ')
    code, _, err = run(capsys, "bundle", "keygen", "-o", str(tmp_path / "k"))
    assert code == 1 and "refusing to overwrite" in err


def test_verify_prints_ok_and_exits_zero(
    small_bundle: SmallBundle, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys,
        "bundle",
        "verify",
        str(small_bundle()),
        "--trust",
        str(signer.allowed_signers),
        "--no-rollback-check",
        "--with-ssh-keygen",
        signer.identity,
    )
    assert code == 0 and ": OK, bundle 2.0 for site tamperlab, signed by release@lab.example" in out
    assert 'ssh-keygen: Good "aifactory-bundle" signature for release@lab.example' in out


def test_verify_of_a_tampered_bundle_exits_one_naming_file_and_check(
    small_bundle: SmallBundle, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = flip_byte_in_place(small_bundle(), PAYLOAD)
    code, _, err = run(
        capsys, "bundle", "verify", str(bundle), "--trust", str(signer.allowed_signers), "--no-rollback-check"
    )
    assert code == 1
    assert err.startswith("error[hash-mismatch]: ") and PAYLOAD in err and "SHA-256 expected" in err
    code, out, _ = run(
        capsys,
        "bundle",
        "verify",
        str(bundle),
        "--trust",
        str(signer.allowed_signers),
        "--no-rollback-check",
        "--format",
        "json",
    )
    problems = json.loads(out)["error"]["problems"]
    assert code == 1 and [(p["code"], p["path"]) for p in problems] == [("hash-mismatch", PAYLOAD)]


def test_import_then_current(
    small_bundle: SmallBundle,
    signer: Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    code, out, _ = run(
        capsys,
        "bundle",
        "import",
        str(small_bundle(version="4.1")),
        "--trust",
        str(signer.allowed_signers),
        "--home",
        str(tmp_path / "home"),
        "--format",
        "json",
    )
    assert code == 0
    imported = json.loads(out)
    assert imported["root"] == str(tmp_path / "home" / "tamperlab" / "4.1")
    code, out, _ = run(capsys, "bundle", "current", "tamperlab", "--format", "json")
    assert code == 0 and json.loads(out) == imported
    code, _, err = run(
        capsys,
        "bundle",
        "import",
        str(small_bundle(version="4.0")),
        "--trust",
        str(signer.allowed_signers),
        "--home",
        str(tmp_path / "home"),
    )
    assert code == 1 and err.startswith("error[rollback]: ")
