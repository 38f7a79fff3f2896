"""Rotating the bundle-signing key and the SSH host keys on the session's deployed lab (issue 27), with
`aifactory rotate` run as the admin runs it (the CLI, rolling out through `aifactory deploy --limit HOST`
one host at a time).

bundle-key: during the overlap the bundle `up` built (signed by the old key) verifies against the
site's allowed_signers, and so does one built with the new key; after --finish the old one is refused.

ssh-host-keys, up to its overlap: each lab host generates its new key, the lab's known_hosts (the one
the deploy checks) gets it beside the old one, marked per host, and the deploy still reaches every host.
Not --finish: the lab's sshd serves a host key the lab keeps outside the host's /etc and is not
reloaded by the base role (docs/lab.md), so on the lab the new key is installed but not served.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aifactory.bundle import BuildOptions, build_bundle, verify_bundle
from aifactory.errors import BundleError
from aifactory.plan import plan_site
from aifactory.state import SiteState

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.acceptance]


def _rotate(spec: Path, *arguments: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", "rotate", str(spec), *arguments],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, f"aifactory rotate {' '.join(arguments)}:\n{done.stdout}\n{done.stderr}"


def test_bundles_from_either_key_verify_in_the_overlap_and_the_old_is_refused_after(
    deployed_lab: object, tmp_path: Path
) -> None:
    lab = deployed_lab.lab  # type: ignore[attr-defined]
    state = SiteState.for_site(lab.site)
    trust = state.path("bundle-key", "allowed_signers")
    frozen = plan_site(lab.spec, write_lock=False)  # the plan a bundle carries (its lock written)
    # The key rotated is the one that signed the bundle the hosts run: the session's release key, kept
    # where the site keeps its bundle key (as `aifactory up` keeps the key it makes).
    session_keys = deployed_lab.bundle.allowed_signers.parent  # type: ignore[attr-defined]
    old_bundle = session_keys.parent / f"{lab.site}.tar"
    assert old_bundle.is_file(), "the session bundle is not where tests/conftest.py builds it"
    folder = state.subdir("bundle-key")
    for name, mode in (("signing_key", 0o600), ("signing_key.pub", 0o644), ("allowed_signers", 0o644)):
        if not (folder / name).exists():
            shutil.copyfile(session_keys / name, folder / name)
            (folder / name).chmod(mode)

    _rotate(lab.spec, "--what", "bundle-key")

    assert len(trust.read_text().splitlines()) == 2
    verify_bundle(old_bundle, trust=trust, check_rollback=False)
    new_bundle = build_bundle(
        frozen,
        output=tmp_path / "new.bundle.tar",
        options=BuildOptions(key=state.path("bundle-key", "signing_key")),
    ).parts[0]
    verify_bundle(new_bundle, trust=trust, check_rollback=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aifactory.cli.main",
            "bundle",
            "import",
            str(new_bundle),
            "--trust",
            str(trust),
        ],
        check=True,
        timeout=1800,
    )

    _rotate(lab.spec, "--what", "bundle-key", "--finish")

    assert len(trust.read_text().splitlines()) == 1
    verify_bundle(new_bundle, trust=trust, check_rollback=False)
    with pytest.raises(BundleError):
        verify_bundle(old_bundle, trust=trust, check_rollback=False)


def test_each_host_generates_its_new_host_key_and_known_hosts_trusts_both_in_the_overlap(
    deployed_lab: object,
) -> None:
    lab = deployed_lab.lab  # type: ignore[attr-defined]
    known_hosts = Path(lab.status.paths["known_hosts"])
    before = known_hosts.read_text().splitlines()

    _rotate(lab.spec, "--what", "ssh-host-keys")

    lines = known_hosts.read_text().splitlines()
    assert lines[: len(before)] == before, "the old keys stay for the overlap"
    added = lines[len(before) :]
    assert sorted(line.rsplit("host=", 1)[1] for line in added) == sorted(h.name for h in lab.plan.hosts)
    assert all(" aifactory-rotation=" in line for line in added)
    # The deploy's ssh (the lab's ssh config: its known_hosts alone, strict checking), on a fresh
    # connection so that the key the host shows now is checked. (A bare `ssh HOST` on the control
    # host reads root's own known_hosts, which knows no lab host: it refuses before and after.)
    config = lab.status.paths["ssh_config"]
    for host in lab.plan.hosts:
        lab.exec(["ssh", "-F", config, "-o", "ControlPath=none", host.name, "true"])
        # the deploy installed the staged key and removed its staged copy, on the host only
        lab.exec(["test", "!", "-e", "/etc/ssh/ssh_host_ed25519_key.next"], host.name)
        lab.exec(["test", "-s", "/etc/ssh/ssh_host_ed25519_key"], host.name)
