"""The bundle's local apt repository: complete, deterministic, installable with no network.

Real parts: Debian's apt-cache/apt-get on this machine resolve and download the packages; the install
is *simulated* by apt (`install -s`) against a throwaway dpkg status that lacks the role packages,
because the lab's hosts share this machine's /usr and the packages are already installed here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aifactory.bundle import apt
from aifactory.digests import sha256_file

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian's apt tools")

CACHE = Path.home() / ".cache" / "aifactory" / "debs"
STAMP = 1_700_000_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("apt") / "apt"
    apt.build_apt_repository(target, cache=CACHE, timestamp=STAMP)
    return target


def _status_without(packages: set[str], dest: Path) -> Path:
    """This machine's dpkg status minus the given packages and everything that depends on them:
    the state of a Debian host that has never had them installed."""
    stanzas = [s for s in Path("/var/lib/dpkg/status").read_text().split("\n\n") if s.strip()]
    name = {i: re.search(r"^Package: (.*)$", s, re.M).group(1) for i, s in enumerate(stanzas)}
    needs = {
        i: set(
            re.findall(
                r"(?:^|[,|]\s*)([a-z0-9][a-z0-9+.-]+)",
                " ".join(re.findall(r"^(?:Pre-)?Depends: (.*)$", s, re.M)),
            )
        )
        for i, s in enumerate(stanzas)
    }
    drop = set(packages)
    while True:
        more = {name[i] for i in name if name[i] not in drop and needs[i] & drop}
        if not more:
            break
        drop |= more
    dest.write_text("\n\n".join(s for i, s in enumerate(stanzas) if name[i] not in drop) + "\n")
    return dest


def test_repository_indexes_every_deb_with_its_hash(repo: Path) -> None:
    index = apt.read_index(repo)
    debs = sorted(repo.glob("*.deb"))
    assert {"slurmd", "slurmctld", "slurm-client", "munge", "chrony"} <= set(index)
    assert len(index) == len(debs)
    for fields in index.values():
        deb = repo / fields["Filename"].removeprefix("./")
        assert sha256_file(deb) == fields["SHA256"]
        assert deb.stat().st_size == int(fields["Size"])


def test_repository_is_deterministic(repo: Path, tmp_path: Path) -> None:
    again = tmp_path / "apt"
    apt.build_apt_repository(again, cache=CACHE, timestamp=STAMP)
    for name in ("Packages", "Release"):
        assert (repo / name).read_bytes() == (again / name).read_bytes()


def test_roles_packages_install_from_the_repository_alone_with_no_network(repo: Path, tmp_path: Path) -> None:
    status = _status_without(
        set(apt.ROLE_PACKAGES) | {"libmunge2", "slurm-wlm-basic-plugins"}, tmp_path / "status"
    )
    (tmp_path / "lists" / "partial").mkdir(parents=True)
    (tmp_path / "cache" / "archives" / "partial").mkdir(parents=True)
    sources = tmp_path / "sources.list"
    sources.write_text(f"deb [trusted=yes] file:{repo} ./\n")
    options = [
        f"-o Dir::Etc::SourceList={sources}",
        "-o Dir::Etc::SourceParts=/dev/null",
        f"-o Dir::State::Lists={tmp_path / 'lists'}",
        f"-o Dir::Cache={tmp_path / 'cache'}",
        f"-o Dir::State::status={status}",
    ]
    args = [a for o in options for a in o.split(" ", 1)]
    subprocess.run(["unshare", "-n", "apt-get", *args, "update"], check=True, capture_output=True)
    install = ["install", "-s", "-y", "--no-install-recommends", *apt.ROLE_PACKAGES]
    done = subprocess.run(["unshare", "-n", "apt-get", *args, *install], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    installed = set(re.findall(r"^Inst (\S+) .*aifactory bundle", done.stdout, re.M))
    assert set(apt.ROLE_PACKAGES) <= installed
