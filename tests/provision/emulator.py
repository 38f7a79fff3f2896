"""Start the sushy-tools Redfish emulator (fake driver) on a loopback port, with basic auth, over plain
HTTP or, given a server certificate and key (`tls`), over HTTPS.

The fake driver keeps systems in SQLite under its state folder, applies power changes after a
random 1-11 s delay and stores every boot override as Continuous. `external_notifier` stays off,
so it sends nothing anywhere.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
from waiting import scaled, wait_for

from aifactory.netns import NetworkNamespace

USER = "admin"
PASSWORD = "emulator-pass-123"  # a test credential for a loopback emulator, made for this test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Emulator:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    tls: tuple[Path, Path, Path] | None = None  # the server's certificate and key, the CA that signed it
    network: NetworkNamespace | None = None  # where it listens, when not this process's network

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, systems: list[dict[str, Any]], *, state: str = "state") -> Emulator:
        self.folder.mkdir(parents=True, exist_ok=True)
        htpasswd = self.folder / "htpasswd"
        htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
        state_dir = self.folder / state
        state_dir.mkdir(exist_ok=True)
        for system in systems:
            system.setdefault("external_notifier", False)
        config = self.folder / "emulator.conf"
        config.write_text(
            f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            f"SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(state_dir)!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
            f"SUSHY_EMULATOR_FEATURE_SET = 'full'\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
        )
        if self.tls:
            certificate, key, _ = self.tls
            with config.open("a") as settings:
                settings.write(f"SUSHY_EMULATOR_SSL_CERT = {str(certificate)!r}\n")
                settings.write(f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}\n")
        binary = Path(sys.executable).parent / "sushy-emulator"
        log = open(self.folder / "emulator.log", "ab")  # noqa: SIM115 - closed with the process
        enter = ["nsenter", f"--net={self.network.path}"] if self.network else []
        self.process = subprocess.Popen(
            [*enter, str(binary), "--config", str(config)],
            stdout=log,
            stderr=log,
            env={**os.environ, "TMPDIR": str(state_dir)},
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        context = ssl.create_default_context(cafile=str(self.tls[2])) if self.tls else None

        def answers() -> bool:
            try:
                urllib.request.urlopen(self.endpoint + "/redfish/v1/", timeout=1, context=context)
                return True
            except urllib.error.HTTPError:
                return True  # 401: it answers
            except (urllib.error.URLError, OSError):
                return False

        network = self.network
        wait_for(
            answers if network is None else lambda: network.run(answers),
            what=f"the Redfish emulator to answer at {self.endpoint}",
            timeout=timeout,
            detail=lambda: f"see {self.folder / 'emulator.log'}",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
