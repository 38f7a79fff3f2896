"""Per-host progress and the summary table, built from ansible-runner's events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESULT_EVENTS: dict[str, str | None] = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_failed": None,  # counted once by its task's result
}

# A host in one of these states did not run the whole play: it is named for a re-run, never recorded deployed.
UNFINISHED = ("failed", "unreachable", "incomplete")


@dataclass
class HostProgress:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    last_task: str = ""
    message: str = ""
    converged: bool = False  # left out of the run: it still matches its last full run (converged.py)
    incomplete: bool = False  # the run stopped before Ansible's recap: the rest of the play never ran

    @property
    def status(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        if self.incomplete:
            return "incomplete"
        return "changed" if self.changed else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status,
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "rescued": self.rescued,
            "ignored": self.ignored,
            "last_task": self.last_task,
            "message": self.message,
            "converged": self.converged,
        }


@dataclass(frozen=True)
class Update:
    """One thing worth showing: a task starting, or a host's result of a task."""

    kind: str  # task | ok | changed | failed | unreachable | skipped | converged | runs (and why)
    task: str
    host: str | None = None
    message: str = ""
    task_number: int = 0


@dataclass
class Progress:
    """Feeds on events; keeps per-host counts until the final stats replace them."""

    hosts: dict[str, HostProgress] = field(default_factory=dict)
    tasks_started: int = 0
    final: bool = False

    def host(self, name: str) -> HostProgress:
        return self.hosts.setdefault(name, HostProgress(name))

    def feed(self, event: dict[str, Any]) -> Update | None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            self.tasks_started += 1
            return Update("task", str(data.get("task", "")), task_number=self.tasks_started)
        if kind == "playbook_on_stats":
            self._final_stats(data)
            return None
        state = RESULT_EVENTS.get(kind)
        if state is None:
            return None
        host = str(data.get("host", ""))
        res = data.get("res") or {}
        progress = self.host(host)
        progress.last_task = str(data.get("task", ""))
        if state == "ok" and res.get("changed"):
            state = "changed"
        if state in ("failed", "unreachable"):
            if data.get("ignore_errors"):
                state = "ok"
            else:
                progress.message = failure_message(res)
        if state == "changed":
            progress.changed += 1
            progress.ok += 1
        else:
            setattr(progress, state, getattr(progress, state) + 1)
        message = progress.message if state in ("failed", "unreachable") else ""
        return Update(state, progress.last_task, host, message)

    def _final_stats(self, data: dict[str, Any]) -> None:
        """Ansible's own recap is the authority for the counts."""
        names: set[str] = set()
        for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed"):
            names.update((data.get(key) or {}).keys())
        for name in names:
            progress = self.host(name)
            progress.ok = int((data.get("ok") or {}).get(name, 0))
            progress.changed = int((data.get("changed") or {}).get(name, 0))
            progress.failed = int((data.get("failures") or {}).get(name, 0))
            progress.unreachable = int((data.get("dark") or {}).get(name, 0))
            progress.skipped = int((data.get("skipped") or {}).get(name, 0))
            progress.rescued = int((data.get("rescued") or {}).get(name, 0))
            progress.ignored = int((data.get("ignored") or {}).get(name, 0))
        self.final = True

    def rows(self) -> list[HostProgress]:
        return [self.hosts[name] for name in sorted(self.hosts)]

    def close(self) -> None:
        """The run is over. Without Ansible's recap (cancelled, timed out, killed) a host whose tasks
        so far were ok or changed is `incomplete`, not ok: it never ran the rest of the play, so the
        summary, the exit code and the deploy evidence must not present it as deployed."""
        if self.final:
            return
        for row in self.hosts.values():
            if row.status in ("ok", "changed"):
                row.incomplete = True
                row.message = f"the run stopped before the play finished (last task: {row.last_task})"

    def finished_hosts(self) -> list[str]:
        """Hosts that ran the play to its end without failing: none until Ansible's recap arrives.

        A run that was cancelled, timed out or killed sends no recap; a host whose tasks so far were
        ok or changed has still not run the rest of the play, so it must not count as converged.
        """
        if not self.final:
            return []
        return [row.host for row in self.rows() if row.status in ("ok", "changed")]


def failure_message(res: dict[str, Any]) -> str:
    """The one line that says why a task failed on a host."""
    for key in ("msg", "stderr", "module_stderr", "stdout"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            lines = [line for line in value.strip().splitlines() if line.strip()]
            return lines[-1][:300] if key != "msg" else " ".join(value.split())[:300]
    return ""
