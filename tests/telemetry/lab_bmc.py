"""A lab BMC on loopback: the emulator started as `lab up` starts it (aifactory.lab.bmc's config, the
same command), but listening on 127.0.0.1 and outside any lab namespace, with its power reading
following the CPU load of a process that runs in a network namespace of its own (`unshare --net`,
root only: gone with the process, nothing left in /run/netns).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from waiting import scaled, wait_for

from aifactory.lab.bmc import BmcCredential, emulator_argv, emulator_config, write_htpasswd
from aifactory.lab.bmc_power import PowerModel
from aifactory.plan.model import Host
from tests.provision.emulator import free_port

CREDENTIAL = BmcCredential("admin", "loopback-bmc-pass-42")  # made for these tests
BUSY_LOOP = "while True: pass"


def namespaced(code: str) -> subprocess.Popen[bytes]:
    """`python -c CODE` in a new network namespace of its own."""
    return subprocess.Popen(["unshare", "--net", sys.executable, "-c", code])


def namespace_of(process: subprocess.Popen[bytes]) -> str:
    """The process's network namespace once unshare has made it (its own, not the test's)."""
    mine = os.stat("/proc/self/ns/net").st_ino
    path = f"/proc/{process.pid}/ns/net"
    wait_for(lambda: os.stat(path).st_ino != mine, what="unshare to enter its namespace", timeout=10)
    return path


@dataclass
class LoopbackBmc:
    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=scaled(10))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True  # 401: it answers
    except (urllib.error.URLError, OSError):
        return False
    return True


@contextmanager
def loopback_bmc(
    folder: Path, host: Host, host_namespace: str, *, power: PowerModel | None = None
) -> Iterator[LoopbackBmc]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state").mkdir(exist_ok=True)
    write_htpasswd(folder, CREDENTIAL)
    port = free_port()
    config = folder / "emulator.conf"
    extra = {"power": power} if power else {}
    text = emulator_config(
        "unit", host, folder, host_namespace=host_namespace, listen=("127.0.0.1", port), **extra
    )
    config.write_text(text)
    with open(folder / "emulator.log", "ab") as log:
        process = subprocess.Popen(
            emulator_argv(config),
            stdout=log,
            stderr=log,
            env={**os.environ, "TMPDIR": str(folder / "state")},
        )
    bmc = LoopbackBmc(folder, port, process)
    try:
        wait_for(
            lambda: _answers(bmc.endpoint + "/redfish/v1/"),
            what=f"the lab BMC emulator at {bmc.endpoint}",
            timeout=30,
            detail=lambda: (folder / "emulator.log").read_text()[-2000:],
        )
        yield bmc
    finally:
        bmc.stop()
