"""zstd bundles: reproducible, verified and imported like uncompressed ones, damage refused."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from aifactory.bundle import import_bundle, verify_bundle
from aifactory.bundle.manifest import SUMS
from aifactory.bundle.verify import ssh_keygen_check
from aifactory.errors import BundleError
from aifactory.state import SiteState

from .conftest import Signer, SmallBundle

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd tool")


def test_a_zstd_bundle_is_reproducible_and_decompresses_to_the_plain_one(small_bundle: SmallBundle) -> None:
    compressed = small_bundle(compress="zstd")
    assert compressed.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert small_bundle(compress="zstd").read_bytes() == compressed.read_bytes()
    plain = subprocess.run(["zstd", "-dc", str(compressed)], capture_output=True, check=True).stdout
    assert plain == small_bundle().read_bytes()


def test_a_zstd_bundle_verifies_and_imports(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    bundle = small_bundle(compress="zstd", part_size=512)  # the sample files compress to about 1.5 kB
    report = verify_bundle(bundle, trust=signer.allowed_signers, check_rollback=False)
    assert report.ok and report.files == 4 and len(report.parts) > 1
    state = SiteState.for_site("tamperlab", home=tmp_path / "state")
    imported = import_bundle(bundle, trust=signer.allowed_signers, site_state=state, home=tmp_path / "home")
    subprocess.run(["sha256sum", "--quiet", "--strict", "-c", SUMS], cwd=imported.root, check=True)
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["tamperlab"]  # no decompressed copy left


def test_damage_inside_the_compressed_stream_is_refused(small_bundle: SmallBundle, signer: Signer) -> None:
    """Refused before anything is decompressed: the seal covers the compressed bytes."""
    bundle = small_bundle(compress="zstd")
    data = bytearray(bundle.read_bytes())
    data[len(data) // 4] ^= 0xFF  # inside the compressed stream, before the seal
    bundle.write_bytes(bytes(data))
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle, trust=signer.allowed_signers, check_rollback=False)
    assert caught.value.code == "seal-mismatch"
    assert "nothing was decompressed" in (caught.value.hint or "")


def test_a_cut_compressed_bundle_is_refused(small_bundle: SmallBundle, signer: Signer) -> None:
    bundle = small_bundle(compress="zstd")
    bundle.write_bytes(bundle.read_bytes()[:-100])
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle, trust=signer.allowed_signers, check_rollback=False)
    assert caught.value.code == "seal-missing"


def test_a_compressed_bundle_without_a_seal_is_refused_and_its_tar_still_verifies(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    """What an older aifactory wrote (a zstd stream, no seal): refused, not expanded; the way back is
    `zstd -d` and the plain tar, whose signature is checked before anything is unpacked."""
    plain = small_bundle()
    old = tmp_path / "old.tar.zst"
    subprocess.run(["zstd", "-q", "-o", str(old), str(plain)], check=True)
    with pytest.raises(BundleError) as caught:
        verify_bundle(old, trust=signer.allowed_signers, check_rollback=False)
    assert caught.value.code == "seal-missing"
    subprocess.run(["zstd", "-q", "-d", "-o", str(tmp_path / "old.tar"), str(old)], check=True)
    assert verify_bundle(tmp_path / "old.tar", trust=signer.allowed_signers, check_rollback=False).ok


def test_a_seal_from_another_build_is_refused(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    first = small_bundle(compress="zstd").read_bytes()
    second = small_bundle(compress="zstd", version="2.1").read_bytes()
    swapped = tmp_path / "swapped.tar.zst"
    swapped.write_bytes(first[: _seal_start(first)] + second[_seal_start(second) :])
    with pytest.raises(BundleError) as caught:
        verify_bundle(swapped, trust=signer.allowed_signers, check_rollback=False)
    assert caught.value.code == "seal-mismatch"


def _seal_start(data: bytes) -> int:
    (length,) = struct.unpack_from("<I", data, len(data) - 12)
    return len(data) - 12 - length - 8


def test_the_stock_tool_checks_a_compressed_bundles_manifest_once_its_seal_verifies(
    small_bundle: SmallBundle, signer: Signer
) -> None:
    message = ssh_keygen_check(
        small_bundle(compress="zstd"), trust=signer.allowed_signers, identity=signer.identity
    )
    assert f'Good "aifactory-bundle" signature for {signer.identity}' in message
