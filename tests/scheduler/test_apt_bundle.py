"""The bundle's apt repository verifies like every other bundle file, and a tampered .deb or index is
refused. The repository is the real one (`apt.build_apt_repository`, the role packages and their
closure, cached in ~/.cache/aifactory/debs like tests/scheduler/test_apt_repo.py), sealed with the
code that seals real bundles (`pack.seal`), as the bundle build does for `apt/`."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.bundle import apt, verify_bundle
from aifactory.bundle.manifest import BundleVersion
from aifactory.bundle.pack import Header, PayloadFile, seal
from aifactory.errors import BundleError

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt tools")

CACHE = Path.home() / ".cache" / "aifactory" / "debs"
STAMP = 1_700_000_000


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle with the apt repository, allowed_signers)."""
    root = tmp_path_factory.mktemp("aptbundle")
    repo = root / "apt"
    debs = apt.build_apt_repository(repo, cache=CACHE, timestamp=STAMP)
    payload = {f"apt/{deb.path.name}": PayloadFile(deb.path, "deb") for deb in debs}
    payload.update(
        {
            f"apt/{index.name}": PayloadFile(index, "apt-index")
            for index in sorted(repo.iterdir())
            if index.suffix != ".deb"
        }
    )
    keys = signing.generate_keypair(
        root / "key", identity="release@sched.example", namespaces="aifactory-bundle"
    )
    header = Header(
        site="aptlab",
        version=BundleVersion.parse("1.0"),
        created="2023-11-14T22:13:20Z",
        timestamp=STAMP,
        plan_digest="sha256:" + "0" * 64,
        spec_digest="sha256:" + "1" * 64,
        aifactory_version="test",
        contents={},
    )
    seal(
        payload, header, key=signing.load_private_key(keys.private), output=root / "b.tar", work=root / "meta"
    )
    return root / "b.tar", keys.allowed_signers


def _flip(bundle: Path, member_prefix: str, target: Path) -> str:
    shutil.copyfile(bundle, target)
    with tarfile.open(target) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith(member_prefix))
        offset = member.offset_data + member.size // 2
    with target.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    return member.name


def test_the_apt_repository_verifies_with_the_bundle(sealed: tuple[Path, Path]) -> None:
    bundle, trust = sealed
    report = verify_bundle(bundle, trust=trust, check_rollback=False)
    assert report is not None
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert any("apt/slurmd_" in n for n in names) and any(n.endswith("apt/Packages") for n in names)


@pytest.mark.parametrize("member", ["apt/slurmd_", "apt/munge_", "apt/Packages"])
def test_a_tampered_deb_or_index_is_refused(sealed: tuple[Path, Path], tmp_path: Path, member: str) -> None:
    bundle, trust = sealed
    tampered = tmp_path / "tampered.tar"
    name = _flip(bundle, _member_name(bundle, member), tampered)
    with pytest.raises(BundleError) as caught:
        verify_bundle(tampered, trust=trust, check_rollback=False)
    assert Path(name).name in caught.value.render()


def _member_name(bundle: Path, suffix: str) -> str:
    with tarfile.open(bundle) as tar:
        return next(m.name for m in tar.getmembers() if suffix in m.name)
