"""A local apt repository of the Debian packages the roles install, carried inside the bundle.

On the build host (which must run the pools' platform, e.g. Debian 12 x86_64) the packages and their
whole dependency closure are resolved with `apt-cache depends --recurse` and fetched with
`apt-get download`. Packages of priority `required` or `important` are left out: every Debian
installation has them (documented in docs/bundle.md). The repository is a flat one:

    apt/<name>_<version>_<arch>.deb
    apt/Packages        one stanza per .deb, sorted, with Filename, Size and SHA256
    apt/Release         the index's own hashes, dated with the bundle's build timestamp

Every file is covered by the bundle manifest and its signature, so a tampered .deb or index is
refused by `aifactory bundle verify` before apt ever reads it; hosts then use the repository with
`deb [trusted=yes] file:<dir> ./`, which is safe only because the bundle role verified it there first.

A few packages are pinned instead of resolved (PINNED_DEBS): the SCAP content the audit scans hosts
with. Debian 12's own `ssg-debian` (0.1.65) ships Debian 10 and 11 datastreams only, so the bundle
carries Debian 13's architecture-independent `ssg-debian` 0.1.76, which ships `ssg-debian12-ds.xml`,
fetched from Debian's archive by URL and checked against the SHA-256 recorded here (and in the SBOM,
with its origin; docs/bundle.md).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aifactory.digests import sha256_file
from aifactory.errors import BundleError, PrerequisiteError

# What the roles install from the bundle (munge + slurm roles, base role's time daemon, password
# quality module and sudo, file integrity checker (AIDE), and health check tools, the SCAP scanner
# and its content that the audit scans every host with, the monitoring role's Prometheus (with
# promtool), Alertmanager and node exporter, and the front door's HAProxy).
ROLE_PACKAGES: tuple[str, ...] = (
    "munge",
    "slurm-client",
    "slurmctld",
    "slurmd",
    "chrony",
    "libpam-pwquality",
    "sudo",
    "aide",  # base role: file integrity (SI-7)
    "aide-common",
    "openscap-scanner",
    "fio",  # aifactory health: site storage throughput
    "iperf3",  # aifactory health: compute link bandwidth
    "ssg-debian",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "haproxy",  # front_door role: the serving front door (docs/runtime.md)
)


@dataclass(frozen=True)
class PinnedDeb:
    """A package taken from another Debian release by URL and SHA-256 instead of the build host's apt."""

    name: str
    version: str
    distro: str  # the Debian release it comes from, as a purl `distro` qualifier
    url: str
    sha256: str
    depends: tuple[str, ...] = ()  # other pinned packages it needs

    @property
    def file_name(self) -> str:
        return f"{self.name}_{self.version}_all.deb"


_TRIXIE_SSG = "https://deb.debian.org/debian/pool/main/s/scap-security-guide"
# Debian 13 (trixie) scap-security-guide 0.1.76-1, hashes as in trixie's main/binary-all Packages.
PINNED_DEBS: dict[str, PinnedDeb] = {
    "ssg-debian": PinnedDeb(
        "ssg-debian",
        "0.1.76-1",
        "debian-13",
        f"{_TRIXIE_SSG}/ssg-debian_0.1.76-1_all.deb",
        "f6880719015c16e8e221bc2503c0e5a9f83d6a09fc6f9292d3522e46bf4fc9d7",
        depends=("ssg-base",),
    ),
    "ssg-base": PinnedDeb(
        "ssg-base",
        "0.1.76-1",
        "debian-13",
        f"{_TRIXIE_SSG}/ssg-base_0.1.76-1_all.deb",
        "559650cd800f18d1eec68692679a5c761136d84f1cff35f30ff4e2e04d8c1b56",
    ),
}
BASE_PRIORITIES = frozenset({"required", "important"})
_DEPENDS = [
    "--recurse",
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
]


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    path: Path
    sha256: str
    size: int
    origin: PinnedDeb | None = None  # set for a pinned package: where it was fetched from


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise PrerequisiteError(
            f"`{argv[0]}` is not installed; the apt repository needs Debian's apt tools",
            hint="build the bundle on a Debian host of the pools' platform",
        ) from None
    if done.returncode != 0:
        raise BundleError(
            f"`{' '.join(argv[:3])} ...` failed: {done.stderr.strip()[-400:]}",
            code="apt-download-failed",
            hint="check that the build host can reach its Debian mirror (`apt-get update`)",
        )
    return done.stdout


def resolve_closure(packages: Iterable[str]) -> list[str]:
    """The packages and everything they depend on, minus the base system, sorted."""
    wanted = sorted(set(packages))
    out = _run(["apt-cache", "depends", *_DEPENDS, *wanted])
    names = sorted(
        {
            line.strip()
            for line in out.splitlines()
            if line and not line.startswith(" ") and not line.startswith("<")
        }
    )
    stanzas = _run(["apt-cache", "show", "--no-all-versions", *names])
    priority: dict[str, str] = {}
    for stanza in stanzas.split("\n\n"):
        fields = _fields(stanza)
        if "Package" in fields:
            priority[fields["Package"]] = fields.get("Priority", "optional")
    missing = [n for n in wanted if n not in priority]
    if missing:
        raise BundleError(f"no Debian package named {', '.join(missing)}", code="apt-unknown-package")
    return [n for n in names if n in priority and (priority[n] not in BASE_PRIORITIES or n in wanted)]


