"""Fixtures for the deploy tests.

`lab_bundle_import`: a real bundle built for the session lab's spec (torch wheelhouse included, no
apt repository: the lab's hosts share the machine's /usr, where setup installed the role packages),
signed with a key made for the session and imported into the lab's state folder, as an admin would
on the control host. Built once per session (about a minute with a warm wheel cache).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifactory import signing
from aifactory.plan import plan_site
from aifactory.state import SiteState


@dataclass(frozen=True)
class ImportedLabBundle:
    version: str
    digest: str
    root: Path
    allowed_signers: Path
    identity: str


def build_and_import(spec: Path, site: str, folder: Path) -> ImportedLabBundle:
    """Build a bundle for `spec`, sign it with a fresh key and import it for `site`."""
    from aifactory.bundle import BuildOptions, build_bundle, import_bundle

    identity = f"release@{site}.example"
    keys = signing.generate_keypair(folder / "key", identity=identity, namespaces="aifactory-bundle")
    output = folder / f"{site}.tar"
    build_bundle(
        plan_site(spec, write_lock=False),
        output=output,
        options=BuildOptions(key=keys.private, apt_packages=None),
    )
    imported = import_bundle(output, trust=keys.allowed_signers, site_state=SiteState.for_site(site))
    return ImportedLabBundle(
        imported.version, imported.digest, Path(imported.root), keys.allowed_signers, identity
    )


@pytest.fixture(scope="session")
def lab_bundle_import(lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImportedLabBundle]:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("deploy-bundle")
    previous = os.environ.get("AIFACTORY_BUNDLES_HOME")
    os.environ["AIFACTORY_BUNDLES_HOME"] = str(folder / "bundles")
    try:
        yield build_and_import(lab.spec, lab.site, folder)
    finally:
        if previous is None:
            os.environ.pop("AIFACTORY_BUNDLES_HOME", None)
        else:
            os.environ["AIFACTORY_BUNDLES_HOME"] = previous
