"""Redfish BMCs for lab hosts: one sushy-tools emulator (fake system driver) per BMC-bearing host,
listening on the host's planned BMC address inside the BMC namespace of its BMC fabric.

Each emulator requires HTTP basic auth (an htpasswd file with a bcrypt hash): the credentials are
made at `lab up`, one pair per host, and stored in the site's encrypted secret store under the
host's planned reference (`secret://lab/bmc/<host>` in the lab site), as the value `USER:PASSWORD`.
They are never printed. `external_notifier` stays off, so an emulator sends nothing anywhere.
"""

from __future__ import annotations

import hashlib
import os
import secrets as random_secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from aifactory.errors import LabError, PrerequisiteError, SecretError
from aifactory.lab.bmc_power import PowerModel
from aifactory.lab.journal import Journal
from aifactory.lab.layout import LabLayout, make_dir, write_file
from aifactory.lab.system import listening, wait_ready
from aifactory.plan.model import Host, SitePlan
from aifactory.secrets import STORE_FILE, SecretResolver, SecretStore, read_passphrase
from aifactory.state import SiteState

BMC_PORT = 8000
BMC_USER = "admin"
BCRYPT_ROUNDS = 8  # every Redfish request checks it: kept cheap in the lab
START_TIMEOUT = 30.0
LAB_SERVER = PowerModel()  # the emulated reading: 100 W idle, 400 W busy (docs/lab.md)


@dataclass(frozen=True)
class BmcCredential:
    username: str
    password: str  # never printed; only written to the secret store and (hashed) to htpasswd

    def __repr__(self) -> str:
        return f"BmcCredential(username={self.username!r}, password=<hidden>)"

    @classmethod
    def parse(cls, value: str) -> BmcCredential:
        """A BMC secret's value is `USER:PASSWORD`."""
        username, sep, password = value.partition(":")
        if not sep or not username or not password:
            raise SecretError("a BMC credential must have the form USER:PASSWORD")
        return cls(username, password)

    def value(self) -> str:
        return f"{self.username}:{self.password}"


