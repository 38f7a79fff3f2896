"""Split bundles for removable media: parts verify as one bundle and `cat` rejoins them byte for byte."""

from __future__ import annotations

import subprocess

import pytest

from aifactory.bundle import verify_bundle
from aifactory.bundle.source import DEFAULT_PART_SIZE, FAT32_LIMIT, parse_size
from aifactory.errors import BundleError, UsageError

from .conftest import Signer, SmallBundle

BIG = {"files/model.bin": bytes(range(251)) * 12_000, "plan.json": b"{}\n"}  # about 3 MB


def test_parts_verify_and_rejoin_into_the_single_file_bundle(
    small_bundle: SmallBundle, signer: Signer
) -> None:
    whole = small_bundle(files=BIG)
    first = small_bundle(files=BIG, part_size=1024**2)
    parts = sorted(first.parent.glob("b.tar.part-*"))
    assert [p.name for p in parts] == [
        "b.tar.part-001-of-003",
        "b.tar.part-002-of-003",
        "b.tar.part-003-of-003",
    ]
    assert all(p.stat().st_size <= 1024**2 for p in parts)
    for given in (parts[0], parts[2], first.parent / "b.tar"):  # any part, or the base name
        report = verify_bundle(given, trust=signer.allowed_signers, check_rollback=False)
        assert report.ok and report.parts == [str(p) for p in parts]
    joined = first.parent / "joined.tar"
    subprocess.run(f"cat {first.parent}/b.tar.part-* > {joined}", shell=True, check=True)
    assert joined.read_bytes() == whole.read_bytes()


def test_a_part_from_another_bundle_is_refused(small_bundle: SmallBundle, signer: Signer) -> None:
    one = small_bundle(files=BIG, part_size=1024**2)
    other = small_bundle(
        files={**BIG, "files/model.bin": bytes(range(250, -1, -1)) * 12_000}, part_size=1024**2
    )
    middle = "b.tar.part-002-of-003"
    (other.parent / middle).replace(one.parent / middle)
    with pytest.raises(BundleError) as caught:
        verify_bundle(one, trust=signer.allowed_signers, check_rollback=False)
    assert {(p.code, p.location.path) for p in caught.value.problems} == {
        ("hash-mismatch", "files/model.bin")
    }


def test_default_part_size_fits_fat32() -> None:
    assert DEFAULT_PART_SIZE < FAT32_LIMIT


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("3900M", 3_900_000_000),
        ("3.5GiB", int(3.5 * 1024**3)),
        ("1000000000", 1_000_000_000),
        ("700MiB", 700 * 1024**2),
    ],
)
def test_part_sizes_are_read_with_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "-1G", "10K", "3.9 parsecs"])
def test_bad_part_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)
