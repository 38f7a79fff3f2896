"""Verify a bundle before anything in it is used (SI-7 software integrity, CM-14 signed components).

Checks, in order, all reported together (each problem names the file, the check, what was expected
and what was found):
  1. parts: every part of a split bundle is present;
  2. archive: no absolute paths, `..`, links, device files, duplicates or truncation;
  3. signature: manifest.json.sig is a valid SSHSIG (namespace aifactory-bundle) by a key in the
     trust file;
  4. contents: every file the manifest lists is present with its size and SHA-256 (hashed on every
     core), nothing else is there, and SHA256SUMS agrees with the manifest;
  5. anti-rollback: the version is not older than the newest one imported for the site (and the same
     version is not different content), unless a valid signed activation record authorizes exactly
     that site, version and content (aifactory.lifecycle.activation).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

from aifactory import signing
from aifactory.bundle import archive, zstd
from aifactory.bundle.hashing import Range, hash_ranges
from aifactory.bundle.import_record import ImportRecord, last_import, newest_import
from aifactory.bundle.manifest import (
    MANIFEST,
    MAX_METADATA_BYTES,
    METADATA_FILES,
    NAMESPACE,
    SIGNATURE,
    SUMS,
    Manifest,
    digest_of,
)
from aifactory.bundle.seal import Seal, open_seal
from aifactory.bundle.source import PartsReader, find_parts
from aifactory.errors import BundleError, Location, PrerequisiteError, Problem
from aifactory.lifecycle.activation import ActivationVerdict, activation_allows
from aifactory.state import SiteState


@dataclass
class VerifyReport:
    bundle: str
    parts: list[str]
    problems: list[Problem] = field(default_factory=list)
    manifest: Manifest | None = None
    digest: str | None = None  # sha256 of manifest.json
    signer: str | None = None
    files: int = 0
    payload_bytes: int = 0
    archive_bytes: int = 0
    seconds: float = 0.0
    previous: ImportRecord | None = None
    activation: ActivationVerdict | None = None  # the record that let an older version past anti-rollback

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def version(self) -> str | None:
        return self.manifest.version.text if self.manifest else None

    @property
    def site(self) -> str | None:
        return self.manifest.site if self.manifest else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "parts": self.parts,
            "ok": self.ok,
            "site": self.site,
            "version": self.version,
            "digest": self.digest,
            "signer": self.signer,
            "files": self.files,
            "payload_bytes": self.payload_bytes,
            "archive_bytes": self.archive_bytes,
            "seconds": round(self.seconds, 3),
            "previous_import": self.previous.as_dict() if self.previous else None,
            "problems": [p.as_dict() for p in self.problems],
        } | ({"activation": self.activation.as_dict()} if self.activation else {})

    def raise_if_failed(self) -> None:
        if self.problems:
            first = self.problems[0]
            raise BundleError(
                f"bundle {self.bundle} failed verification ({len(self.problems)} problem"
                f"{'s' if len(self.problems) > 1 else ''}; first: {first.message})",
                code=first.code,
                location=first.location,
                hint=first.hint,
                problems=self.problems,
            )


class BundleChecks(TypedDict, total=False):
    """The keywords of `verify_bundle` and `inspect_bundle` (defaults in `inspect_bundle`)."""

    trust: Required[Path]
    site_state: SiteState | None
    check_rollback: bool
    workers: int | None
    name: str | None


def verify_bundle(path: Path | str, **checks: Unpack[BundleChecks]) -> VerifyReport:
    """Verify and return the report; raise BundleError listing every problem when any check fails.

    Anti-rollback uses `site_state` (default: the state folder of the site the manifest names).
    `name` is how errors call the bundle (default: its path)."""
    report = inspect_bundle(path, **checks)
    report.raise_if_failed()
    return report


def inspect_bundle(
    path: Path | str,
    *,
    trust: Path,
    site_state: SiteState | None = None,
    check_rollback: bool = True,
    workers: int | None = None,
    name: str | None = None,
) -> VerifyReport:
    """Like verify_bundle, but return the report with its problems instead of raising."""
    started = time.monotonic()
    path = Path(path)
    parts = find_parts(path)
    report = VerifyReport(name or str(path), [str(p.path) for p in parts])
    try:
        with (
            expanded(path, trust=trust, name=report.bundle) as (plain, sealed),
            PartsReader(find_parts(plain)) as reader,
        ):
            report.archive_bytes = reader.size
            _verify_open(
                reader,
                report,
                trust=trust,
                site_state=site_state,
                check_rollback=check_rollback,
                workers=workers,
            )
            check_seal(sealed, report)
    except BundleError as error:  # the seal, or decompressing: nothing else was looked at
        report.problems.append(Problem(error.code, error.message, error.location, error.hint))
    report.archive_bytes = sum(p.size for p in parts)  # as carried (compressed or not)
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def expanded(
    bundle: Path, *, trust: Path, name: str, scratch: Path | None = None
) -> Iterator[tuple[Path, Seal | None]]:
    """(the plain tar, None) for an uncompressed bundle. For a zstd bundle: check its seal (signature
    over the compressed bytes) first, then decompress into a temporary folder (in `scratch`, else
    $TMPDIR) no further than the size the seal states, and yield (that tar, the seal)."""
    parts = find_parts(bundle)
    if not zstd.is_zstd(parts):
        yield bundle, None
        return
    with PartsReader(parts) as reader:
        sealed = open_seal(reader, trust=trust, name=name)
    with tempfile.TemporaryDirectory(prefix=".decompress-", dir=scratch) as folder:
        plain = Path(folder) / "bundle.tar"
        zstd.decompress(parts, plain, name=name, end=sealed.compressed_bytes, limit=sealed.tar_bytes)
        yield plain, sealed


def check_seal(sealed: Seal | None, report: VerifyReport) -> None:
    """The seal and the manifest inside must name the same manifest (both are signed)."""
    if sealed is not None and report.digest is not None and report.digest != sealed.manifest:
        report.problems.append(
            Problem(
                "seal-mismatch",
                f"the seal names manifest {sealed.manifest}, the bundle holds {report.digest}",
                Location(file=report.bundle, path=MANIFEST),
                hint="the compressed bundle was assembled from two builds",
            )
        )


def _verify_open(
    reader: PartsReader,
    report: VerifyReport,
    *,
    trust: Path,
    site_state: SiteState | None,
    check_rollback: bool,
    workers: int | None,
) -> None:
    name = report.bundle
    stream = archive.buffered(reader)
    scanned = archive.scan(stream, size=reader.size, archive=name)
    report.problems += scanned.problems
    members = scanned.members
    absent = [m for m in METADATA_FILES if m not in members]
    if absent:
        report.problems.append(
            Problem(
                "missing-file",
                f"the bundle has no {', '.join(absent)} at its root",
                Location(file=name, path=absent[0]),
                hint="this is not an aifactory bundle, or it was cut short",
            )
        )
        return
    manifest_bytes = archive.read_member(stream, members[MANIFEST], limit=MAX_METADATA_BYTES)
    signature = archive.read_member(stream, members[SIGNATURE], limit=MAX_METADATA_BYTES)
    sums = archive.read_member(stream, members[SUMS], limit=MAX_METADATA_BYTES)
    report.digest = digest_of(manifest_bytes)
    report.signer = _check_signature(manifest_bytes, signature, trust, report)
    try:
        manifest = Manifest.parse(manifest_bytes, source=name)
    except BundleError as error:
        report.problems.append(Problem(error.code, error.message, error.location, error.hint))
        return
    report.manifest = manifest
    report.files = len(manifest.files)
    report.payload_bytes = sum(f.size for f in manifest.files)
    _check_contents(reader, members, manifest, report, workers=workers)
    expected_sums = manifest.sums(report.digest.removeprefix("sha256:"))
    if sums != expected_sums:
        report.problems.append(
            Problem(
                "sums-mismatch",
                "SHA256SUMS does not agree with the signed manifest",
                Location(file=name, path=SUMS),
                hint="SHA256SUMS was altered; the manifest is what is signed",
            )
        )
    if check_rollback and report.signer is not None:
        state = site_state or SiteState.for_site(manifest.site)
        rollback_problems(manifest, report, state, trust=trust)


def ssh_keygen_check(path: Path | str, *, trust: Path, identity: str) -> str:
    """Check the manifest's signature with the stock `ssh-keygen -Y verify` as well (an auditor's
    second opinion, independent of aifactory's own SSHSIG code). Returns ssh-keygen's message.
    A zstd bundle is expanded as `verify` expands it: only once its seal verifies."""
    with (
        expanded(Path(path), trust=trust, name=str(path)) as (plain, _sealed),
        PartsReader(find_parts(plain)) as reader,
        tempfile.TemporaryDirectory(prefix="aifactory-sshsig-") as scratch,
    ):
        stream = archive.buffered(reader)
        members = archive.scan(stream, size=reader.size, archive=str(path)).members
        for name in (MANIFEST, SIGNATURE):
            if name not in members:
                raise BundleError(
                    f"the bundle has no {name}",
                    code="missing-file",
                    location=Location(file=str(path), path=name),
                )
            data = archive.read_member(stream, members[name], limit=MAX_METADATA_BYTES)
            Path(scratch, name).write_bytes(data)
        try:
            done = signing.ssh_keygen_verify(
                Path(scratch, MANIFEST),
                Path(scratch, SIGNATURE),
                allowed_signers=trust,
                identity=identity,
                namespace=NAMESPACE,
            )
        except FileNotFoundError:
            raise PrerequisiteError("ssh-keygen is not installed", hint="install openssh-client") from None
    message = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise BundleError(
            f"ssh-keygen -Y verify refused the manifest signature: {message}",
            code="signature-invalid",
            location=Location(file=str(path), path=SIGNATURE),
        )
    return message


def _check_signature(
    manifest_bytes: bytes, signature: bytes, trust: Path, report: VerifyReport
) -> str | None:
    where = Location(file=report.bundle, path=SIGNATURE)
    try:
        armored = signature.decode("ascii")
        parsed = signing.parse_signature(armored)
    except (UnicodeDecodeError, signing.SignatureError) as exc:
        message = exc.message if isinstance(exc, signing.SignatureError) else "not ASCII text"
        report.problems.append(
            Problem(
                "signature-invalid",
                f"manifest.json.sig is not a usable signature: {message}",
                where,
                hint="the signature was altered or replaced",
            )
        )
        return None
    try:
        # The manifest does not name its signer: the trust file's own name for the key is the signer,
        # checked as `ssh-keygen -Y verify -I <that name>` checks it (namespace, validity window).
        return signing.verify(manifest_bytes, armored, allowed_signers=trust, namespace=NAMESPACE)
    except signing.SignerUntrusted as exc:
        report.problems.append(
            Problem(
                "signature-untrusted",
                f"signed by key {signing.fingerprint(parsed.public_key)}, which {trust} does not trust "
                f"for bundles: {exc.message}",
                where,
                hint="check that you were given the right allowed_signers file and bundle",
            )
        )
        return None
    except signing.SignatureError as exc:
        report.problems.append(
            Problem(
                "signature-invalid",
                f"manifest.json.sig does not verify: {exc.message}",
                where,
                hint="the manifest or its signature was altered",
            )
        )
        return None


def _check_contents(
    reader: PartsReader,
    members: dict[str, archive.Member],
    manifest: Manifest,
    report: VerifyReport,
    *,
    workers: int | None,
) -> None:
    name = report.bundle
    listed = manifest.by_path
    for path in sorted(set(members) - set(listed) - set(METADATA_FILES)):
        report.problems.append(
            Problem(
                "extra-file",
                "this file is in the archive but not in the signed manifest",
                Location(file=name, path=path),
                hint="something was added to the bundle",
            )
        )
    ranges: dict[str, Range] = {}
    for path, entry in sorted(listed.items()):
        member = members.get(path)
        if member is None:
            if not any(p.location.path == path for p in report.problems):
                report.problems.append(
                    Problem(
                        "missing-file",
                        "the signed manifest lists this file; the archive does not hold it",
                        Location(file=name, path=path),
                        hint="something was removed or renamed",
                    )
                )
        elif member.size != entry.size:
            report.problems.append(
                Problem(
                    "size-mismatch",
                    f"expected {entry.size} bytes, found {member.size}",
                    Location(file=name, path=path),
                    hint="the file was altered",
                )
            )
        else:
            ranges[path] = Range(reader.pread, member.data_offset, member.size)
    digests = hash_ranges(ranges, workers=workers)
    for path, digest in sorted(digests.items()):
        expected = listed[path].sha256
        if digest.sha256 != expected:
            report.problems.append(
                Problem(
                    "hash-mismatch",
                    f"SHA-256 expected {expected}, found {digest.sha256}",
                    Location(file=name, path=path),
                    hint="the file was altered",
                )
            )


def rollback_problems(manifest: Manifest, report: VerifyReport, state: SiteState, *, trust: Path) -> None:
    """Refuse a version older than the newest the site imported (or that version with other content),
    unless a valid activation record signed by a key in `trust` authorizes exactly this one."""
    report.previous = last_import(state)
    newest = newest_import(state)
    if newest is None:
        return
    where = Location(file=report.bundle, path=MANIFEST)
    if manifest.version < newest.bundle_version:
        verdict = activation_allows(
            state, version=manifest.version.text, digest=report.digest or "", trust=trust
        )
        if verdict.allowed:
            report.activation = verdict
            return
        missing = verdict.code == "activation-missing"
        report.problems.append(
            Problem(
                "rollback" if missing else verdict.code,
                f"version {manifest.version} is older than {newest.version}, already imported for "
                f"site {state.site} on {newest.imported_at}; {verdict.message}",
                where if missing else Location(file=str(verdict.path)),
                hint=(
                    "an older bundle may lack security fixes; build a newer one, or authorize this "
                    f"version deliberately: aifactory activation authorize {state.site} --to "
                    f"{manifest.version} --reason TEXT --key KEY --trust ALLOWED_SIGNERS"
                    if missing
                    else "sign a new activation record for exactly this site and version "
                    "(aifactory activation authorize); see docs/operations.md"
                ),
            )
        )
    elif manifest.version == newest.bundle_version and report.digest != newest.digest:
        report.problems.append(
            Problem(
                "rollback",
                f"version {manifest.version} was already imported with different content "
                f"({newest.digest}, this bundle is {report.digest})",
                where,
                hint="give each build its own, higher --bundle-version",
            )
        )
