"""The bundle's wheelhouse: aifactory's own wheel and every Python dependency, for each platform.

Two wheel sets are resolved with `pip download --only-binary=:all:` for a target platform (manylinux
tags up to the glibc of the pool's OS, its CPython version and ABI), whatever machine builds:

- `runtime` for every platform of the pools that run jobs: aifactory's core dependencies and its
  `[runtime]` extra (torch, safetensors, numpy);
- `control` for the control host's platform: the core and the `[control]` extra (ansible-core,
  ansible-runner, ...).

Both land in one flat folder (`wheels/` in the bundle), which `pip install --no-index --find-links`
uses as is. Downloads are cached outside the bundle (`$AIFACTORY_CACHE/wheels`, default
`~/.cache/aifactory/wheels`); a wheel set already resolved for the same requirements and platform is
taken from the cache without running pip at all; otherwise pip downloads the set into a fresh
folder (what lands there is exactly the set), and the files join the shared cache.

torch comes in CPU and CUDA builds under one name. Unless `pins` says otherwise, the build pins the
torch of the build environment (e.g. `torch==2.13.0+cpu`), so what ships is what was tested.

Every set also resolves under the versions of `requirements.lock` (the lock scripts/setup.sh
installs the control host from, see `locked_versions`): the wheels the bundle carries are the
versions CI tested. A pin overrides the lock for its project.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from aifactory.errors import BundleError, Location, PrerequisiteError, UsageError
from aifactory.plan.model import PlatformPlan

# Highest glibc of each supported OS; wheels tagged for it or any older manylinux install there.
GLIBC = {
    "debian-11": 31,
    "debian-12": 36,
    "ubuntu-20.04": 31,
    "ubuntu-22.04": 35,
    "ubuntu-24.04": 39,
    "rhel-8": 28,
    "rhel-9": 34,
    "rocky-8": 28,
    "rocky-9": 34,
}
ARCHES = ("x86_64", "aarch64")
PINNED_FROM_BUILD_ENV = ("torch",)


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    arch: str
    python: str

    @classmethod
    def from_plan(cls, platform: PlatformPlan) -> Platform:
        return cls(platform.os, platform.arch, platform.python)

    @property
    def tag(self) -> str:
        return f"{self.os}-{self.arch}-py{self.python}"

    def pip_arguments(self) -> list[str]:
        if self.os not in GLIBC:
            raise BundleError(
                f"no wheel platform known for os {self.os!r}",
                code="unknown-platform",
                hint=f"supported: {', '.join(sorted(GLIBC))}",
            )
        if self.arch not in ARCHES:
            raise BundleError(
                f"no wheel platform known for arch {self.arch!r}",
                code="unknown-platform",
                hint=f"supported: {', '.join(ARCHES)}",
            )
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(GLIBC[self.os], 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        python = self.python.replace(".", "")
        arguments = [
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            self.python,
            "--abi",
            f"cp{python}",
        ]
        for tag in tags:
            arguments += ["--platform", tag]
        return arguments


@dataclass(frozen=True)
class WheelSet:
    name: str  # runtime | control
    platform: Platform
    requirements: tuple[str, ...]
    constraints: tuple[str, ...] = ()  # name==version lines from the lock, passed to pip as -c

    def cache_key(self) -> str:
        content = {"requirements": sorted(self.requirements), "pip": self.platform.pip_arguments()}
        if self.constraints:  # keys of sets resolved without a lock stay as they were
            content["constraints"] = sorted(self.constraints)
        body = json.dumps(content, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:32]


def cache_root() -> Path:
    explicit = os.environ.get("AIFACTORY_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aifactory"


def wheel_requirements(wheel: Path, extra: str | None, *, python: str) -> list[str]:
    """Requires-Dist of a wheel for one extra (and the core), evaluated for the target Python."""
    with zipfile.ZipFile(wheel) as archive:
        name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            raise BundleError(
                f"{wheel.name} has no METADATA", code="bad-wheel", location=Location(file=str(wheel))
            )
        headers = HeaderParser().parsestr(archive.read(name).decode())
    environment = {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    wanted: list[str] = []
    for line in headers.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": extra or ""}):
            requirement.marker = None
            wanted.append(str(requirement))
    return sorted(set(wanted))


def apply_pins(requirements: Iterable[str], pins: Sequence[str]) -> tuple[str, ...]:
    """Replace each direct requirement by the pin of the same project; pins of projects the set does
    not name directly are left out of it (a control host never gets torch)."""
    by_name = {canonicalize_name(Requirement(text).name): text for text in requirements}
    for pin in pins:
        try:
            project = canonicalize_name(Requirement(pin).name)
        except InvalidRequirement as exc:
            raise UsageError(
                f"cannot read the pin {pin!r}: {exc}", hint="write it like torch==2.13.0+cpu"
            ) from None
        if project in by_name:
            by_name[project] = pin
    return tuple(sorted(by_name.values()))


def default_pins() -> list[str]:
    """Pins for projects with build variants (torch), taken from the build environment."""
    pins = []
    for project in PINNED_FROM_BUILD_ENV:
        try:
            pins.append(f"{project}=={metadata.version(project)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


LOCK_NAME = "requirements.lock"


def lock_file() -> Path | None:
    """The lock of this aifactory: in a wheel under aifactory/_resources, else at the checkout's top."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_resources" / LOCK_NAME, package.parent / LOCK_NAME):
        if candidate.is_file():
            return candidate
    return None