def _fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def download(packages: Sequence[str], *, cache: Path) -> list[Path]:
    """apt-get download into a cache folder (reused across builds); return the .deb files."""
    cache.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_", 1)[0]: p for p in cache.glob("*.deb")}
    missing = [name for name in packages if name not in have]
    if missing:
        _run(["apt-get", "download", *missing], cwd=cache)
        have = {p.name.split("_", 1)[0]: p for p in cache.glob("*.deb")}
    lost = [name for name in packages if name not in have]
    if lost:
        raise BundleError(f"apt-get download gave no file for {', '.join(lost)}", code="apt-download-failed")
    return [have[name] for name in packages]


def _control(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb)]).rstrip("\n")


def write_repository(debs: Sequence[Path], repo: Path, *, timestamp: int) -> list[DebPackage]:
    """Copy the .debs into `repo` and write a deterministic Packages and Release index."""
    repo.mkdir(parents=True, exist_ok=True)
    packages: list[DebPackage] = []
    stanzas: list[str] = []
    for deb in sorted(debs, key=lambda p: p.name):
        target = repo / deb.name
        shutil.copyfile(deb, target)
        control = _control(target)
        fields = _fields(control)
        sha = sha256_file(target)
        size = target.stat().st_size
        packages.append(
            DebPackage(
                fields["Package"], fields["Version"], fields.get("Architecture", "all"), target, sha, size
            )
        )
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {size}\nSHA256: {sha}")
    index = "\n\n".join(stanzas) + "\n"
    (repo / "Packages").write_text(index)
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
    index_sha = hashlib.sha256(index.encode()).hexdigest()
    (repo / "Release").write_text(
        "Origin: aifactory\nLabel: aifactory bundle\nSuite: bundle\nCodename: bundle\n"
        f"Date: {date}\nArchitectures: {' '.join(sorted({p.architecture for p in packages}))}\n"
        f"SHA256:\n {index_sha} {len(index.encode())} Packages\n"
    )
    return packages


def pinned_closure(packages: Iterable[str]) -> list[PinnedDeb]:
    """The pinned packages among `packages` and the pinned packages they need, sorted by name."""
    found: dict[str, PinnedDeb] = {}
    todo = [name for name in packages if name in PINNED_DEBS]
    while todo:
        pin = PINNED_DEBS[todo.pop()]
        if pin.name not in found:
            found[pin.name] = pin
            todo.extend(pin.depends)
    return [found[name] for name in sorted(found)]


def fetch_pinned(pins: Sequence[PinnedDeb], *, cache: Path) -> list[Path]:
    """Each pinned .deb from the cache if its SHA-256 matches, else from its URL; a mismatch is refused."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for pin in pins:
        path = cache / pin.file_name
        if not path.is_file() or sha256_file(path) != pin.sha256:
            partial = path.with_name(path.name + ".partial")
            try:
                with urllib.request.urlopen(pin.url, timeout=120) as answer, partial.open("wb") as out:
                    shutil.copyfileobj(answer, out)
            except (urllib.error.URLError, OSError) as exc:
                raise BundleError(
                    f"could not fetch {pin.url}: {exc}",
                    code="apt-download-failed",
                    hint="the build host must reach Debian's archive (or put the .deb in the cache)",
                ) from None
            got = sha256_file(partial)
            if got != pin.sha256:
                partial.unlink()
                raise BundleError(
                    f"{pin.url} has SHA-256 {got}, not the pinned {pin.sha256}",
                    code="apt-pin-mismatch",
                    hint="the archive changed under a pinned version; review before updating the pin",
                )
            partial.replace(path)
        paths.append(path)
    return paths


def build_apt_repository(
    repo: Path, *, packages: Sequence[str] = ROLE_PACKAGES, cache: Path, timestamp: int
) -> list[DebPackage]:
    pins = pinned_closure(packages)
    closure = resolve_closure([name for name in packages if name not in PINNED_DEBS])
    debs = download(closure, cache=cache) + fetch_pinned(pins, cache=cache / "pinned")
    built = write_repository(debs, repo, timestamp=timestamp)
    origins = {pin.name: pin for pin in pins}
    return [
        DebPackage(d.name, d.version, d.architecture, d.path, d.sha256, d.size, origins.get(d.name))
        for d in built
    ]


_STANZA_SPLIT = re.compile(r"\n\s*\n")


def read_index(repo: Path) -> dict[str, dict[str, str]]:
    """Packages index -> {package: fields}."""
    text = (repo / "Packages").read_text()
    return {f["Package"]: f for f in (_fields(s) for s in _STANZA_SPLIT.split(text) if s.strip())}
