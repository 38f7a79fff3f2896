"""`aifactory bundle build`: gather everything an air-gapped site needs and seal it.

    manifest.json  manifest.json.sig  SHA256SUMS     at the root (see manifest.py)
    plan.json                     the site's plan (deploy refuses a local spec whose plan differs)
    sbom.cdx.json                 CycloneDX 1.5 SBOM of every wheel, collection, package and file,
                                  with licenses and the dependency graph
    wheels/                       aifactory's wheel + runtime and control wheel sets (wheelhouse.py)
    collections/                  the playbooks as a normalized collection, plus extra collections
    policies/                     the Rego policies and their data
    apt/                          a flat apt repository of the roles' Debian packages (apt.py), optional
    runtime/<sha256>.tar.zst      the prebuilt runtime tree of each runtime pool platform, and its
    runtime/<sha256>.files        file listing (runtime_tree.py), optional (--runtime-tree)
    files/<name>                  extra files given on the command line (weights, datasets, binaries)

The build timestamp (`timestamp=`, else SOURCE_DATE_EPOCH, else now) fixes every mtime, the SBOM's
timestamp and the default version, so the same inputs and timestamp give byte-identical bundles.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory import __version__, signing
from aifactory.bundle import apt, collection, runtime_tree, sbom, wheelhouse
from aifactory.bundle.hashing import Digest
from aifactory.bundle.manifest import BundleVersion
from aifactory.bundle.pack import Header, PayloadFile, Sealed, hash_payload, seal
from aifactory.bundle.wheelhouse import Platform, WheelSet
from aifactory.errors import BundleError, Location, UsageError
from aifactory.plan import PlannedSite
from aifactory.progress import SILENT, Progress
from aifactory.resources import resource_dir

_CHECKOUT = Path(__file__).resolve().parents[2]
RUNTIME_ROLES = ("gpu", "cpu")
# What a runtime tree installs: the runtime role's default runtime_packages, which a host without
# a tree pip-installs.
RUNTIME_REQUIREMENTS = ("aifactory[runtime]",)
Identity = tuple[str, str | None, str | None]  # SBOM name, version, group (namespace or arch)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build needs besides the site; defaults fit a source checkout."""

    key: Path
    passphrase: bytes | None = None
    timestamp: int | None = None
    version: str | None = None
    part_size: int | None = None
    extra_files: Sequence[Path] = ()
    collections: Sequence[Path] = ()
    pins: Sequence[str] | None = None  # None: torch pinned from the build environment
    source: Path | None = None  # aifactory source checkout (wheel, playbooks, policies)
    aifactory_wheel: Path | None = None
    cache: Path | None = None
    apt_packages: Sequence[str] | None = apt.ROLE_PACKAGES  # None or empty: no apt repository
    workers: int | None = None
    compress: str | None = None  # None (an uncompressed tar) or "zstd"
    runtime_trees: bool = False  # prebuild each runtime platform's tree (runtime_tree.py)
    runtime_python: Path = runtime_tree.DEFAULT_PYTHON  # the hosts' interpreter, which builds it
    runtime_root: str = runtime_tree.DEFAULT_ROOT  # the runtime role's runtime_root


@dataclass
class BuildResult:
    site: str
    version: str
    digest: str
    parts: list[Path]
    files: int
    payload_bytes: int
    archive_bytes: int
    seconds: float
    wheelsets: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "version": self.version,
            "digest": self.digest,
            "parts": [str(p) for p in self.parts],
            "files": self.files,
            "payload_bytes": self.payload_bytes,
            "archive_bytes": self.archive_bytes,
            "seconds": round(self.seconds, 3),
            "wheelsets": self.wheelsets,
        }


def build_timestamp(explicit: int | None = None) -> int:
    if explicit is not None:
        return int(explicit)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return int(epoch)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds") from None
    return int(time.time())


