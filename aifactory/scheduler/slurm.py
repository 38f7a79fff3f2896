"""Where Slurm's client commands run: on the site's control host, as the site's `Connection` runs
commands there (this machine for a real site; inside the lab control host's namespaces for the lab,
where its munge socket and slurmctld are). One small interface, so submission and listing do not
care which."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aifactory.connection import Connection
from aifactory.errors import ExitCode, PrerequisiteError

CLIENT_TIMEOUT_S = 60.0


class SlurmClient(Protocol):
    @property
    def where(self) -> str: ...

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...


@dataclass(frozen=True)
class ControlHostSlurm:
    """Slurm's commands on the site's control host, as the site's Connection runs commands there."""

    connection: Connection
    where: str

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        if not self.connection.control_prefix and shutil.which(argv[0]) is None:
            raise PrerequisiteError(
                f"{argv[0]} is not installed here",
                hint="run aifactory train/jobs on the site's control host, where the scheduler play "
                "installed slurm-client (or bring the site's lab up)",
                code="slurm-missing",
            )
        return self.connection.run_on_control_host(argv, input_text=input_text, timeout=CLIENT_TIMEOUT_S)


def client_for(connection: Connection) -> SlurmClient:
    """The Slurm client of the site that `connection` reaches."""
    return ControlHostSlurm(connection, where=connection.description)


def checked(result: subprocess.CompletedProcess[str], what: str, where: str) -> str:
    """stdout of a Slurm command that must succeed; its own message otherwise."""
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise PrerequisiteError(
            f"{what} failed on {where} (exit {result.returncode}): {detail[-1] if detail else 'no output'}",
            hint="check the scheduler with `sinfo` and `scontrol ping` on the control host "
            "(docs/scheduler.md)",
            code="slurm-failed",
            exit_code=ExitCode.CANNOT_EVALUATE,
        )
    return result.stdout
