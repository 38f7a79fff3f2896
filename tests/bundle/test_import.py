"""Import: atomic, versioned, recorded; a failed import leaves the previous one as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from aifactory.bundle import current_import, import_bundle
from aifactory.bundle.manifest import SUMS
from aifactory.chain import verify_chain
from aifactory.errors import BundleError
from aifactory.state import SiteState

from .conftest import Signer, SmallBundle
from .test_tamper import PAYLOAD, flip_byte_in_place


@pytest.fixture
def state(tmp_path: Path) -> SiteState:
    return SiteState.for_site("tamperlab", home=tmp_path / "state")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_import_unpacks_a_versioned_checkable_tree(
    small_bundle: SmallBundle, signer: Signer, state: SiteState, tmp_path: Path
) -> None:
    imported = import_bundle(
        small_bundle(version="5"), trust=signer.allowed_signers, site_state=state, home=tmp_path / "home"
    )
    assert imported.root == tmp_path / "home" / "tamperlab" / "5"
    assert (tmp_path / "home" / "tamperlab" / "current").resolve() == imported.root
    assert imported.wheelhouse.joinpath("demo-1.0-py3-none-any.whl").is_file()
    assert imported.plan_path.read_text() == '{"site": "tamperlab"}\n'
    subprocess.run(["sha256sum", "--quiet", "--strict", "-c", SUMS], cwd=imported.root, check=True)
    index = (imported.root / "simple" / "demo" / "index.html").read_text()
    assert 'href="../../wheels/demo-1.0-py3-none-any.whl#sha256=' in index
    assert current_import(state) == imported
    assert not list((tmp_path / "home" / "tamperlab").glob(".staging-*"))
    records = [json.loads(line) for line in state.operator_log.read_text().splitlines()]
    assert records[-1]["command"] == "bundle import" and records[-1]["result"] == "ok"
    assert records[-1]["bundle_digest"] == imported.digest
    assert verify_chain(state.operator_log).ok


def test_a_failed_import_leaves_the_previous_one_untouched(
    small_bundle: SmallBundle, signer: Signer, state: SiteState, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = import_bundle(
        small_bundle(version="1"), trust=signer.allowed_signers, site_state=state, home=home
    )
    before = tree(first.root)
    bad = flip_byte_in_place(small_bundle(version="2"), PAYLOAD)
    with pytest.raises(BundleError) as caught:
        import_bundle(bad, trust=signer.allowed_signers, site_state=state, home=home)
    assert caught.value.code == "hash-mismatch"
    assert current_import(state) == first and tree(first.root) == before
    assert sorted(p.name for p in (home / "tamperlab").iterdir()) == ["1", "current"]
    records = [json.loads(line) for line in state.operator_log.read_text().splitlines()]
    assert records[-1]["result"] == "refused: hash-mismatch"


def test_importing_the_same_bundle_again_changes_nothing(
    small_bundle: SmallBundle, signer: Signer, state: SiteState, tmp_path: Path
) -> None:
    bundle = small_bundle(version="7")
    first = import_bundle(bundle, trust=signer.allowed_signers, site_state=state, home=tmp_path / "home")
    before = tree(first.root)
    again = import_bundle(bundle, trust=signer.allowed_signers, site_state=state, home=tmp_path / "home")
    assert again == first and tree(first.root) == before


def test_a_newer_bundle_becomes_current(
    small_bundle: SmallBundle, signer: Signer, state: SiteState, tmp_path: Path
) -> None:
    old = import_bundle(
        small_bundle(version="1.9"), trust=signer.allowed_signers, site_state=state, home=tmp_path / "home"
    )
    new = import_bundle(
        small_bundle(version="1.10"), trust=signer.allowed_signers, site_state=state, home=tmp_path / "home"
    )
    assert current_import(state) == new and old.root.is_dir()
    assert (tmp_path / "home" / "tamperlab" / "current").resolve() == new.root


def test_a_bundle_for_another_site_is_refused(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    other = SiteState.for_site("othersite", home=tmp_path / "state")
    with pytest.raises(BundleError) as caught:
        import_bundle(small_bundle(), trust=signer.allowed_signers, site_state=other, home=tmp_path / "home")
    assert caught.value.code == "site-mismatch"
    assert current_import(other) is None


def test_nothing_imported_yet(tmp_path: Path) -> None:
    assert current_import(SiteState.for_site("fresh", home=tmp_path)) is None