def build_bundle(
    planned: PlannedSite, *, output: Path, options: BuildOptions, progress: Progress = SILENT
) -> BuildResult:
    """Build and seal the bundle of a planned site (planned once, by the caller; its lock committed);
    `progress` hears of each step (counts and bytes gathered so far)."""
    started = time.monotonic()
    timestamp = build_timestamp(options.timestamp)
    version = (
        BundleVersion.parse(options.version) if options.version else BundleVersion.from_timestamp(timestamp)
    )
    key = signing.load_private_key(options.key, options.passphrase)
    progress.step("plan")
    _require_frozen(planned)
    source = options.source or (_CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None)
    cache = options.cache or wheelhouse.cache_root()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aifactory-bundle-", dir=output.parent) as scratch:
        work = Path(scratch)
        collector = _Collector(work, timestamp, progress)
        collector.add_plan(planned)
        progress.step("policies")
        collector.add_tree("policies", _resource(source, "policies"), kind="policy")
        progress.step("wheels")
        wheelsets = collector.add_wheels(planned, options, source, cache)
        if options.runtime_trees:
            progress.step("runtime trees")
            collector.add_runtime_trees(options, target=f"{options.runtime_root}/{version.text}")
        progress.step("collections")
        collector.add_collections(_resource(source, "playbooks"), options.collections)
        if options.apt_packages:
            progress.step("apt packages")
            collector.add_apt(options.apt_packages, cache)
        progress.step("extra files")
        collector.add_extra_files(options.extra_files)
        digests = hash_payload(collector.payload, workers=options.workers, progress=progress)
        progress.step("sbom")
        collector.add_sbom(planned.spec.site.name, version.text, digests)
        header = Header(
            site=planned.spec.site.name,
            version=version,
            created=datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            timestamp=timestamp,
            plan_digest=planned.plan.digest(),
            spec_digest=planned.plan.spec_digest,
            aifactory_version=__version__,
            contents=collector.contents,
        )
        sealed: Sealed = seal(
            collector.payload,
            header,
            key=key,
            output=output,
            work=work / "meta",
            part_size=options.part_size,
            digests=digests,
            workers=options.workers,
            compress=options.compress,
            progress=progress,
        )
    return BuildResult(
        planned.spec.site.name,
        version.text,
        sealed.digest,
        sealed.parts,
        len(sealed.manifest.files),
        sealed.payload_bytes,
        sealed.archive_bytes,
        time.monotonic() - started,
        wheelsets,
    )


def _require_frozen(planned: PlannedSite) -> None:
    if planned.lock_changed:
        raise BundleError(
            f"the allocation lock {planned.lock_path} does not cover {planned.loaded.source.file}",
            code="plan-not-frozen",
            location=Location(file=str(planned.lock_path)),
            hint="run `aifactory plan` to allocate and commit the lock; a bundle carries a fixed plan",
        )


def _resource(source: Path | None, name: str) -> Path:
    if source is not None and (source / name).is_dir():
        return source / name
    return resource_dir(name)


