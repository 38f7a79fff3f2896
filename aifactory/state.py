"""The site's state folder, its lock and the operator log.

One folder per site, mode 0700:

    $AIFACTORY_STATE_HOME/<site>/     (default: $XDG_STATE_HOME/aifactory, else ~/.local/state/aifactory)
        lock                 flock held by a changing command
        lock.owner           who holds it (pid, command, since)
        operator.log.jsonl   hash-chained record of every changing command (AU-2, AU-9, AU-12)
        secrets.enc          the encrypted secret store (aifactory.secrets)
        ...                  each stage keeps its own subfolder (bundle/, lab/, deploy/, ...)
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.chain import ChainReport, ChainWriter, verify_chain
from aifactory.errors import SiteLocked, StateError

OPERATOR_LOG = "operator.log.jsonl"
_HELD_BY_THIS_PROCESS: set[str] = set()  # state folders whose lock this process holds


def state_home() -> Path:
    explicit = os.environ.get("AIFACTORY_STATE_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "aifactory"


# A command killed while it starts another process (`lab up` is, by its own tests) leaves the lock's
# open file in that child until the child closes it on its way to exec: a moment, stretched on a busy
# machine. The next command waits this long for such a lock when the command that took it is gone.
RELEASE_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class SiteState:
    """The state folder of one site."""

    site: str
    root: Path

    @classmethod
    def for_site(cls, site: str, *, home: Path | None = None) -> SiteState:
        if not site or site in (".", "..") or "/" in site or "\0" in site:
            raise StateError(f"{site!r} cannot name a state folder", hint="use the spec's site.name")
        root = (home or state_home()) / site
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(root, 0o700)
        except OSError as exc:
            raise StateError(
                f"cannot create the state folder {root}: {exc.strerror}",
                hint="set AIFACTORY_STATE_HOME to a writable folder",
            ) from exc
        return cls(site, root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def subdir(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    @property
    def operator_log(self) -> Path:
        return self.root / OPERATOR_LOG

    @contextmanager
    def lock(self, command: str, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the site lock for a changing command; refuse (or wait up to `wait` s) if held.

        Re-entrant within one process: a step that takes the lock inside a command that already
        holds it (`plan` inside `up`) goes on instead of refusing its own process.
        """
        key = str(self.root.resolve())
        if key in _HELD_BY_THIS_PROCESS:
            yield
            return
        lock_path = self.root / "lock"
        owner_path = self.root / "lock.owner"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        grace_given = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        if not grace_given and _owner_gone(owner_path):
                            grace_given = True
                            deadline = time.monotonic() + RELEASE_GRACE_SECONDS
                            continue
                        holder = _read_owner(owner_path)
                        raise SiteLocked(
                            f"site {self.site!r} is busy: {holder}",
                            hint="wait for it to finish, or pass --wait SECONDS to wait for the lock",
                        ) from None
                    time.sleep(0.1)
            owner_path.write_text(
                json.dumps({"pid": os.getpid(), "command": command, "since": _now_iso()}) + "\n"
            )
            os.chmod(owner_path, 0o600)
            _HELD_BY_THIS_PROCESS.add(key)
            try:
                yield
            finally:
                _HELD_BY_THIS_PROCESS.discard(key)
        finally:
            os.close(fd)  # closing releases the flock

    def record(
        self,
        *,
        command: str,
        result: str,
        spec_digest: str | None = None,
        bundle_digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one record to the operator log."""
        payload: dict[str, Any] = {
            "time": _now_iso(),
            "user": who(),
            "host": socket.gethostname(),
            "command": command,
            "site": self.site,
            "spec_digest": spec_digest,
            "bundle_digest": bundle_digest,
            "result": result,
        }
        if detail:
            payload["detail"] = detail
        with ChainWriter(self.operator_log) as writer:
            return writer.append(payload)

    def verify_operator_log(self) -> ChainReport:
        return verify_chain(self.operator_log)


def _owner_pid(path: Path) -> int | None:
    try:
        pid = json.loads(path.read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def _owner_gone(path: Path) -> bool:
    """Whether the command that last took the lock is no longer running."""
    pid = _owner_pid(path)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _read_owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        command, pid, since = owner["command"], owner["pid"], owner["since"]
    except (OSError, ValueError, KeyError, TypeError):
        return "another command holds its lock"
    if _owner_gone(path):
        return (
            f"`{command}` (pid {pid}, no longer running) took its lock at {since}, and a process it "
            "started still holds it"
        )
    return f"`{command}` (pid {pid}) has held its lock since {since}"


def who() -> str:
    """The user running this command (the operator log's `user`)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
