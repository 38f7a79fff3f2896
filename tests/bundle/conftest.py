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
from aifactory.bundle.collection import ansible_galaxy
from aifactory.bundle.manifest import BundleVersion
from aifactory.bundle.pack import Header, PayloadFile, seal
from aifactory.plan import plan_site

REPO = Path(__file__).resolve().parents[2]
LAB_SITE = Path("inventory/lab/site.yaml")
STAMP = 1_763_800_000  # 2025-11-22T08:26:40Z: every build in these tests uses this timestamp
IDENTITY = "release@lab.example"
ADMIN = "admin@tamperlab.example"  # the administrator who signs activation records


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
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    target = tmp_path_factory.mktemp("source") / "aifactory"
    for name in filter(None, listed):
        origin = REPO / name
        if origin.is_file() and not origin.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)
    return target


@dataclass(frozen=True)
class Extras:
    """What an admin adds on the command line: a collection the roles would need, and model weights."""

    collection: Path
    weights: Path


@pytest.fixture(scope="session")
def extras(tmp_path_factory: pytest.TempPathFactory) -> Extras:
    folder = tmp_path_factory.mktemp("extras")
    source = folder / "labextra.tools"
    (source / "roles" / "hello" / "tasks").mkdir(parents=True)
    (source / "roles" / "hello" / "tasks" / "main.yml").write_text(
        "- name: hello | run | greet\n  ansible.builtin.debug:\n    msg: hello\n"
    )
    (source / "galaxy.yml").write_text(
        "namespace: labextra\nname: tools\nversion: 1.0.0\nreadme: README.md\nauthors: [lab]\n"
    )
    (source / "README.md").write_text("# labextra.tools\n")
    subprocess.run(
        [ansible_galaxy(), "collection", "build", str(source), "--output-path", str(folder)],
        check=True,
        capture_output=True,
    )
    weights = folder / "vitals-mlp.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(4096))
    return Extras(folder / "labextra-tools-1.0.0.tar.gz", weights)


def lab_options(signer: Signer, source: Path, extras: Extras) -> BuildOptions:
    return BuildOptions(
        key=signer.key,
        timestamp=STAMP,
        source=source,
        collections=[extras.collection],
        extra_files=[extras.weights],
    )


@pytest.fixture(scope="session")
def lab_bundle(
    tmp_path_factory: pytest.TempPathFactory, signer: Signer, source_snapshot: Path, extras: Extras
) -> BuildResult:
    output = tmp_path_factory.mktemp("lab-bundle") / "lab.tar"
    return build_bundle(
        plan_site(source_snapshot / LAB_SITE, write_lock=False),
        output=output,
        options=lab_options(signer, source_snapshot, extras),
    )


SmallBundle = Callable[..., Path]


@pytest.fixture
def small_bundle(tmp_path: Path, signer: Signer) -> SmallBundle:
    """make(version=..., key=..., files={archive path: bytes}, part_size=...) -> the bundle path."""
    counter = iter(range(1000))

    def make(
        *,
        version: str = "2.0",
        key: Path | None = None,
        files: dict[str, bytes] | None = None,
        part_size: int | None = None,
        site: str = "tamperlab",
        compress: str | None = None,
    ) -> Path:
        folder = tmp_path / f"small-{next(counter)}"
        payload = {}
        for name, data in (files or small_files()).items():
            source = folder / "payload" / name
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(data)
            payload[name] = PayloadFile(source, "extra")
        header = Header(
            site=site,
            version=BundleVersion.parse(version),
            created="2025-11-22T08:26:40Z",
            timestamp=STAMP,
            plan_digest="sha256:" + "0" * 64,
            spec_digest="sha256:" + "1" * 64,
            aifactory_version="test",
            contents={},
        )
        sealed = seal(
            payload,
            header,
            key=signing.load_private_key(key or signer.key),
            output=folder / "b.tar",
            work=folder / "meta",
            part_size=part_size,
            compress=compress,
        )
        return sealed.parts[0] if part_size else folder / "b.tar"

    return make


def small_files() -> dict[str, bytes]:
    return {
        "plan.json": b'{"site": "tamperlab"}\n',
        "policies/data/places.json": b'{"NG": {"name": "Nigeria"}}\n',
        "wheels/demo-1.0-py3-none-any.whl": bytes(range(256)) * 400,
        "files/model.safetensors": b"\x00\x01weights" * 5000,
    }


@pytest.fixture
def admin(tmp_path: Path, signer: Signer) -> tuple[Path, Path]:
    """(the admin's key, a trust file granting the bundle key for bundles and it for activations)."""
    key = tmp_path / "admin_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", ADMIN, "-f", str(key)], check=True)
    kind, blob, *_ = key.with_suffix(".pub").read_text().split()
    trust = tmp_path / "allowed_signers"
    trust.write_text(
        signer.allowed_signers.read_text() + f'{ADMIN} namespaces="aifactory-activation" {kind} {blob}\n'
    )
    return key, trust