class _Collector:
    """Builds the payload map: archive path -> file on disk (nothing large is copied)."""

    def __init__(self, work: Path, timestamp: int, progress: Progress = SILENT) -> None:
        self.work = work
        self.timestamp = timestamp
        self.progress = progress
        self.payload: dict[str, PayloadFile] = {}
        self.contents: dict[str, Any] = {}
        self.components: list[sbom.Component] = []
        self._identities: dict[str, Identity] = {}
        self._origins: dict[str, sbom.Origin] = {}  # pinned packages: where they were fetched from
        self._runtime_wheels: dict[Platform, list[Path]] = {}  # each runtime platform's wheel set

    def add(self, path: str, source: Path, kind: str, identity: Identity | None = None) -> None:
        if path in self.payload and self.payload[path].source != source:
            raise BundleError(
                f"two different files would land at {path} in the bundle",
                code="bundle-build-failed",
                location=Location(file=str(source)),
                hint="rename one of the extra files",
            )
        if path not in self.payload:
            self.progress.advance(items=1, nbytes=source.stat().st_size if source.is_file() else 0)
        self.payload[path] = PayloadFile(source, kind)
        self._identities[path] = identity or (path.rsplit("/", 1)[-1], None, None)

    def add_plan(self, planned: PlannedSite) -> None:
        plan_file = self.work / "plan.json"
        plan_file.write_text(planned.plan.to_json())
        self.add("plan.json", plan_file, "plan")

    def add_tree(self, prefix: str, root: Path, *, kind: str) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                raise BundleError(
                    f"{path} is a symbolic link; bundles carry regular files only",
                    code="bundle-build-failed",
                    location=Location(file=str(path)),
                )
            if path.is_file() and "__pycache__" not in path.parts:
                self.add(f"{prefix}/{path.relative_to(root).as_posix()}", path, kind)

    def add_wheels(
        self, planned: PlannedSite, options: BuildOptions, source: Path | None, cache: Path
    ) -> dict[str, list[str]]:
        own = options.aifactory_wheel or wheelhouse.build_own_wheel(
            _require(source), self.work / "own-wheel", timestamp=self.timestamp
        )
        pins = list(wheelhouse.default_pins() if options.pins is None else options.pins)
        sets: dict[str, list[str]] = {}
        for wheelset in site_wheelsets(planned, own, pins):
            files = wheelhouse.download(wheelset, cache=cache / "wheels")
            sets[f"{wheelset.name}/{wheelset.platform.tag}"] = sorted(f.name for f in files) + [own.name]
            for wheel in files:
                self.add(f"wheels/{wheel.name}", wheel, "wheel", _wheel_identity(wheel))
            if wheelset.name == "runtime":
                self._runtime_wheels[wheelset.platform] = [*files, own]
        self.add(f"wheels/{own.name}", own, "wheel", _wheel_identity(own))
        self.contents["wheelsets"] = {name: sorted(set(files)) for name, files in sets.items()}
        self.contents["pins"] = sorted(pins)
        return sets

    def add_runtime_trees(self, options: BuildOptions, *, target: str) -> None:
        interpreter = runtime_tree.probe_interpreter(options.runtime_python)
        entries: dict[str, Any] = {}
        for platform, wheels in sorted(self._runtime_wheels.items()):
            tree = runtime_tree.build_tree(
                interpreter=interpreter,
                platform=platform,
                wheels=wheels,
                requirements=RUNTIME_REQUIREMENTS,
                target=target,
                work=self.work / "runtime-tree" / platform.tag,
                timestamp=self.timestamp,
            )
            identity = ("aifactory-runtime-tree", platform.tag, None)
            self.add(tree.archive_path, tree.archive, "runtime-tree", identity)
            self.add(tree.listing_path, tree.listing, "runtime-tree-files")
            entries[platform.tag] = tree.manifest_entry()
        self.contents["runtime_trees"] = entries

    def add_collections(self, playbooks: Path, extra: Sequence[Path]) -> None:
        built, tarball = collection.build(
            playbooks,
            self.work / "collections",
            version=__version__,
            timestamp=self.timestamp,
            work=self.work / "collection-build",
        )
        found = [(built, tarball)] + [(collection.identify(Path(p)), Path(p)) for p in extra]
        names: dict[str, str] = {}
        for item, path in found:
            if item.fqcn in names:
                raise BundleError(
                    f"collection {item.fqcn} is given twice",
                    code="bundle-build-failed",
                    location=Location(file=str(path)),
                )
            names[item.fqcn] = f"collections/{item.file_name()}"
            self.add(names[item.fqcn], path, "collection", (item.name, item.version, item.namespace))
        self.contents["collections"] = names

    def add_apt(self, packages: Sequence[str], cache: Path) -> None:
        repo = self.work / "apt"
        debs = apt.build_apt_repository(
            repo, packages=packages, cache=cache / "debs", timestamp=self.timestamp
        )
        for deb in debs:
            self.add(f"apt/{deb.path.name}", deb.path, "deb", (deb.name, deb.version, deb.architecture))
            if deb.origin:
                self._origins[f"apt/{deb.path.name}"] = sbom.Origin(deb.origin.url, deb.origin.distro)
        for index in ("Packages", "Release"):
            self.add(f"apt/{index}", repo / index, "apt-index")
        self.contents["apt"] = {"packages": sorted(packages), "closure": sorted(d.name for d in debs)}

    def add_extra_files(self, extra: Sequence[Path]) -> None:
        for given in extra:
            path = Path(given)
            if path.is_dir():
                self.add_tree(f"files/{path.name}", path, kind="extra")
            elif path.is_file():
                self.add(f"files/{path.name}", path, "extra")
            else:
                raise UsageError(f"extra file {path} does not exist", location=Location(file=str(path)))
        if extra:
            self.contents["files"] = sorted(p for p, f in self.payload.items() if f.kind == "extra")

    def add_sbom(self, site: str, version: str, digests: dict[Path, Digest]) -> None:
        components = []
        for path, item in sorted(self.payload.items()):
            name, item_version, extra = self._identities[path]
            kind = item.kind if item.kind in ("wheel", "collection", "deb") else "file"
            digest = digests[item.source]
            described = sbom.describe(kind, item.source)
            components.append(
                sbom.Component(
                    kind,
                    path,
                    digest.sha256,
                    digest.size,
                    name,
                    item_version,
                    extra,
                    described,
                    self._origins.get(path),
                )
            )
        target = self.work / sbom.SBOM_PATH
        target.write_bytes(
            sbom.render(
                site=site,
                version=version,
                timestamp=self.timestamp,
                aifactory_version=__version__,
                components=components,
            )
        )
        self.add(sbom.SBOM_PATH, target, "sbom")


def _require(source: Path | None) -> Path:
    if source is None:
        raise UsageError(
            "no aifactory source checkout to build the aifactory wheel from",
            hint="pass --aifactory-wheel FILE or --source CHECKOUT",
        )
    return source


def _wheel_identity(wheel: Path) -> Identity:
    name, version = wheelhouse.wheel_identity(wheel)
    return name, version, None


def site_wheelsets(planned: PlannedSite, own: Path, pins: list[str]) -> list[WheelSet]:
    plan = planned.plan
    control_pool = next((h.pool for h in plan.hosts if h.name == plan.control_host), None)
    runtime: set[Platform] = set()
    control: set[Platform] = set()
    for pool in plan.pools:
        platform = Platform.from_plan(pool.platform)
        if pool.name == control_pool or pool.role == "control":
            control.add(platform)
        if pool.role in RUNTIME_ROLES:
            runtime.add(platform)
    lock = wheelhouse.lock_file()
    constraints = wheelhouse.locked_versions(lock, except_for=pins) if lock else ()
    sets = []
    for name, platforms in (("runtime", runtime), ("control", control)):
        for platform in sorted(platforms):
            wanted = wheelhouse.wheel_requirements(own, name, python=platform.python)
            sets.append(WheelSet(name, platform, wheelhouse.apply_pins(wanted, pins), constraints))
    return sets
