"""The tamper corpus: every altered bundle is refused, each with the reason that names what changed.

Each case starts from a validly signed small bundle (sealed by the same code as real bundles) and
changes one thing, the way an attacker or a bad copy would.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from aifactory.bundle import import_bundle, verify_bundle
from aifactory.bundle.manifest import MANIFEST, SIGNATURE
from aifactory.errors import BundleError
from aifactory.state import SiteState

from .conftest import Signer, SmallBundle, make_signer

Entry = tuple[tarfile.TarInfo, bytes]
PAYLOAD = "wheels/demo-1.0-py3-none-any.whl"


def read_entries(bundle: Path) -> list[Entry]:
    entries = []
    with tarfile.open(bundle) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            entries.append((member, handle.read() if handle else b""))
    return entries


def write_entries(entries: list[Entry], target: Path) -> Path:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return target


def rewrite(bundle: Path, change: Callable[[list[Entry]], list[Entry]]) -> Path:
    return write_entries(change(read_entries(bundle)), bundle.with_name("tampered.tar"))


def flip_byte_in_place(bundle: Path, member: str, *, at: int = 100) -> Path:
    with tarfile.open(bundle) as tar:
        offset = tar.getmember(member).offset_data + at
    with bundle.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    return bundle


def refusal(bundle: Path, trust: Path, state: SiteState | None = None) -> BundleError:
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle, trust=trust, site_state=state, check_rollback=state is not None)
    return caught.value


def codes(error: BundleError) -> set[str]:
    return {p.code for p in error.problems} or {error.code}


def regular(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_the_untampered_bundle_verifies(small_bundle: SmallBundle, signer: Signer) -> None:
    report = verify_bundle(small_bundle(), trust=signer.allowed_signers, check_rollback=False)
    assert report.ok and report.signer == signer.identity and report.files == 4


def test_one_byte_flipped_in_a_payload_file(small_bundle: SmallBundle, signer: Signer) -> None:
    error = refusal(flip_byte_in_place(small_bundle(), PAYLOAD), signer.allowed_signers)
    assert codes(error) == {"hash-mismatch"}
    assert error.problems[0].location.path == PAYLOAD
    assert "expected" in error.problems[0].message and "found" in error.problems[0].message


def test_one_byte_flipped_in_the_manifest(small_bundle: SmallBundle, signer: Signer) -> None:
    error = refusal(flip_byte_in_place(small_bundle(), MANIFEST, at=30), signer.allowed_signers)
    assert error.code == "signature-invalid"
    assert error.problems[0].location.path == SIGNATURE


def test_one_byte_flipped_in_the_signature(small_bundle: SmallBundle, signer: Signer) -> None:
    error = refusal(flip_byte_in_place(small_bundle(), SIGNATURE, at=120), signer.allowed_signers)
    assert codes(error) == {"signature-invalid"}


def test_a_file_replaced_by_other_content(small_bundle: SmallBundle, signer: Signer) -> None:
    def replace(entries: list[Entry]) -> list[Entry]:
        return [(i, b"X" * len(d)) if i.name == PAYLOAD else (i, d) for i, d in entries]

    error = refusal(rewrite(small_bundle(), replace), signer.allowed_signers)
    assert codes(error) == {"hash-mismatch"} and error.problems[0].location.path == PAYLOAD


def test_a_file_added(small_bundle: SmallBundle, signer: Signer) -> None:
    added = regular("wheels/evil-1.0-py3-none-any.whl", b"x")
    error = refusal(rewrite(small_bundle(), lambda e: e + [added]), signer.allowed_signers)
    assert codes(error) == {"extra-file"}
    assert error.problems[0].location.path == "wheels/evil-1.0-py3-none-any.whl"


def test_a_file_removed(small_bundle: SmallBundle, signer: Signer) -> None:
    error = refusal(
        rewrite(small_bundle(), lambda e: [x for x in e if x[0].name != PAYLOAD]), signer.allowed_signers
    )
    assert codes(error) == {"missing-file"} and error.problems[0].location.path == PAYLOAD


def test_a_file_renamed(small_bundle: SmallBundle, signer: Signer) -> None:
    def rename(entries: list[Entry]) -> list[Entry]:
        for info, _data in entries:
            if info.name == PAYLOAD:
                info.name = "wheels/renamed-1.0-py3-none-any.whl"
        return entries

    error = refusal(rewrite(small_bundle(), rename), signer.allowed_signers)
    assert {(p.code, p.location.path) for p in error.problems} == {
        ("extra-file", "wheels/renamed-1.0-py3-none-any.whl"),
        ("missing-file", PAYLOAD),
    }


def test_a_truncated_archive(small_bundle: SmallBundle, signer: Signer) -> None:
    bundle = small_bundle()
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    assert "truncated" in codes(refusal(bundle, signer.allowed_signers))


def test_an_archive_missing_only_its_end_marker(small_bundle: SmallBundle, signer: Signer) -> None:
    bundle = small_bundle()
    with tarfile.open(bundle) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    bundle.write_bytes(bundle.read_bytes()[:end])
    assert codes(refusal(bundle, signer.allowed_signers)) == {"truncated"}


def test_data_appended_after_the_end_of_the_archive(small_bundle: SmallBundle, signer: Signer) -> None:
    bundle = small_bundle()
    with bundle.open("ab") as handle:
        handle.write(b"\0" * 512 + b"hidden member")
    assert codes(refusal(bundle, signer.allowed_signers)) == {"trailing-data"}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../outside.txt", "unsafe-path"),
        ("policies/../../outside.txt", "unsafe-path"),
        ("/etc/cron.d/evil", "unsafe-path"),
    ],
)
def test_paths_that_leave_the_tree(small_bundle: SmallBundle, signer: Signer, name: str, reason: str) -> None:
    added = regular(name, b"owned\n")
    error = refusal(rewrite(small_bundle(), lambda e: e + [added]), signer.allowed_signers)
    assert reason in codes(error)
    assert any(p.location.path == name for p in error.problems)


def test_a_symlink_escaping_the_tree(small_bundle: SmallBundle, signer: Signer) -> None:
    def add_link(entries: list[Entry]) -> list[Entry]:
        link = tarfile.TarInfo("files/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/shadow"
        return entries + [(link, b"")]

    error = refusal(rewrite(small_bundle(), add_link), signer.allowed_signers)
    assert codes(error) == {"link-outside-tree"}


def test_a_device_file(small_bundle: SmallBundle, signer: Signer) -> None:
    def add_device(entries: list[Entry]) -> list[Entry]:
        device = tarfile.TarInfo("files/sda")
        device.type, device.devmajor, device.devminor = tarfile.BLKTYPE, 8, 0
        return entries + [(device, b"")]

    assert codes(refusal(rewrite(small_bundle(), add_device), signer.allowed_signers)) == {"special-file"}


def test_a_duplicate_entry_that_would_shadow_a_verified_file(
    small_bundle: SmallBundle, signer: Signer
) -> None:
    shadow = regular(PAYLOAD, b"shadow")
    error = refusal(rewrite(small_bundle(), lambda e: e + [shadow]), signer.allowed_signers)
    assert "duplicate-entry" in codes(error)


def test_a_bundle_signed_by_an_untrusted_key(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    stranger = make_signer(tmp_path / "stranger", identity="someone@else.example")
    error = refusal(small_bundle(key=stranger.key), signer.allowed_signers)
    assert codes(error) == {"signature-untrusted"}
    assert str(signer.allowed_signers) in error.problems[0].message


def test_an_older_version_after_a_newer_was_imported(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    state = SiteState.for_site("tamperlab", home=tmp_path / "state")
    newer = import_bundle(
        small_bundle(version="2.10"), trust=signer.allowed_signers, site_state=state, home=tmp_path / "home"
    )
    older = small_bundle(version="2.9")  # validly signed, but 2.9 < 2.10
    error = refusal(older, signer.allowed_signers, state)
    assert codes(error) == {"rollback"} and "2.10" in error.problems[0].message
    with pytest.raises(BundleError):
        import_bundle(older, trust=signer.allowed_signers, site_state=state, home=tmp_path / "home")
    assert (newer.root / MANIFEST).is_file()
    assert sorted(p.name for p in (tmp_path / "home" / "tamperlab").iterdir()) == ["2.10", "current"]


def test_the_same_version_with_other_content_is_refused(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    state = SiteState.for_site("tamperlab", home=tmp_path / "state")
    import_bundle(
        small_bundle(version="3"), trust=signer.allowed_signers, site_state=state, home=tmp_path / "h"
    )
    other = small_bundle(version="3", files={"plan.json": b"{}\n"})
    assert codes(refusal(other, signer.allowed_signers, state)) == {"rollback"}


def test_a_split_bundle_missing_a_part(small_bundle: SmallBundle, signer: Signer) -> None:
    first = small_bundle(part_size=1024**2, files={"files/big.bin": b"\x07" * (3 * 1024**2)})
    parts = sorted(first.parent.glob("b.tar.part-*"))
    assert [p.name for p in parts][-1] == "b.tar.part-004-of-004"
    for missing in (parts[1], parts[-1]):  # a middle part, then the last one too
        missing.unlink()
        error = refusal(parts[0], signer.allowed_signers)
        assert error.code == "missing-part" and missing.name in error.message


@pytest.mark.parametrize(
    "line",
    [
        'valid-before="20200101",namespaces="aifactory-bundle"',  # expired
        'valid-after="20200101",namespaces="aifactory-audit"',  # another namespace
        'cert-authority,namespaces="aifactory-bundle"',  # a CA line grants no plain key
        "namespaces=aifactory-bundle",  # an unquoted value: OpenSSH cannot read the line
    ],
)
def test_trust_lines_ssh_keygen_refuses_are_refused(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path, line: str
) -> None:
    identity, _options, key = signer.allowed_signers.read_text().strip().split(" ", 2)
    trust = tmp_path / "allowed_signers"
    trust.write_text(f"{identity} {line} {key}\n")
    error = refusal(small_bundle(), trust)
    assert codes(error) == {"signature-untrusted"}


def test_the_signer_is_the_name_the_trust_file_gives_the_key(
    small_bundle: SmallBundle, signer: Signer, tmp_path: Path
) -> None:
    _identity, options, key = signer.allowed_signers.read_text().strip().split(" ", 2)
    trust = tmp_path / "allowed_signers"
    trust.write_text(f"!ops@lab,*@lab {options} {key}\nops@lab,*@lab {options} {key}\n")
    report = verify_bundle(small_bundle(), trust=trust, check_rollback=False)
    assert report.signer == "ops@lab"  # a name `ssh-keygen -Y verify -I ops@lab` accepts (line 2)


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_directory_entry_named_like_a_listed_file(
    small_bundle: SmallBundle, signer: Signer, where: str
) -> None:
    directory = tarfile.TarInfo(PAYLOAD)
    directory.type = tarfile.DIRTYPE
    directory.mode = 0o755
    entry = (directory, b"")
    change = (lambda e: [entry, *e]) if where == "before" else (lambda e: [*e, entry])
    error = refusal(rewrite(small_bundle(), change), signer.allowed_signers)
    assert "unexpected-directory" in codes(error)
    assert any(p.location.path == PAYLOAD for p in error.problems)
