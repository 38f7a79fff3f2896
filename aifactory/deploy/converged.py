"""Converged hosts: skip the roles on a host that still matches its last full deploy.

A full deploy run (no --check, --tags or --skip-tags) ends by reading, on every host that finished
without failure, the state of everything the run managed there, and records it on the control host
(`<state>/deploy/converged.json`) with the run's *inputs fingerprint*. The next deploy first reads the
same state on each host (one read-only module call per host, `aifactory_host_state`), and a host is
*converged*, and left out of the playbook run, when both hold:

- inputs: the fingerprint of what the run would apply is the recorded one: the playbooks, the
  rendered inventory (plan, bundle version and digest, settings), the control-host files the roles
  copy (the bundle's allowed signers, the token and CA trust files, hosts' TLS certificates and
  keys) and aifactory's version;
- state: every managed path has the recorded type, owner, group, mode, content digest and link
  target; every managed service runs; every managed package has the recorded version.

What is managed is read from the full run's own results (each file, template, copy, link or folder
task's path, every path an `aifactory_files` task names, and each path a role reads with stat or slurp
to decide what to do; each supervised or systemd service; each package a role installs or checks),
so the check follows the roles as they change. Specs recorded from the same inputs accumulate: a
no-op run skips tasks (a version switch) that the first run did.
What it does not see (a file a role writes without a path in its result, such as the no_log MUNGE key,
or a package's files) is re-applied by `aifactory deploy --full`, which runs every role everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aifactory import __version__
from aifactory.digests import sha256_file
from aifactory.frontdoor.certs import FRONT_DOOR_CERTS
from aifactory.inventory.render import load_inventory_yaml
from aifactory.state import SiteState

SCHEMA = "aifactory.deploy.converged/v1"
STATE_MODULE = "aifactory.factory.aifactory_host_state"
_FILE_ACTIONS = {"file", "copy", "template", "unarchive", "lineinfile", "blockinfile", "replace"}
_FILES_MODULE = "aifactory_files"
_READ_ACTIONS = {"stat", "slurp"}
_SYSTEMD_ACTIONS = {"systemd_service", "systemd", "service"}
# The collection's action that starts every service and timer (playbooks/plugins/action/): its result
# names the unit, the manager and, when supervised, the supervisor's command.
_SERVICE_ACTION = "aifactory_service"
# The collection's action that installs (or, preinstalled, checks) a role's packages: its result names
# them either way.
_PACKAGES_ACTION = "aifactory_packages"


def _short(action: str) -> str:
    return action.rsplit(".", 1)[-1]


@dataclass
class Managed:
    """What one host's full run managed: the spec given to `aifactory_host_state`."""

    paths: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    service_command: str = ""
    packages: set[str] = field(default_factory=set)

    def spec(self) -> dict[str, Any]:
        return {
            "paths": sorted(self.paths),
            "services": sorted(self.services),
            "service_command": self.service_command,
            "packages": sorted(self.packages),
        }

    def empty(self) -> bool:
        return not (self.paths or self.services or self.packages)


