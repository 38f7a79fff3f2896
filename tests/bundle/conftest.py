"""Fixtures for the bundle tests.

`lab_bundle` is the one real bundle of the session: the lab site, with the real wheelhouse (torch
included, from the build host's pip configuration), the playbooks' collection and the apt repository.
Downloads are cached in $AIFACTORY_CACHE (default ~/.cache/aifactory), so only the first run on a
machine is slow. It is built from a snapshot of the checkout, so that files other people change
while the tests run cannot make the two builds of the determinism test differ.

`small_bundle` seals a few small files with the same code that seals the real bundle (pack.seal):
the tamper corpus rewrites it dozens of times, which would be slow with a 300 MB bundle.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.bundle import BuildOptions, BuildResult, build_bundle
from aifactory.bundle.manifest import BundleVersion
from aifactory.bundle.pack import Header, PayloadFile, seal

REPO = Path(__file__).resolve().parents[2]
LAB_SITE = Path("inventory/lab/site.yaml")
STAMP = 1_763_800_000  # 2025-11-22T08:26:40Z: every build in these tests uses this timestamp
IDENTITY = "release@lab.example"


@dataclass(frozen=True)
class Signer:
    key: Path
    allowed_signers: Path
    identity: str


def make_signer(folder: Path, identity: str = IDENTITY) -> Signer:
    files = signing.generate_keypair(folder, identity=identity, namespaces="aifactory-bundle")
    return Signer(files.private, files.allowed_signers, identity)


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(tmp_path_factory.mktemp("signer"))


@pytest.fixture(scope="session")
def source_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's files as git sees them now (tracked and untracked, minus ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    target = tmp_path_factory.mktemp("source") / "aifactory"
    for name in filter(None, listed):
        origin = REPO / name
        if origin.is_file() and not origin.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)
    return target


def lab_options(signer: Signer, source: Path, **changes: object) -> BuildOptions:
    options = {"key": signer.key, "timestamp": STAMP, "source": source}
    options.update(changes)
    return BuildOptions(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def lab_bundle(tmp_path_factory: pytest.TempPathFactory, signer: Signer,
               source_snapshot: Path) -> BuildResult:
    output = tmp_path_factory.mktemp("lab-bundle") / "lab.tar"
    return build_bundle(source_snapshot / LAB_SITE, output=output, options=lab_options(signer,
                                                                                       source_snapshot))


SmallBundle = Callable[..., Path]


@pytest.fixture
def small_bundle(tmp_path: Path, signer: Signer) -> SmallBundle:
    """make(version=..., key=..., files={archive path: bytes}, part_size=...) -> the bundle path."""
    counter = iter(range(1000))

    def make(*, version: str = "2.0", key: Path | None = None, files: dict[str, bytes] | None = None,
             part_size: int | None = None, site: str = "tamperlab") -> Path:
        folder = tmp_path / f"small-{next(counter)}"
        payload = {}
        for name, data in (files or small_files()).items():
            source = folder / "payload" / name
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(data)
            payload[name] = PayloadFile(source, "extra")
        header = Header(site=site, version=BundleVersion.parse(version), created="2025-11-22T08:26:40Z",
                        timestamp=STAMP, plan_digest="sha256:" + "0" * 64, spec_digest="sha256:" + "1" * 64,
                        aifactory_version="test", contents={})
        sealed = seal(payload, header, key=signing.load_private_key(key or signer.key),
                      output=folder / "b.tar",
                      work=folder / "meta", part_size=part_size)
        return sealed.parts[0] if part_size else folder / "b.tar"

    return make


def small_files() -> dict[str, bytes]:
    return {
        "plan.json": b'{"site": "tamperlab"}\n',
        "policies/data/places.json": b'{"NG": {"name": "Nigeria"}}\n',
        "wheels/demo-1.0-py3-none-any.whl": bytes(range(256)) * 400,
        "files/model.safetensors": b"\x00\x01weights" * 5000,
    }
