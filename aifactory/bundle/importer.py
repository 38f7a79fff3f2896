"""Import a verified bundle on the site's control host.

    <bundles home>/<site>/<version>/      (default home /var/lib/aifactory/bundles; AIFACTORY_BUNDLES_HOME)
        manifest.json  manifest.json.sig  SHA256SUMS   (`sha256sum -c SHA256SUMS` passes here)
        plan.json  sbom.cdx.json  policies/  files/  apt/
        wheels/                           local package index: pip install --no-index --find-links wheels/
        simple/                           the same wheels as a PEP 503 index (--index-url file://.../simple)
        collections/*.tar.gz              the collection tarballs as carried
        collections/ansible_collections/  the same, unpacked: ANSIBLE_COLLECTIONS_PATH=<version>/collections
    <bundles home>/<site>/current  ->  <version>

The import verifies the bundle (seal, signature, hashes) before writing under any site's state
folder, then holds the site lock, checks anti-rollback, unpacks into
a staging folder beside the target while hashing every file again (so a bundle swapped after
verification is still caught), then renames the staging folder into place and records it in the
site's state. A failed import removes its staging folder and leaves the previous import untouched.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from packaging.utils import canonicalize_name, parse_wheel_filename

from aifactory.bundle import archive
from aifactory.bundle.hashing import Range, hash_range
from aifactory.bundle.import_record import ImportRecord, last_import, save_import
from aifactory.bundle.manifest import MANIFEST, METADATA_FILES, Manifest
from aifactory.bundle.source import PartsReader, find_parts
from aifactory.bundle.verify import VerifyReport, check_seal, expanded, inspect_bundle, rollback_problems
from aifactory.digests import sha256_file
from aifactory.errors import AifactoryError, BundleError, Location, StateError
from aifactory.state import SiteState

DEFAULT_HOME = Path("/var/lib/aifactory/bundles")
RECORD = ".aifactory-import.json"


def bundles_home() -> Path:
    explicit = os.environ.get("AIFACTORY_BUNDLES_HOME")
    return Path(explicit) if explicit else DEFAULT_HOME


@dataclass(frozen=True)
class ImportedBundle:
    site: str
    version: str
    digest: str
    root: Path

    @property
    def wheelhouse(self) -> Path:
        return self.root / "wheels"

    @property
    def index_url(self) -> str:
        return (self.root / "simple").as_uri() + "/"

    @property
    def collections_path(self) -> Path:
        return self.root / "collections"

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def policies_path(self) -> Path:
        return self.root / "policies"

    @property
    def apt_repo(self) -> Path | None:
        return self.root / "apt" if (self.root / "apt" / "Packages").is_file() else None

    @property
    def files_path(self) -> Path:
        return self.root / "files"

    def manifest(self) -> Manifest:
        return Manifest.parse((self.root / MANIFEST).read_bytes(), source=str(self.root))

    def pip_install_args(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.wheelhouse)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "version": self.version,
            "digest": self.digest,
            "root": str(self.root),
            "wheelhouse": str(self.wheelhouse),
            "index_url": self.index_url,
            "collections_path": str(self.collections_path),
            "plan_path": str(self.plan_path),
            "policies_path": str(self.policies_path),
            "apt_repo": str(self.apt_repo) if self.apt_repo else None,
        }


def current_import(site_state: SiteState) -> ImportedBundle | None:
    """The bundle in use for the site, or None when none was imported yet."""
    record = last_import(site_state)
    if record is None:
        return None
    root = Path(record.root)
    if not (root / RECORD).is_file():
        raise StateError(
            f"the imported bundle {record.version} of site {record.site} is gone from {root}",
            location=Location(file=str(root)),
            hint="import the bundle again with `aifactory bundle import`",
        )
    return ImportedBundle(record.site, record.version, record.digest, root)


def import_bundle(
    bundle: Path | str,
    *,
    trust: Path,
    site_state: SiteState | None = None,
    home: Path | None = None,
    workers: int | None = None,
) -> ImportedBundle:
    """Verify, unpack into <home>/<site>/<version> atomically, record it; return the import.

    Nothing is written under any site's state folder (not even its lock) before the bundle's
    signature verifies: until then the site its manifest names is only a claim."""
    home = home or bundles_home()
    name = str(bundle)
    _ensure_dir(home)
    with expanded(Path(bundle), trust=trust, name=name, scratch=home) as (plain, sealed):
        report = inspect_bundle(plain, trust=trust, check_rollback=False, workers=workers, name=name)
        check_seal(sealed, report)
        if report.signer is None or report.manifest is None:
            report.raise_if_failed()
        assert report.manifest is not None
        state = site_state or SiteState.for_site(report.manifest.site)
        with state.lock("bundle import"):
            try:
                # under the lock: imports are serialized
                rollback_problems(report.manifest, report, state, trust=trust)
                report.raise_if_failed()
                imported = _install(plain, report, home / state.site, site=state.site)
            except AifactoryError as error:
                state.record(
                    command="bundle import",
                    result=f"refused: {error.code}",
                    detail={"bundle": str(bundle), "error": error.message[:500]},
                )
                raise
            save_import(
                state,
                ImportRecord(
                    state.site,
                    imported.version,
                    imported.digest,
                    str(imported.root),
                    _now(),
                    report.signer or "",
                ),
            )
            _point_current(home / state.site, imported.version)
            state.record(
                command="bundle import",
                result="ok",
                bundle_digest=imported.digest,
                detail={
                    "version": imported.version,
                    "root": str(imported.root),
                    "signer": report.signer,
                }
                | (report.activation.citation() if report.activation else {}),
            )
    return imported


def use_imported(
    state: SiteState, *, version: str, digest: str, root: Path, imported_at: str
) -> ImportedBundle:
    """Make a version imported before the site's bundle in use again, importing no bytes: a rollback
    to it, or an aborted upgrade that left the hosts on it. Checked first (check_imported): nothing
    changes unless the folder is still that import.

    `newest.json` keeps the newest version ever imported, so anti-rollback still holds against it."""
    signer = check_imported(state, version=version, digest=digest, root=root)
    save_import(state, ImportRecord(state.site, version, digest, str(root), imported_at, signer))
    _point_current(root.parent, version)
    return ImportedBundle(state.site, version, digest, root)


def check_imported(state: SiteState, *, version: str, digest: str, root: Path) -> str:
    """That `root` is still the import of (state.site, version) with manifest digest `digest`: its
    import marker says so and its manifest hashes to it. The signer its import verified."""
    marker, manifest = root / RECORD, root / MANIFEST
    try:
        recorded = json.loads(marker.read_text())
        found = "sha256:" + sha256_file(manifest)
    except (OSError, ValueError) as exc:
        raise StateError(
            f"the imported bundle {version} of site {state.site} is not usable in {root}: {exc}",
            code="import-missing",
            location=Location(file=str(root)),
            hint="import the bundle of that version again (aifactory bundle import)",
        ) from None
    marked = recorded if isinstance(recorded, dict) else {}
    if (marked.get("site"), marked.get("digest"), found) != (state.site, digest, digest):
        raise BundleError(
            f"{root} is no longer the import of {state.site} {version} ({digest}): its marker names "
            f"{marked.get('site')!r} {marked.get('digest')!r}, its manifest's SHA-256 is {found}",
            code="bundle-tampered",
            location=Location(file=str(manifest)),
            hint="import the bundle of that version again from its media",
        )
    return str(marked.get("signer") or "")


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise BundleError(
            f"cannot create {folder}: {exc.strerror}",
            code="import-home-unwritable",
            location=Location(file=str(folder)),
            hint="run as root, or give a writable --home (or AIFACTORY_BUNDLES_HOME)",
        ) from None


def _install(bundle: Path | str, report: VerifyReport, site_home: Path, *, site: str) -> ImportedBundle:
    manifest = report.manifest
    assert manifest is not None and report.digest is not None
    if manifest.site != site:
        raise BundleError(
            f"the bundle is for site {manifest.site!r}, not {site!r}",
            code="site-mismatch",
            location=Location(file=str(bundle)),
            hint="import it on the control host of the site it was built for",
        )
    target = site_home / manifest.version.text
    imported = ImportedBundle(manifest.site, manifest.version.text, report.digest, target)
    if target.exists():
        return _reuse(target, imported)
    _ensure_dir(site_home)
    staging = site_home / f".staging-{manifest.version.text}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(mode=0o755)
        _unpack(Path(bundle), manifest, staging)
        _unpack_collections(manifest, staging)
        _write_simple_index(manifest, staging)
        (staging / RECORD).write_text(
            json.dumps(
                {
                    "site": manifest.site,
                    "version": manifest.version.text,
                    "digest": report.digest,
                    "signer": report.signer,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return imported


def _reuse(target: Path, imported: ImportedBundle) -> ImportedBundle:
    try:
        existing = json.loads((target / RECORD).read_text())
    except (OSError, ValueError):
        existing = {}
    if existing.get("digest") != imported.digest:
        raise BundleError(
            f"{target} already holds other content for version {imported.version}",
            code="import-conflict",
            location=Location(file=str(target)),
            hint="give each build its own, higher --bundle-version; remove the folder only "
            "if you know it is not in use",
        )
    return imported


def _unpack(bundle: Path, manifest: Manifest, staging: Path) -> None:
    """Copy each listed file out of the archive, hashing it again on the way."""
    reader = PartsReader(find_parts(bundle))
    try:
        scanned = archive.scan(archive.buffered(reader), size=reader.size, archive=str(bundle))
        expected = {f.path: f.sha256 for f in manifest.files}
        for name in sorted(expected.keys() | set(METADATA_FILES)):
            member = scanned.members.get(name)
            if member is None:
                raise BundleError(
                    f"{name} vanished from the bundle after verification",
                    code="bundle-changed",
                    location=Location(file=str(bundle), path=name),
                )
            destination = _inside(staging, name)
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            found = _copy_member(reader, member, destination)
            if name in expected and found != expected[name]:
                raise BundleError(
                    f"{name} changed after verification: SHA-256 expected {expected[name]}, found {found}",
                    code="bundle-changed",
                    location=Location(file=str(bundle), path=name),
                    hint="the bundle file is being modified; copy it again and re-import",
                )
    finally:
        reader.release()


def _inside(root: Path, name: str) -> Path:
    destination = (root / name).resolve()
    if not destination.is_relative_to(root.resolve()):
        raise BundleError(
            f"{name} would land outside {root}", code="unsafe-path", location=Location(path=name)
        )
    return destination


def _copy_member(reader: PartsReader, member: archive.Member, destination: Path) -> str:
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        return hash_range(Range(reader.pread, member.data_offset, member.size), sink=out.write).sha256


def _unpack_collections(manifest: Manifest, staging: Path) -> None:
    """Each collection tarball into collections/ansible_collections/<namespace>/<name>/."""
    for entry in manifest.files:
        if entry.kind != "collection":
            continue
        tarball = staging / entry.path
        with tarfile.open(tarball, "r:gz") as tar:
            info = json.load(_member_file(tar, "MANIFEST.json"))["collection_info"]
            target = staging / "collections" / "ansible_collections" / info["namespace"] / info["name"]
            target.mkdir(parents=True, exist_ok=False)
            for member in tar.getmembers():
                problem = archive.member_problem(member, entry.path)
                if problem:
                    raise BundleError(
                        f"collection {entry.path}: {problem.message}",
                        code=problem.code,
                        location=problem.location,
                    )
            tar.extractall(target, filter="data")


def _member_file(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = tar.extractfile(name)
    if handle is None:
        raise BundleError(f"{name} is not a file in the collection", code="collection-invalid")
    return handle


def _write_simple_index(manifest: Manifest, root: Path) -> None:
    """A PEP 503 index of the wheelhouse, with relative links and SHA-256 fragments."""
    projects: dict[str, list[tuple[str, str]]] = {}
    for entry in manifest.files:
        if entry.path.startswith("wheels/") and entry.path.endswith(".whl"):
            name = entry.path.rsplit("/", 1)[-1]
            projects.setdefault(canonicalize_name(parse_wheel_filename(name)[0]), []).append(
                (name, entry.sha256)
            )
    simple = root / "simple"
    simple.mkdir()
    links = []
    for project, files in sorted(projects.items()):
        (simple / project).mkdir()
        anchors = "".join(
            f'<a href="../../wheels/{html.escape(name)}#sha256={sha}">{html.escape(name)}</a><br>\n'
            for name, sha in sorted(files)
        )
        page = f"<!DOCTYPE html>\n<html><body>\n{anchors}</body></html>\n"
        (simple / project / "index.html").write_text(page)
        links.append(f'<a href="{project}/">{project}</a><br>\n')
    (simple / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{''.join(links)}</body></html>\n")


def _point_current(site_home: Path, version: str) -> None:
    link = site_home / "current"
    temporary = site_home / f".current-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(version, temporary)
    os.replace(temporary, link)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