def system_uuid(site: str, host: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aifactory-lab:{site}:{host}"))


def system_mac(site: str, host: str) -> str:
    digest = hashlib.sha256(f"{site}:{host}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])  # locally administered


def bmc_url(host: Host) -> str:
    assert host.bmc is not None
    address = f"[{host.bmc.address}]" if ":" in host.bmc.address else host.bmc.address
    return f"http://{address}:{BMC_PORT}"


def sushy_emulator() -> str:
    beside = Path(sys.executable).parent / "sushy-emulator"
    found = str(beside) if beside.exists() else shutil.which("sushy-emulator")
    if not found:
        raise PrerequisiteError(
            "the lab's Redfish BMCs need sushy-tools (sushy-emulator), which is not installed",
            hint="pip install 'aifactory[control]'",
        )
    return found


@dataclass(frozen=True)
class LabSecrets:
    """The BMC credentials made or found at `lab up`, and the passphrase file that opens their store."""

    credentials: dict[str, BmcCredential]
    store: Path
    passphrase_file: Path

    def as_dict(self) -> dict[str, str]:
        return {"store": str(self.store), "passphrase_file": str(self.passphrase_file)}


def open_site_store(site: str, layout: LabLayout, journal: Journal) -> tuple[SecretStore, Path]:
    """The site's secret store and the passphrase file that opens it. The lab creates the store, with
    its own passphrase file, when there is none; an existing one must open with the lab's passphrase
    file or with AIFACTORY_PASSPHRASE_FILE (never a prompt)."""
    path = SiteState.for_site(site).path(STORE_FILE)
    if not layout.passphrase_file.exists():
        write_file(layout.passphrase_file, random_secrets.token_urlsafe(32) + "\n", 0o600)
    if not path.exists():
        journal.add("secret-store", str(path))
        return SecretStore(path, read_passphrase(layout.passphrase_file)), layout.passphrase_file
    candidates = [layout.passphrase_file]
    if os.environ.get("AIFACTORY_PASSPHRASE_FILE"):
        candidates.append(Path(os.environ["AIFACTORY_PASSPHRASE_FILE"]))
    for passphrase_file in candidates:
        store = SecretStore(path, read_passphrase(passphrase_file))
        try:
            store.references()
        except SecretError:
            continue
        return store, passphrase_file
    raise LabError(
        f"the site's secret store {path} exists and the lab cannot open it to add BMC credentials",
        hint="give its passphrase in a file named by AIFACTORY_PASSPHRASE_FILE",
    )


def ensure_credentials(site: str, plan: SitePlan, layout: LabLayout, journal: Journal) -> LabSecrets | None:
    """One credential per BMC host: reused from the store when present, else made and stored."""
    bmc_hosts = [h for h in plan.hosts if h.bmc is not None]
    if not bmc_hosts:
        return None
    store, passphrase_file = open_site_store(site, layout, journal)
    known = set(store.references())
    credentials: dict[str, BmcCredential] = {}
    for host in bmc_hosts:
        assert host.bmc is not None
        reference = host.bmc.credentials
        existing = store.get(reference) if reference in known else None
        if existing is not None:
            credentials[host.name] = BmcCredential.parse(existing)
            continue
        credential = BmcCredential(BMC_USER, random_secrets.token_urlsafe(18))
        journal.add("secret", reference, store=str(store.path), passphrase_file=str(passphrase_file))
        store.set(reference, credential.value())
        credentials[host.name] = credential
    return LabSecrets(credentials, store.path, passphrase_file)


def emulator_config(
    site: str,
    host: Host,
    folder: Path,
    *,
    host_namespace: str,
    listen: tuple[str, int] | None = None,
    power: PowerModel = LAB_SERVER,
) -> str:
    """The emulator's config: the host's system, basic auth, and the emulated power reading that
    follows the CPU load of `host_namespace` (the host's network namespace; aifactory.lab.bmc_power).
    `listen` is the BMC's address and port unless given (a loopback test)."""
    assert host.bmc is not None
    address, port = listen or (host.bmc.address, BMC_PORT)
    system = {
        "uuid": system_uuid(site, host.name),
        "name": host.name,
        "power_state": "Off",
        "external_notifier": False,
        "nics": [{"mac": system_mac(site, host.name), "ip": host.management_address}],
    }
    settings = {
        "SUSHY_EMULATOR_LISTEN_IP": address,
        "SUSHY_EMULATOR_LISTEN_PORT": port,
        "SUSHY_EMULATOR_FAKE_DRIVER": True,
        "SUSHY_EMULATOR_STATE_DIR": str(folder / "state"),
        "SUSHY_EMULATOR_AUTH_FILE": str(folder / "htpasswd"),
        "SUSHY_EMULATOR_FEATURE_SET": "full",
        "SUSHY_EMULATOR_FAKE_SYSTEMS": [system],
        "EXTERNAL_NOTIFICATION_URL": "http://127.0.0.1:9/",  # never used: external_notifier is off
        "AIFACTORY_POWER_NETNS": host_namespace,
        "AIFACTORY_POWER_IDLE_WATTS": power.idle_watts,
        "AIFACTORY_POWER_BUSY_WATTS": power.busy_watts,
    }
    lines = [f"# aifactory lab: Redfish BMC of {host.name}"]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def emulator_argv(config: Path) -> list[str]:
    """sushy-tools' emulator with the emulated Power resource (aifactory.lab.bmc_power): the same
    process, its own auth and TLS. Needs sushy-tools installed."""
    sushy_emulator()
    return [sys.executable, "-m", "aifactory.lab.bmc_emulator", "--config", str(config)]


def write_htpasswd(folder: Path, credential: BmcCredential) -> Path:
    hashed = bcrypt.hashpw(credential.password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    return write_file(folder / "htpasswd", f"{credential.username}:{hashed}\n", 0o600)


def start_emulator(
    site: str,
    host: Host,
    namespace: str,
    layout: LabLayout,
    credential: BmcCredential,
    *,
    host_namespace: str,
) -> subprocess.Popen[bytes]:
    """The host's BMC in the BMC `namespace`; its power reading follows `host_namespace`'s CPU load."""
    folder = make_dir(layout.bmc_dir(host.name))
    make_dir(folder / "state")
    write_htpasswd(folder, credential)
    text = emulator_config(site, host, folder, host_namespace=host_namespace)
    config = write_file(folder / "emulator.conf", text, 0o600)
    log = open(folder / "emulator.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                "env",
                f"TMPDIR={folder / 'state'}",
                *emulator_argv(config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=str(folder),
            start_new_session=True,
        )
    finally:
        log.close()


def wait_listening(layout: LabLayout, emulators: dict[str, tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Wait until every emulator listens on its BMC address."""
    addresses = {name: address for name, (address, _) in emulators.items()}
    wait_ready(
        {name: proc for name, (_, proc) in emulators.items()},
        lambda name, pid: listening(pid, addresses[name], BMC_PORT),
        what="the BMC emulator",
        log_of=lambda name: layout.bmc_dir(name) / "emulator.log",
        timeout=START_TIMEOUT,
        interval=0.1,
    )


def lab_secret_resolver(site_name: str) -> SecretResolver:
    """A resolver for the lab's `secret://` references: the environment, then the site's store opened
    with the passphrase file `lab up` used (the lab's own when it made the store)."""
    from aifactory.lab.query import lab_status

    secrets = lab_status(site_name).secrets
    store = Path(secrets["store"]) if secrets else SiteState.for_site(site_name).path(STORE_FILE)
    return SecretResolver(store, secrets.get("passphrase_file"))


def lab_bmc_credential(site_name: str, reference: str) -> BmcCredential:
    """The credential behind a BMC's reference (e.g. `secret://lab/bmc/lab-cpu-001`)."""
    return BmcCredential.parse(lab_secret_resolver(site_name).resolve(reference).value)
