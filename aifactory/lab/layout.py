"""Where the lab keeps its files: `SiteState.for_site(site).subdir("lab")`.

lab/
  journal.jsonl          what `up` made (read by `down`)
  lab.json               the running lab: hosts, pids, addresses (read by `status`)
  plan.json              the plan the lab was built from
  passphrase             0600: opens the site's secret store when the lab created it
  ssh/                   admin_ed25519 (0600) + .pub, authorized_keys, known_hosts, ssh_config
  ansible/               ansible.cfg, inventory.yml, facts/ (fact cache), tmp/
  bin/                   aifactory-service (the supervisor installed into every host's /run)
  hosts/<host>/          sshd_config, host keys, setup.sh, logs, and the host's private trees:
                         etc.upper/ etc.work/ (the /etc overlay), opt/, var-log/, var-spool/,
                         var-lib-aifactory/, overlays/ (for parents of missing mount points)
  storage/<storage>/     backs the plan's storage mounts (shared by the hosts that mount it)
  bmc/<host>/            emulator config, htpasswd, state, log
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aifactory.state import SiteState


@dataclass(frozen=True)
class LabLayout:
    root: Path

    @classmethod
    def for_site(cls, site: str) -> LabLayout:
        """The lab folder of a site, created (0700) if missing."""
        return cls(SiteState.for_site(site).subdir("lab"))

    @classmethod
    def locate(cls, site: str) -> LabLayout:
        """The lab folder of a site, without creating it."""
        return cls(SiteState.for_site(site).path("lab"))

    @property
    def status_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    @property
    def passphrase_file(self) -> Path:
        return self.root / "passphrase"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def private_key(self) -> Path:
        return self.ssh_dir / "admin_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "ssh_config"

    @property
    def ansible_dir(self) -> Path:
        return self.root / "ansible"

    @property
    def ansible_cfg(self) -> Path:
        return self.ansible_dir / "ansible.cfg"

    @property
    def inventory(self) -> Path:
        return self.ansible_dir / "inventory.yml"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    def storage_dir(self, storage: str) -> Path:
        return self.root / "storage" / storage

    def bmc_dir(self, host: str) -> Path:
        return self.root / "bmc" / host


def make_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


def write_file(path: Path, text: str, mode: int = 0o644) -> Path:
    """`text` at `path`, whole or not at all (a temporary file renamed), with `mode` from its creation."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path