def locked_versions(lock: Path, *, except_for: Sequence[str] = ()) -> tuple[str, ...]:
    """`name==version` for every package a pip-compile lock pins (hashes and comments dropped),
    leaving out the projects in `except_for` (those the build pins itself)."""
    skipped = {canonicalize_name(Requirement(text).name) for text in except_for}
    versions: list[str] = []
    for number, line in enumerate(lock.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if not text or text.startswith("-"):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise BundleError(
                f"cannot read the lock line {text!r}: {exc}",
                code="bad-lock",
                location=Location(file=str(lock), line=number),
            ) from None
        if canonicalize_name(requirement.name) not in skipped:
            versions.append(f"{canonicalize_name(requirement.name)}{requirement.specifier}")
    return tuple(sorted(versions))


def download(wheelset: WheelSet, *, cache: Path) -> list[Path]:
    """The wheels of one set, from the cache or from pip (with the build host's pip configuration)."""
    files = cache / "files"
    sets = cache / "sets"
    files.mkdir(parents=True, exist_ok=True)
    sets.mkdir(parents=True, exist_ok=True)
    record = sets / f"{wheelset.name}-{wheelset.platform.tag}-{wheelset.cache_key()}.json"
    if record.is_file():
        names = json.loads(record.read_text())["wheels"]
        if all((files / name).is_file() for name in names):
            return [files / name for name in names]
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as scratch:
        fresh = Path(scratch)
        constraints: list[str] = []
        if wheelset.constraints:
            constraint_file = Path(scratch) / "lock-constraints.txt"
            constraint_file.write_text("\n".join(wheelset.constraints) + "\n", encoding="utf-8")
            constraints = ["--constraint", str(constraint_file)]
            fresh = Path(scratch) / "wheels"
            fresh.mkdir()
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--dest",
            str(fresh),
            *wheelset.platform.pip_arguments(),
            *constraints,
            *wheelset.requirements,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            raise BundleError(
                f"pip could not download the {wheelset.name} wheels for {wheelset.platform.tag}:\n{tail}",
                code="wheel-download-failed",
                hint="check the build host's package index (pip config) or the --pin options",
            )
        names = sorted(path.name for path in fresh.glob("*.whl"))
        if not names:
            raise BundleError(
                f"pip downloaded no wheels for the {wheelset.name} set", code="wheel-download-failed"
            )
        for name in names:  # the set is exactly what pip put in the fresh folder
            os.replace(fresh / name, files / name)
    temporary = record.with_suffix(".tmp")
    temporary.write_text(
        json.dumps(
            {"wheels": names, "requirements": list(wheelset.requirements), "platform": wheelset.platform.tag},
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    os.replace(temporary, record)
    return [files / name for name in names]


def build_own_wheel(source: Path, dest: Path, *, timestamp: int) -> Path:
    """aifactory's wheel, built reproducibly (hatchling honours SOURCE_DATE_EPOCH) from a checkout."""
    if not (source / "pyproject.toml").is_file():
        raise PrerequisiteError(
            f"{source} is not an aifactory source checkout (no pyproject.toml)",
            hint="give a built wheel with --aifactory-wheel",
        )
    dest.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "SOURCE_DATE_EPOCH": str(timestamp)}
    argv = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "--wheel-dir",
        str(dest),
        str(source),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=environment)
    wheels = sorted(dest.glob("aifactory-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise BundleError(
            f"building the aifactory wheel failed: {done.stderr.strip()[-600:]}",
            code="wheel-build-failed",
            location=Location(file=str(source / "pyproject.toml")),
        )
    return wheels[0]


def wheel_identity(path: Path) -> tuple[str, str]:
    """(project name, version) from a wheel's file name."""
    name, version, _build, _tags = parse_wheel_filename(path.name)
    return str(name), str(version)
