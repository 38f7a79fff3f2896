"""Where Slurm's client commands run: on the control host itself (a real site), or inside the lab
control host's namespaces when the site's lab is up (the lab's munge socket and slurmctld are only
reachable there). One small interface, so submission and listing do not care which."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aifactory.errors import ExitCode, PrerequisiteError

CLIENT_TIMEOUT_S = 60.0


class SlurmClient(Protocol):
    @property
    def where(self) -> str: ...

    def run(
        self, argv: Sequence[str], *, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...


@dataclass(frozen=True)
class LocalSlurm:
    """Slurm's commands on this machine (the site's control host)."""

    where: str = "this host"

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        if shutil.which(argv[0]) is None:
            raise PrerequisiteError(
                f"{argv[0]} is not installed here",
                hint="run aifactory train/jobs on the site's control host, where the scheduler play "
                "installed slurm-client (or bring the site's lab up)",
                code="slurm-missing",
            )
        return subprocess.run(
            list(argv),
            input=input_text,
            text=True,
            capture_output=True,
            check=False,
            timeout=CLIENT_TIMEOUT_S,
        )


@dataclass(frozen=True)
class LabSlurm:
    """Slurm's commands in the namespaces of the lab's control host."""

    site: str
    where: str = "the lab's control host"

    def run(self, argv: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        from aifactory.lab import lab_exec

        return lab_exec(self.site, list(argv), timeout=CLIENT_TIMEOUT_S, input_text=input_text)


def client_for(site: str) -> SlurmClient:
    """The lab's control host when the site's lab is up, else this machine."""
    from aifactory.lab import lab_status

    if lab_status(site).state in ("up", "degraded"):
        return LabSlurm(site)
    return LocalSlurm()


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