class ManagedCapture:
    """Feeds on a full run's events; gathers per host what its tasks managed."""

    def __init__(self) -> None:
        self.hosts: dict[str, Managed] = {}

    def feed(self, event: Mapping[str, Any]) -> None:
        if event.get("event") != "runner_on_ok":
            return
        data = event.get("event_data") or {}
        res = data.get("res")
        host = data.get("host")
        if (
            not isinstance(res, dict)
            or not host
            or data.get("delegated_host")
            or res.get("_ansible_delegated_vars")
        ):
            return  # work done on the control host on this host's behalf is not this host's state
        action = _short(str(data.get("resolved_action") or data.get("task_action") or ""))
        managed = self.hosts.setdefault(str(host), Managed())
        looped = res.get("results")
        results: list[Any] = looped if isinstance(looped, list) else [res]
        for result in results:
            if isinstance(result, dict) and not result.get("skipped"):
                self._take(managed, action, result)

    @staticmethod
    def _take(managed: Managed, action: str, result: Mapping[str, Any]) -> None:
        args = (result.get("invocation") or {}).get("module_args") or {}
        if action in _FILE_ACTIONS:
            for key in ("dest", "path"):
                _add_path(managed, result.get(key))
        elif action == _FILES_MODULE:  # a role's folders and files in one task: it names them all
            for path in result.get("paths") or []:
                _add_path(managed, path)
        elif action in _READ_ACTIONS:  # what a role reads to decide (where `current` points, say)
            _add_path(managed, args.get("path") or args.get("src"))
        elif action == _SERVICE_ACTION:
            name = result.get("service")
            if isinstance(name, str) and name:
                managed.services.add(name)
                if result.get("manager") == "supervised":
                    managed.service_command = str(result.get("command") or "")
        elif action in _SYSTEMD_ACTIONS and args.get("state") in ("started", "restarted", "reloaded"):
            if isinstance(args.get("name"), str):
                managed.services.add(args["name"])
        elif action == _PACKAGES_ACTION:
            names = result.get("packages")
            if isinstance(names, list):
                managed.packages.update(str(n) for n in names)
        elif action in ("apt", "package") and args.get("state", "present") in ("present", "latest"):
            names = args.get("name") or args.get("pkg") or []
            managed.packages.update([names] if isinstance(names, str) else [str(n) for n in names])

    def specs(
        self, hosts: Iterable[str], earlier: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each host's spec; with `earlier` (specs recorded from the same inputs), their union: a run
        that found nothing to change skips tasks (a version switch, say) whose paths an earlier run of
        the same inputs managed."""
        earlier = earlier or {}
        found = {h: self.hosts.get(h, Managed()) for h in sorted(hosts)}
        for host, managed in found.items():
            before = earlier.get(host) or {}
            managed.paths.update(before.get("paths") or [])
            managed.services.update(before.get("services") or [])
            managed.packages.update(before.get("packages") or [])
            managed.service_command = managed.service_command or before.get("service_command") or ""
        return {h: managed.spec() for h, managed in found.items() if not managed.empty()}


def _add_path(managed: Managed, value: object) -> None:
    if isinstance(value, str) and value.startswith("/"):
        managed.paths.add(os.path.normpath(value))


# ------------------------------------------------------------------ the inputs fingerprint


def _tree_digest(root: Path, hasher: Any, label: str) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        hasher.update(f"{label}/{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())


def controller_inputs(inventory_dir: Path, playbooks: Path) -> list[Path]:
    """The files on the control host that the roles copy to hosts (besides the bundle's payload,
    which the bundle digest in the inventory stands for). A role that comes to copy another
    control-host file must name it here, or a change to it would not re-run converged hosts."""
    group_vars = load_inventory_yaml((inventory_dir / "group_vars" / "all.yml").read_text()) or {}
    inputs = []
    signers = (group_vars.get("aifactory_bundle") or {}).get("allowed_signers")
    if signers:
        inputs.append(Path(signers))
    trust_dir = group_vars.get("aifactory_runtime_trust_dir")
    if trust_dir:
        role_vars = yaml.safe_load((playbooks / "roles" / "runtime" / "vars" / "main.yml").read_text()) or {}
        inputs += [Path(trust_dir) / name for name in role_vars.get("_runtime_trust_files") or []]
        # each host's TLS certificate and key (the runtime role's default runtime_tls_source_dir), and
        # the front door's CA and service identity (the front_door role's front_door_tls_source_dir)
        for folder in ("server-certs", FRONT_DOOR_CERTS):
            certs = Path(trust_dir) / folder
            if certs.is_dir():
                inputs += sorted(p for p in certs.iterdir() if p.suffix in (".pem", ".key"))
    return inputs


# The deploy variable that makes the base role install a staged SSH host key (a rotation's rollout,
# aifactory.deploy.rollout). It acts once, on a key staged on the host, and removes what it used; a
# run with it leaves the host as a run without it would, so it is not part of a run's inputs (the next
# plain deploy finds the rotated hosts converged).
PROMOTE_HOST_KEY = "base_sshd_promote_host_key"
ONE_TIME_ACTIONS = frozenset({PROMOTE_HOST_KEY})


def inputs_fingerprint(*, playbooks: Path, inventory_dir: Path, extra_vars: Mapping[str, Any]) -> str:
    """What a full run would apply, as one digest (see the module docstring); one-time actions
    (ONE_TIME_ACTIONS) are not inputs."""
    hasher = hashlib.sha256(f"aifactory {__version__}\n".encode())
    _tree_digest(playbooks, hasher, "playbooks")
    _tree_digest(inventory_dir, hasher, "inventory")
    for path in controller_inputs(inventory_dir, playbooks):
        digest = sha256_file(path) if path.is_file() else "absent"
        hasher.update(f"input {path}\0{digest}\n".encode())
    configuration = {name: value for name, value in extra_vars.items() if name not in ONE_TIME_ACTIONS}
    hasher.update(b"extra_vars " + json.dumps(configuration, sort_keys=True).encode())
    return "sha256:" + hasher.hexdigest()


# ------------------------------------------------------------------ records and comparison


@dataclass(frozen=True)
class HostRecord:
    fingerprint: str
    run_id: str
    spec: dict[str, Any]
    state: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
            "spec": self.spec,
            "state": self.state,
        }


def records_path(state: SiteState) -> Path:
    return state.path("deploy", "converged.json")


def read_records(state: SiteState) -> dict[str, HostRecord]:
    path = records_path(state)
    try:
        data = json.loads(path.read_text())
        return {
            host: HostRecord(r["fingerprint"], r["run_id"], r["spec"], r["state"])
            for host, r in data["hosts"].items()
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no record (or an unreadable one): every host gets a full run


def write_records(state: SiteState, records: Mapping[str, HostRecord]) -> Path:
    path = records_path(state)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    body = {
        "schema": SCHEMA,
        "site": state.site,
        "hosts": {host: records[host].as_dict() for host in sorted(records)},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def not_running(state: Mapping[str, Any]) -> list[str]:
    return sorted(name for name, status in (state.get("services") or {}).items() if status != "running")


def difference(record: HostRecord, fingerprint: str, current: Mapping[str, Any] | None) -> str | None:
    """Why the host is not converged, or None when it is."""
    if record.fingerprint != fingerprint:
        return "what deploy applies changed since the host's last full run"
    if current is None:
        return "its state could not be read"
    stopped = not_running(current)
    if stopped:
        return f"not running: {', '.join(stopped)}"
    for kind in ("paths", "services", "packages"):
        seen, wanted = current.get(kind) or {}, record.state.get(kind) or {}
        changed = sorted(name for name in wanted.keys() | seen.keys() if seen.get(name) != wanted.get(name))
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            return f"{kind[:-1]} {changed[0]} differs from the last full run{more}"
    return None


def summary(record: HostRecord) -> str:
    spec = record.spec
    return (
        f"converged: {len(spec['paths'])} paths, {len(spec['services'])} services and "
        f"{len(spec['packages'])} packages match full run {record.run_id}"
    )
