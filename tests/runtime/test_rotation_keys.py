"""Rotating the bundle-signing key and the hosts' SSH host keys (SC-12), with real OpenSSH.

bundle-key: bundles are stood in for by a signed file (the manifest is what a bundle's signature
covers); signatures are made by `ssh-keygen -Y sign` and checked by `ssh-keygen -Y verify` against the
allowed_signers each "host" was given, as the bundle role does on hosts, and by the project's own
verifier. The rollout copies the site's trust file to each host as the bundle role does.

ssh-host-keys: a real sshd on loopback (in its own mount namespace, for the /run/sshd it needs) is the
host; the control host reaches it with ssh and the known_hosts under test, so every connection checks
the host key. The host generates its key over that connection (the production HostKeysOnHosts). The
rollout is a stand-in for the base role's install task and sshd reload: it installs the staged key and
restarts sshd (the role itself is checked on the lab, tests/runtime/test_rotation_keys_lab.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from waiting import wait_for

from aifactory import signing
from aifactory.audit.evidence.rotations import IN_USE, SETTLED, rotation_evidence
from aifactory.bundle.manifest import NAMESPACE
from aifactory.connection import ssh_connection
from aifactory.deploy.rollout import HostKeysOnHosts
from aifactory.errors import RotationError
from aifactory.state import SiteState
from aifactory.trust.issuing.known_hosts import key_fingerprint
from aifactory.trust.issuing.rotation import RotationRecord, Targets, load_record, record_path, rotate
from aifactory.trust.tokens import TrustFiles

SITE = "rk"
IDENTITY = f"bundle@{SITE}"
SSHD = Path("/usr/sbin/sshd")


def _sign(key: Path, data: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(data)], check=True)
    signature = data.with_name(f"{data.name}.{key_fingerprint(_public(key))[7:15].replace('/', '_')}.sig")
    Path(f"{data}.sig").replace(signature)
    return signature


def _public(key: Path) -> str:
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def _ssh_keygen_verifies(data: Path, signature: Path, allowed_signers: Path) -> bool:
    done = signing.ssh_keygen_verify(
        data, signature, allowed_signers=allowed_signers, identity=IDENTITY, namespace=NAMESPACE
    )
    return done.returncode == 0


def _project_verifies(data: Path, signature: Path, allowed_signers: Path) -> bool:
    try:
        signing.verify(
            data.read_bytes(), signature.read_text(), allowed_signers=allowed_signers, namespace=NAMESPACE
        )
    except signing.SignatureError:
        return False
    return True


@dataclass
class TrustCopy:
    """Gives each host the site's bundle trust file (the bundle role's copy to bundle_root)."""

    source: Path
    nodes: dict[str, Path]
    deployed: list[str] = field(default_factory=list)

    def hosts(self) -> Sequence[str]:
        return list(self.nodes)

    def deploy(self, host: str) -> None:
        self.nodes[host].mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.source, self.nodes[host] / "allowed_signers")
        self.deployed.append(host)


@pytest.fixture
def bundle_site(tmp_path: Path) -> tuple[TrustFiles, Path, TrustCopy]:
    folder = tmp_path / "bundle-key"
    signing.generate_keypair(folder, identity=IDENTITY, namespaces=NAMESPACE)
    nodes = {"rk-cpu-001": tmp_path / "n1", "rk-cpu-002": tmp_path / "n2"}
    rollout = TrustCopy(folder / "allowed_signers", nodes)
    for host in nodes:
        rollout.deploy(host)
    rollout.deployed.clear()
    return TrustFiles(tmp_path / "runtime"), folder, rollout


def test_bundles_signed_by_either_key_verify_in_the_overlap_and_only_the_new_after_finish(
    bundle_site: tuple[TrustFiles, Path, TrustCopy], tmp_path: Path
) -> None:
    trust, folder, rollout = bundle_site
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"version": "20261201.1"}\n')
    old_private = (folder / "signing_key").read_bytes()
    old_signature = _sign(folder / "signing_key", manifest)
    lines: list[str] = []

    record = rotate(
        trust,
        site=SITE,
        what="bundle-key",
        rollout=rollout,
        targets=Targets(bundle_key=folder),
        report=lines.append,
    )

    assert record.phase == "overlap" and record.old != record.new
    assert rollout.deployed == ["rk-cpu-001", "rk-cpu-002"]
    assert (folder / "signing_key").stat().st_mode & 0o777 == 0o600
    assert (folder / "signing_key").read_bytes() != old_private and not (folder / "next").exists()
    assert key_fingerprint(_public(folder / "signing_key")) == record.new
    new_signature = _sign(folder / "signing_key", manifest)
    for node in rollout.nodes.values():
        for signature in (old_signature, new_signature):
            assert _ssh_keygen_verifies(manifest, signature, node / "allowed_signers")
            assert _project_verifies(manifest, signature, node / "allowed_signers")
    written = record_path(trust, "bundle-key").read_text() + "\n".join(lines)
    new_private = (folder / "signing_key").read_text()
    assert "PRIVATE" not in written and new_private not in written
    assert record_path(trust, "bundle-key").stat().st_mode & 0o777 == 0o600

    rollout.deployed.clear()
    done = rotate(
        trust, site=SITE, what="bundle-key", rollout=rollout, targets=Targets(bundle_key=folder), finish=True
    )

    assert done.phase == "finished" and rollout.deployed == ["rk-cpu-001", "rk-cpu-002"]
    for trust_file in (folder / "allowed_signers", *(n / "allowed_signers" for n in rollout.nodes.values())):
        assert not _ssh_keygen_verifies(manifest, old_signature, trust_file)
        assert not _project_verifies(manifest, old_signature, trust_file)
        assert _ssh_keygen_verifies(manifest, new_signature, trust_file)


def test_a_site_without_a_bundle_key_has_nothing_to_rotate(tmp_path: Path) -> None:
    with pytest.raises(RotationError) as raised:
        rotate(
            TrustFiles(tmp_path / "runtime"),
            site=SITE,
            what="bundle-key",
            rollout=TrustCopy(tmp_path, {}),
            targets=Targets(bundle_key=tmp_path / "none"),
        )
    assert raised.value.code == "rotation-nothing-to-rotate"


def test_finishing_a_bundle_key_rotation_before_it_started_is_refused(
    bundle_site: tuple[TrustFiles, Path, TrustCopy],
) -> None:
    trust, folder, rollout = bundle_site
    with pytest.raises(RotationError) as raised:
        rotate(
            trust,
            site=SITE,
            what="bundle-key",
            rollout=rollout,
            targets=Targets(bundle_key=folder),
            finish=True,
        )
    assert raised.value.code == "rotation-phase"
    assert rollout.deployed == []


# ------------------------------------------------------------------ ssh-host-keys


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


@dataclass
class Sshd:
    """A real sshd on 127.0.0.1 serving `host_key` (restarted to take a new one, as a reload does)."""

    folder: Path
    host_key: Path
    admin_public: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.folder / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {self.folder}/sshd.pid\nAuthorizedKeysFile {self.admin_public}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nUseDNS no\n"
        )
        # its own mount namespace with a private /run: sshd needs /run/sshd, which this machine lacks
        script = 'mount -t tmpfs none /run && mkdir -m 755 /run/sshd && exec "$0" -D -e -f "$1"'
        self.process = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script, str(SSHD), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, what="sshd listening", timeout=10, every=0.05)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class HostKeyInstall:
    """Stand-in for the base role's install task and its sshd reload: the staged key becomes the host
    key (0600), the staged files go, and sshd starts again with it."""

    sshd: Sshd
    host: str
    deployed: list[str] = field(default_factory=list)

    def hosts(self) -> Sequence[str]:
        return [self.host]

    def deploy(self, host: str) -> None:
        staged = Path(f"{self.sshd.host_key}.next")
        if staged.exists():
            shutil.copyfile(staged, self.sshd.host_key)
            os.chmod(self.sshd.host_key, 0o600)
            shutil.copyfile(f"{staged}.pub", f"{self.sshd.host_key}.pub")
            staged.unlink()
            Path(f"{staged}.pub").unlink()
            self.sshd.stop()
            self.sshd.start()
        self.deployed.append(host)


@dataclass
class SshSite:
    trust: TrustFiles
    known_hosts: Path
    ssh_config: Path
    sshd: Sshd
    source: HostKeysOnHosts
    rollout: HostKeyInstall

    def reaches(self, known_hosts: Path | None = None) -> bool:
        """Whether ssh to the host succeeds with host key checking against `known_hosts`."""
        argv = [
            "ssh",
            "-F",
            str(self.ssh_config),
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "host1",
            "true",
        ]
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


@pytest.fixture
def ssh_site(tmp_path: Path) -> Iterator[SshSite]:
    if not SSHD.exists() or shutil.which("unshare") is None:
        pytest.skip("needs /usr/sbin/sshd and unshare")
    host_dir = tmp_path / "host1"
    host_dir.mkdir()
    admin = _keygen(tmp_path / "admin")
    sshd = Sshd(host_dir, _keygen(host_dir / "ssh_host_ed25519_key"), Path(f"{admin}.pub"))
    known = tmp_path / "known_hosts"
    known.write_text(
        f"# the admin's own\nother.example ssh-ed25519 {'A' * 68}\nhost1 {_public(sshd.host_key)}\n"
    )
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host host1\n  HostName 127.0.0.1\n  Port {sshd.port}\n  HostKeyAlias host1\n  User root\n"
        f"  IdentityFile {admin}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
        "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
    )
    connection = ssh_connection(ssh_config=config, known_hosts=known)
    source = HostKeysOnHosts(connection, {"host1": "host1"}, key_path=str(sshd.host_key))
    try:
        sshd.start()
        yield SshSite(
            TrustFiles(tmp_path / "runtime"), known, config, sshd, source, HostKeyInstall(sshd, "host1")
        )
    finally:
        sshd.stop()


def _rotate_host_keys(site: SshSite, *, finish: bool = False) -> RotationRecord:
    targets = Targets(known_hosts=site.known_hosts, host_keys=site.source)
    return rotate(
        site.trust, site=SITE, what="ssh-host-keys", rollout=site.rollout, targets=targets, finish=finish
    )


def test_the_new_host_key_is_learned_over_the_authenticated_connection_and_the_old_dropped_at_finish(
    ssh_site: SshSite, tmp_path: Path
) -> None:
    old_key = _public(ssh_site.sshd.host_key)
    only_old = tmp_path / "only_old"
    only_old.write_text(f"host1 {old_key}\n")
    assert ssh_site.reaches()

    record = _rotate_host_keys(ssh_site)

    assert record.phase == "overlap" and ssh_site.rollout.deployed == ["host1"]
    new_key = record.host_keys["host1"]
    assert new_key != old_key and new_key == _public(ssh_site.sshd.host_key)
    assert ssh_site.sshd.host_key.stat().st_mode & 0o777 == 0o600
    lines = ssh_site.known_hosts.read_text().splitlines()
    assert lines[:3] == ["# the admin's own", f"other.example ssh-ed25519 {'A' * 68}", f"host1 {old_key}"]
    assert lines[3] == f"host1 {new_key} aifactory-rotation={record.id} host=host1"
    assert ssh_site.reaches(), "the host presents its new key, which known_hosts trusts in the overlap"
    assert not ssh_site.reaches(only_old), "the host no longer presents the old key"
    assert "PRIVATE" not in record_path(ssh_site.trust, "ssh-host-keys").read_text()

    done = _rotate_host_keys(ssh_site, finish=True)

    assert done.phase == "finished"
    assert ssh_site.known_hosts.read_text().splitlines() == [*lines[:2], lines[3]]
    assert ssh_site.reaches()


def test_a_host_showing_the_old_key_after_finish_is_refused(ssh_site: SshSite, tmp_path: Path) -> None:
    """A stolen old key, or a host restored from an old disk, is not the host any more."""
    old_copy = tmp_path / "old_host_key"
    shutil.copyfile(ssh_site.sshd.host_key, old_copy)
    _rotate_host_keys(ssh_site)
    _rotate_host_keys(ssh_site, finish=True)
    assert ssh_site.reaches()
    ssh_site.sshd.stop()
    shutil.copyfile(old_copy, ssh_site.sshd.host_key)
    ssh_site.sshd.start()
    assert not ssh_site.reaches()


@dataclass
class HostileHost:
    """A host that returns what it likes instead of a freshly generated key."""

    answer: str

    def names(self, host: str) -> Sequence[str]:
        return [host]

    def stage(self, host: str) -> str:
        return self.answer


@pytest.mark.parametrize(
    "answer",
    [
        "ssh-rsa AAAAB3NzaC1yc2E",
        f"ssh-ed25519 {'A' * 68}\nevil.example ssh-ed25519 {'B' * 68}",
        f'command="sh" ssh-ed25519 {"A" * 68}',
        "",
    ],
)
def test_a_host_answering_anything_but_one_new_ed25519_key_is_refused(tmp_path: Path, answer: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"host1 ssh-ed25519 {'C' * 68}\n")
    before = known.read_bytes()
    with pytest.raises(RotationError) as raised:
        rotate(
            TrustFiles(tmp_path / "runtime"),
            site=SITE,
            what="ssh-host-keys",
            rollout=TrustCopy(tmp_path, {"host1": tmp_path}),
            targets=Targets(known_hosts=known, host_keys=HostileHost(answer)),
        )
    assert raised.value.code == "rotation-host-key"
    assert known.read_bytes() == before


def test_a_host_returning_the_key_known_hosts_already_trusts_is_refused(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    current = f"ssh-ed25519 {'C' * 68}"
    known.write_text(f"host1 {current}\n")
    with pytest.raises(RotationError) as raised:
        rotate(
            TrustFiles(tmp_path / "runtime"),
            site=SITE,
            what="ssh-host-keys",
            rollout=TrustCopy(tmp_path, {"host1": tmp_path}),
            targets=Targets(known_hosts=known, host_keys=HostileHost(current)),
        )
    assert raised.value.code == "rotation-host-key"


def test_a_host_known_hosts_does_not_know_is_never_learned_on_first_use(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"someone-else ssh-ed25519 {'C' * 68}\n")
    with pytest.raises(RotationError) as raised:
        rotate(
            TrustFiles(tmp_path / "runtime"),
            site=SITE,
            what="ssh-host-keys",
            rollout=TrustCopy(tmp_path, {"host1": tmp_path}),
            targets=Targets(known_hosts=known, host_keys=HostileHost(f"ssh-ed25519 {'D' * 68}")),
        )
    assert raised.value.code == "rotation-known-hosts"
    assert known.read_text() == f"someone-else ssh-ed25519 {'C' * 68}\n"


def test_a_hostile_host_key_in_the_record_is_refused(tmp_path: Path) -> None:
    trust = TrustFiles(tmp_path / "runtime")
    path = record_path(trust, "ssh-host-keys")
    path.parent.mkdir(parents=True)
    path.write_text(
        '{"schema": "aifactory.rotation/v1", "id": "'
        + "a" * 32
        + '", "site": "rk", "what": "ssh-host-keys", '
        '"phase": "overlap", "started": "2026-12-01T00:00:00Z", "started_by": "root", '
        '"host_keys": {"host1": "ssh-ed25519 AAAA\\n@cert-authority * ssh-ed25519 AAAA"}}'
    )
    with pytest.raises(RotationError) as raised:
        load_record(trust, "ssh-host-keys")
    assert raised.value.code == "rotation-record-invalid"
    assert raised.value.location is not None and raised.value.location.path == "host_keys.host1"


# ------------------------------------------------------------------ SC-12


def test_sc12_covers_bundle_key_and_ssh_host_key_rotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aifactory.cli.rotate import _detail

    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "home"))
    state = SiteState.for_site(SITE)
    folder = state.subdir("bundle-key")
    signing.generate_keypair(folder, identity=IDENTITY, namespaces=NAMESPACE)
    trust = TrustFiles(state.subdir("runtime"))
    record = rotate(
        trust,
        site=SITE,
        what="bundle-key",
        rollout=TrustCopy(tmp_path, {}),
        targets=Targets(bundle_key=folder),
    )
    state.record(command="rotate", result=record.phase, detail=_detail(record, started_in=None))
    known = tmp_path / "known_hosts"
    known.write_text(f"host1 ssh-ed25519 {'C' * 68}\n")
    new_host_key = f"ssh-ed25519 {'D' * 68}"
    host_record = rotate(
        trust,
        site=SITE,
        what="ssh-host-keys",
        rollout=TrustCopy(known, {"host1": tmp_path / "host1"}),
        targets=Targets(known_hosts=known, host_keys=HostileHost(new_host_key)),
    )
    state.record(command="rotate", result=host_record.phase, detail=_detail(host_record, started_in=None))

    evidence = rotation_evidence(state)

    assert evidence.status == "pass", evidence.findings
    assert {rule.id: rule.status for _, rule in evidence.rules} == {SETTLED: "pass", IN_USE: "pass"}
    kinds = {r["what"]: r for r in evidence.detail["rotations"]}
    assert set(kinds) == {"bundle-key", "ssh-host-keys"}
    assert kinds["ssh-host-keys"]["host_keys"] == {"host1": key_fingerprint(new_host_key)}

    # the bundle key swapped behind the rotation's back: SC-12 fails
    shutil.rmtree(folder)
    signing.generate_keypair(folder, identity=IDENTITY, namespaces=NAMESPACE)
    swapped = rotation_evidence(state)
    assert {rule.id: rule.status for _, rule in swapped.rules}[IN_USE] == "fail"
    assert [f.resource for f in swapped.findings] == [f"site/{SITE}/bundle-key"]
