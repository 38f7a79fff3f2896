"""Which allowed_signers deploy gives hosts when no `--trust` is named (aifactory.deploy.
imported_bundle): the site's own bundle trust file, <state>/bundle-key/allowed_signers, when it
vouches for the imported manifest's signer (the key `aifactory up` makes; both keys while a
bundle-key rotation overlaps them, so a deploy then keeps the old key on the hosts), else none (one
line for the signer). Real SSHSIG signatures, checked as hosts check them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifactory import signing
from aifactory.bundle.manifest import NAMESPACE
from aifactory.deploy.imported_bundle import _site_trust
from aifactory.state import SiteState

MANIFEST = b'{"version": "1.0.0", "files": []}\n'
SIGNER = "bundle@trustsite"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SiteState:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    return SiteState.for_site("trustsite")


def _signed(folder: Path) -> tuple[signing.KeyFiles, str]:
    keys = signing.generate_keypair(folder, identity=SIGNER, namespaces=NAMESPACE)
    return keys, signing.sign(MANIFEST, signing.load_private_key(keys.private), NAMESPACE)


def test_without_a_site_trust_file_there_is_none(state: SiteState, tmp_path: Path) -> None:
    _, armored = _signed(tmp_path / "release")
    assert _site_trust(state, MANIFEST, armored, SIGNER) is None


def test_the_site_file_naming_both_keys_of_a_rotation_is_the_hosts_trust(
    state: SiteState, tmp_path: Path
) -> None:
    old, _ = _signed(tmp_path / "old")
    new, armored = _signed(tmp_path / "new")
    site_file = state.path("bundle-key", "allowed_signers")
    site_file.parent.mkdir(parents=True)
    site_file.write_text(old.allowed_signers.read_text() + new.allowed_signers.read_text())
    assert _site_trust(state, MANIFEST, armored, SIGNER) == site_file


def test_a_site_file_that_does_not_name_the_signer_is_not_used(state: SiteState, tmp_path: Path) -> None:
    other, _ = _signed(tmp_path / "other")
    _, armored = _signed(tmp_path / "release")
    site_file = state.path("bundle-key", "allowed_signers")
    site_file.parent.mkdir(parents=True)
    site_file.write_text(other.allowed_signers.read_text())
    assert _site_trust(state, MANIFEST, armored, SIGNER) is None
