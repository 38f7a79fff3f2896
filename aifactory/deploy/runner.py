"""`aifactory deploy`: run playbooks/site.yml through ansible-runner against the site's inventory.

    plan check   the plan given (planned once, at the edge) must have the digest of the bundle's
                 signed plan; a spec whose plan differs is refused
    inventory    rendered from the bundle's plan into <state>/deploy/inventory/
    ansible.cfg  <state>/deploy/ansible.cfg (DeploySettings over the site Connection's settings)
    run          ansible-runner; each event updates the per-host progress and goes to the event log
                 <state>/deploy/runs/<run id>/events.jsonl
    converged    hosts that still match their last full run are left out of the playbook run
                 (converged.py; --full runs every role everywhere)
    evidence     <state>/deploy/installed.json (not for --check), a record in the operator log

A host that fails or is unreachable does not stop the others (the play never aborts on failures);
the result says which, and the CLI exits 4. Re-running finishes the job: every task is idempotent.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifactory.bundle.collection import source_collections_path
from aifactory.connection import Connection
from aifactory.deploy import converged as convergence
from aifactory.deploy.evidence import REPORT_FACT, report_from_event, write_deployed_plan, write_installed
from aifactory.deploy.imported_bundle import DeployBundle, prepare_bundle
from aifactory.deploy.progress import UNFINISHED, HostProgress, Progress, Update
from aifactory.deploy.settings import (
    LINEAR_STRATEGY,
    DeploySettings,
    effective_strategy,
    mitogen_strategy_dir,
    module_run_strategy,
    render_ansible_cfg,
)
from aifactory.errors import DeployError, ExitCode, Location, PrerequisiteError
from aifactory.headcopies import merge_incoming
from aifactory.inventory.render import Unsafe
from aifactory.inventory.site import site_inventory
from aifactory.plan import PlannedSite
from aifactory.plan.diff import diff_plans
from aifactory.plan.model import SitePlan
from aifactory.resources import control_tool, resource_dir
from aifactory.state import SiteState

PLAYBOOK = "site.yml"
# Event fields kept in the event log (stdout is ANSI text already rendered from these).
_EVENT_FIELDS = ("uuid", "counter", "event", "created", "parent_uuid")
_DATA_FIELDS = (
    "host",
    "task",
    "task_action",
    "role",
    "play",
    "task_path",
    "resolved_action",
    "ignore_errors",
    "duration",
    "start",
    "end",
)


@dataclass(frozen=True)
class DeployOptions:
    check: bool = False
    diff: bool | None = None  # default: on with --check
    limit: str | None = None
    tags: Sequence[str] = ()
    skip_tags: Sequence[str] = ()
    trust: Path | None = None
    settings: DeploySettings = field(default_factory=DeploySettings)
    extra_vars: dict[str, Any] = field(default_factory=dict)
    verbosity: int = 0
    full: bool = False  # run every role on every host, converged or not

    @property
    def complete(self) -> bool:
        """A run that applies everything: its results define what a host's converged state is."""
        return not (self.check or self.tags or self.skip_tags)


@dataclass
class DeployResult:
    site: str
    run_id: str
    check: bool
    bundle_version: str
    bundle_digest: str
    plan_digest: str
    hosts: list[dict[str, Any]]
    status: str  # successful | failed | canceled | timeout
    rc: int
    wall_seconds: float
    controller_cpu_seconds: float
    event_log: Path
    inventory: Path
    installed: Path | None
    connection: str  # where the hosts were reached from (the Connection's description)
    rerun_reasons: dict[str, str] = field(default_factory=dict)  # host -> why it was not left out
    strategy: str = LINEAR_STRATEGY  # Ansible's strategy the run used (mitogen_linear or linear)

    @property
    def failed_hosts(self) -> list[str]:
        return [h["host"] for h in self.hosts if h["status"] in UNFINISHED]

    @property
    def exit_code(self) -> ExitCode:
        if self.failed_hosts or self.status != "successful":
            return ExitCode.HOSTS_FAILED
        return ExitCode.OK

    @property
    def changed(self) -> int:
        return sum(int(h["changed"]) for h in self.hosts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "run_id": self.run_id,
            "check": self.check,
            "status": self.status,
            "rc": self.rc,
            "exit_code": int(self.exit_code),
            "bundle": {"version": self.bundle_version, "digest": self.bundle_digest},
            "plan_digest": self.plan_digest,
            "hosts": self.hosts,
            "failed_hosts": self.failed_hosts,
            "changed": self.changed,
            "wall_seconds": round(self.wall_seconds, 2),
            "controller_cpu_seconds": round(self.controller_cpu_seconds, 2),
            "event_log": str(self.event_log),
            "inventory": str(self.inventory),
            "installed": str(self.installed) if self.installed else None,
            "connection": self.connection,
            "rerun_reasons": dict(sorted(self.rerun_reasons.items())),
            "strategy": self.strategy,
        }


def checked_plan(planned: PlannedSite, bundle: DeployBundle) -> tuple[SitePlan, str]:
    """The bundle's signed plan, after checking that the given plan has its digest (no re-planning)."""
    carried = bundle.plan()
    local_digest, carried_digest = planned.plan.digest(), carried.digest()
    if local_digest != carried_digest:
        difference = diff_plans(carried.to_dict(), planned.plan.to_dict()).render()
        raise DeployError(
            f"the site spec's plan differs from the plan signed into bundle {bundle.version}",
            code="plan-differs",
            exit_code=ExitCode.INVALID,
            location=Location(file=planned.loaded.source.file),
            hint=(
                "deploy installs only what the bundle carries: build and import a new bundle from this "
                f"spec, or restore the spec. Differences (bundle -> spec):\n{difference}"
            ),
        )
    return carried, carried_digest


def _write_binary(folder: Path, prefix: Sequence[str], tool: str) -> str:
    """The command ansible-runner starts (`ansible-playbook` or `ansible`), run on the control host
    as the site's Connection runs commands there."""
    path = control_tool(tool, needed_for="deploy runs the site playbook with it")
    if not prefix:
        return path
    wrapper = folder / f"{tool}-on-control-host"
    quoted = " ".join(_sh_quote(part) for part in [*prefix, path])
    wrapper.write_text(f'#!/bin/sh\n# run {tool} on the control host\nexec {quoted} "$@"\n')
    wrapper.chmod(stat.S_IRWXU)
    return str(wrapper)


def _sh_quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_./=:," for c in text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


HOST_KEY_CHECKING = "ANSIBLE_HOST_KEY_CHECKING"


def _clean_env() -> dict[str, str]:
    """The environment ansible runs with: no secret values, no stray Ansible settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIFACTORY_SECRET_") and not k.startswith("ANSIBLE_")
    }


def _log_event(event: dict[str, Any]) -> dict[str, Any]:
    record = {k: event[k] for k in _EVENT_FIELDS if k in event}
    data = event.get("event_data") or {}
    record["event_data"] = {k: data[k] for k in _DATA_FIELDS if k in data}
    res = data.get("res")
    if isinstance(res, dict):
        kept = {
            k: v
            for k, v in res.items()
            if k not in ("ansible_facts", "invocation", "stdout_lines", "stderr_lines")
        }
        facts = res.get("ansible_facts") or {}
        if REPORT_FACT in facts:
            kept["ansible_facts"] = {REPORT_FACT: facts[REPORT_FACT]}
        record["event_data"]["res"] = kept
    for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
        if key in data and event.get("event") == "playbook_on_stats":
            record["event_data"][key] = data[key]
    return record


# The module arguments of the host-state read: each host's own spec, from an extra-vars file.
_SPEC = "(aifactory_converge_specs[inventory_hostname] | default({}))"
_STATE_ARGS = json.dumps(
    {
        key: "{{ " + _SPEC + "." + key + " | default(" + empty + ") }}"
        for key, empty in (("paths", "[]"), ("services", "[]"), ("service_command", "''"), ("packages", "[]"))
    }
)


@dataclass
class _Ansible:
    """How this deploy starts Ansible: its config, environment, inventory and the command prefix that
    runs it on the control host (the site's Connection)."""

    folder: Path
    inventory: Path
    env: dict[str, str]
    prefix: tuple[str, ...]
    playbooks: Path
    strategy: str = LINEAR_STRATEGY  # the ansible.cfg's (settings.effective_strategy)
    # The one-task module runs' (the converged probe's): settings.probe_strategy, Mitogen's only
    # where the ansible.cfg already names its plugins.
    module_strategy: str = LINEAR_STRATEGY

    def run(
        self,
        *,
        handle: Callable[[dict[str, Any]], bool],
        limit: str | None,
        cmdline: list[str],
        tags: Sequence[str] = (),
        module: str | None = None,
        module_args: str | None = None,
    ) -> Any:
        import ansible_runner

        with tempfile.TemporaryDirectory(prefix="runner-", dir=self.folder) as private:
            common = {
                "private_data_dir": private,
                "project_dir": str(self.playbooks),
                "inventory": str(self.inventory),
                "limit": limit,
                "envvars": self.env,
                "event_handler": handle,
                "quiet": True,
                "rotate_artifacts": 1,
                "settings": {"suppress_ansible_output": True, "suppress_output_file": True},
            }
            if module is None:
                return ansible_runner.run(
                    binary=_write_binary(self.folder, self.prefix, "ansible-playbook"),
                    cmdline=" ".join(_sh_quote(c) for c in cmdline),
                    tags=",".join(tags) or None,
                    **common,
                )
            # With `binary` set, ansible-runner passes its arguments as given: the module goes in cmdline.
            # `ansible` uses the stdout callback that makes ansible-runner's events only when told to.
            adhoc = [*cmdline, "-m", module, "-a", module_args or "", "all"]
            common["envvars"] = {
                **self.env,
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                "ANSIBLE_STRATEGY": self.module_strategy,
            }
            return ansible_runner.run(
                binary=_write_binary(self.folder, self.prefix, "ansible"),
                cmdline=" ".join(_sh_quote(c) for c in adhoc),
                **common,
            )

    def read_host_states(
        self, specs: dict[str, dict[str, Any]], limit: str | None, log: Any
    ) -> dict[str, dict[str, Any] | None]:
        """Each host's managed state (None where it could not be read), for every host `limit` matches."""
        extra = self.folder / "converge-specs.json"
        extra.write_text(json.dumps({"aifactory_converge_specs": specs}, sort_keys=True))
        extra.chmod(0o600)
        states: dict[str, dict[str, Any] | None] = {}

        def handle(event: dict[str, Any]) -> bool:
            log.write(json.dumps(_log_event(event), sort_keys=True, default=str) + "\n")
            data = event.get("event_data") or {}
            if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
                res = data.get("res") or {}
                ok = event["event"] == "runner_on_ok" and isinstance(res.get("state"), dict)
                states[str(data.get("host"))] = res["state"] if ok else None
            return False

        self.run(
            handle=handle,
            limit=limit,
            module=convergence.STATE_MODULE,
            module_args=_STATE_ARGS,
            cmdline=["-e", f"@{extra}"],
        )
        return states


@dataclass
class _Convergence:
    """Which hosts a deploy leaves out because they still match their last full run."""

    fingerprint: str
    records: dict[str, convergence.HostRecord]
    converged: dict[str, str] = field(default_factory=dict)  # host -> summary
    reasons: dict[str, str] = field(default_factory=dict)  # host -> why it runs
    matched: set[str] | None = None  # the hosts the limit matched (None: not probed)

    def remaining_limit(self, limit: str | None) -> tuple[bool, str | None]:
        """(run the playbook?, its limit)."""
        if self.matched is None:
            return True, limit
        remaining = sorted(self.matched - set(self.converged))
        return bool(remaining), ",".join(remaining) or None


def _probe_converged(ansible: _Ansible, state: SiteState, options: DeployOptions, log: Any) -> _Convergence:
    fingerprint = convergence.inputs_fingerprint(
        playbooks=ansible.playbooks, inventory_dir=ansible.inventory, extra_vars=options.extra_vars
    )
    found = _Convergence(fingerprint, convergence.read_records(state))
    candidates = {h: r.spec for h, r in found.records.items() if r.fingerprint == fingerprint}
    if options.full or not options.complete or not candidates:
        return found
    states = ansible.read_host_states(candidates, options.limit, log)
    found.matched = set(states)
    for host in sorted(states):
        record = found.records.get(host)
        why = convergence.difference(record, fingerprint, states[host]) if record else "no full run recorded"
        if why is None and record is not None:
            found.converged[host] = convergence.summary(record)
        else:
            found.reasons[host] = str(why)
    return found


def _record_converged(
    ansible: _Ansible,
    state: SiteState,
    found: _Convergence,
    capture: convergence.ManagedCapture,
    hosts: list[dict[str, Any]],
    finished: list[str],
    run_id: str,
    options: DeployOptions,
    log: Any,
) -> None:
    """After the run: record the state of the hosts a complete run finished; forget the others it touched.

    `finished` comes from Ansible's recap (Progress.finished_hosts): a run cut off before its recap
    finished no host, whatever its tasks so far reported.
    """
    if options.check:
        return
    records = dict(found.records)
    for row in hosts:
        if row["host"] not in finished or (not options.complete and row["changed"]):
            records.pop(
                row["host"], None
            )  # a failed, cut-off or partly re-applied host runs in full next time
    if options.complete and finished:
        specs = capture.specs(
            finished, {h: r.spec for h, r in found.records.items() if r.fingerprint == found.fingerprint}
        )
        states = ansible.read_host_states(specs, ",".join(sorted(specs)), log) if specs else {}
        for host, spec in specs.items():
            current = states.get(host)
            if current is not None and not convergence.not_running(current):
                records[host] = convergence.HostRecord(found.fingerprint, run_id, spec, current)
            else:
                records.pop(host, None)
    convergence.write_records(state, records)


@dataclass
class _Setup:
    """Everything a deploy (or a convergence check) needs before Ansible starts."""

    bundle: DeployBundle
    plan: SitePlan
    digest: str
    connection: str
    ansible: _Ansible


def _require_runner() -> None:
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        raise PrerequisiteError(
            "ansible-runner is not installed",
            hint="install the control extra: pip install 'aifactory[control]'",
        ) from None


def ansible_env(connection: Connection, cfg: Path, folder: Path) -> dict[str, str]:
    """The environment every Ansible run of a deploy gets (ansible-runner adds its own to it)."""
    return {
        **_clean_env(),
        **connection.env,
        "ANSIBLE_CONFIG": str(cfg),
        # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless the environment says otherwise,
        # which makes Ansible pass StrictHostKeyChecking=no and reach a machine whose key changed:
        # a host is deployed only when it shows the key known_hosts trusts for it.
        HOST_KEY_CHECKING: "True",
        # aifactory.factory (its module by FQCN) from the playbooks this deploy runs
        "ANSIBLE_COLLECTIONS_PATH": str(
            source_collections_path(resource_dir("playbooks"), folder / "collections")
        ),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }


def _set_up(planned: PlannedSite, options: DeployOptions, state: SiteState, connection: Connection) -> _Setup:
    bundle = prepare_bundle(state, trust=options.trust)
    plan, digest = checked_plan(planned, bundle)
    folder = state.subdir("deploy")
    # The loop's timers run `aifactory loop run SPEC MODEL --if-due` here: they need the spec's path
    # (only a site with a loop gets it, so other inventories keep their bytes).
    # `!unsafe`: a path is the admin's text and may hold `{{`, which Ansible would template.
    spec_path = Unsafe(str(Path(planned.loaded.source.file).resolve()))
    spec = {"aifactory_site_spec": spec_path} if plan.loop else None
    rendered = site_inventory(
        plan,
        connection=connection,
        bundle=bundle.inventory_vars(plan, folder / "payload"),
        state=state,
        extra_vars=spec,
    )
    inventory_dir = folder / "inventory"
    rendered.write(inventory_dir)
    cfg = folder / "ansible.cfg"
    mitogen = mitogen_strategy_dir()
    cfg.write_text(
        render_ansible_cfg(options.settings, folder=folder, base=connection.ansible_cfg, mitogen=mitogen)
    )
    env = ansible_env(connection, cfg, folder)
    strategy = effective_strategy(options.settings, mitogen)
    ansible = _Ansible(
        folder=folder,
        inventory=inventory_dir,
        prefix=connection.control_prefix,
        playbooks=resource_dir("playbooks"),
        env=env,
        strategy=strategy,
        module_strategy=module_run_strategy(options.settings, strategy),
    )
    return _Setup(bundle, plan, digest, rendered.connection, ansible)


def check_converged(
    planned: PlannedSite,
    *,
    connection: Connection,
    site_name: str | None = None,
    settings: DeploySettings | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> dict[str, str | None]:
    """Read-only: for every planned host, None when it still matches its last full deploy, else why
    a deploy would run it. Changes nothing on the hosts (`aifactory up` verifies deploy with it).
    `settings`: Ansible's (forks...), and `extra_vars`, as a deploy with them would probe (the extra
    variables are among the inputs a converged host's record names)."""
    _require_runner()
    name = site_name or planned.plan.name
    state = SiteState.for_site(name)
    options = DeployOptions(settings=settings or DeploySettings(), extra_vars=dict(extra_vars or {}))
    with state.lock("deploy"):
        setup = _set_up(planned, options, state, connection)
        log = setup.ansible.folder / "converged-check.jsonl"
        with log.open("w") as log_handle:
            found = _probe_converged(setup.ansible, state, options, log_handle)
    hosts = sorted(h.name for h in setup.plan.hosts)
    return {
        host: None
        if host in found.converged
        else found.reasons.get(host, "no full run recorded with the current inputs")
        for host in hosts
    }


def ensure_site_trust(state: SiteState, plan: SitePlan) -> None:
    """The site's token and model-signing keys and, when the site is monitored, its CA, made before
    a deploy gives every host their public halves (and the revocation list): a server trusts only
    tokens and models this site signed, and checks Prometheus' client certificate against the CA. Made
    later (by the first `aifactory token`, or the monitoring deploy), they would change what every
    host was given, and the next deploy would find every host changed. A site with a front door also
    gets its service certificate (aifactory.frontdoor.certs)."""
    from aifactory.frontdoor.certs import issue_front_door_certificates
    from aifactory.trust.issuing.certs import ensure_site_ca
    from aifactory.trust.issuing.models import ensure_model_key
    from aifactory.trust.issuing.tokens import ensure_site_key
    from aifactory.trust.tokens import TrustFiles

    trust = TrustFiles(state.subdir("runtime"))
    ensure_site_key(trust, site=state.site)
    ensure_model_key(state.subdir("runtime"))
    if plan.monitored:
        ensure_site_ca(trust, site=state.site)
    if plan.front_door is not None:
        # The front door's service identity for its health checks (made with the CA when missing),
        # which the front_door role copies to its host; renewed here when it comes near its end.
        issue_front_door_certificates(trust, site=state.site)


def deploy_site(
    planned: PlannedSite,
    *,
    connection: Connection,
    options: DeployOptions | None = None,
    on_update: Callable[[Update, Progress], None] | None = None,
    site_name: str | None = None,
) -> DeployResult:
    """Deploy a planned site from its imported bundle, reaching its hosts through `connection`.
    `site_name` deploys the plan to the state (and hosts) of another site name (the benchmark grows
    a copy of the lab that way); normally the plan's own name."""
    _require_runner()
    options = options or DeployOptions()
    name = site_name or planned.plan.name
    state = SiteState.for_site(name)
    with state.lock("deploy"):
        ensure_site_trust(state, planned.plan)
        setup = _set_up(planned, options, state, connection)
        bundle, plan, digest, ansible = setup.bundle, setup.plan, setup.digest, setup.ansible
        run_id = _run_id()
        run_dir = ansible.folder / "runs" / run_id
        run_dir.mkdir(parents=True, mode=0o700)
        event_log = run_dir / "events.jsonl"
        progress = Progress()
        capture = convergence.ManagedCapture()
        reports: dict[str, dict[str, Any]] = {}
        # What ansible-playbook printed outside any task (its own errors, or its launcher's: a program
        # that cannot run): the last lines, for the error when no host ran.
        loose_output: deque[str] = deque(maxlen=STARTUP_LINES)

        with event_log.open("w") as log_handle:

            def handle(event: dict[str, Any]) -> bool:
                log_handle.write(json.dumps(_log_event(event), sort_keys=True, default=str) + "\n")
                if event.get("event") == "verbose" and str(event.get("stdout") or "").strip():
                    loose_output.extend(str(event["stdout"]).strip().splitlines())
                found = report_from_event(event)
                if found:
                    reports[found[0]] = found[1]
                capture.feed(event)
                update = progress.feed(event)
                if update is not None and on_update is not None:
                    on_update(update, progress)
                return False  # ansible-runner need not keep the event on disk

            cpu_before = _children_cpu()
            started = time.monotonic()
            found = _probe_converged(ansible, state, options, log_handle)
            if on_update is not None:
                for host, why in sorted(found.converged.items()):
                    on_update(Update("converged", "converged check", host, why), progress)
                for host, why in sorted(found.reasons.items()):
                    on_update(Update("runs", "converged check", host, why), progress)
            run_playbook, limit = found.remaining_limit(options.limit)
            status, rc = "successful", 0
            if run_playbook:
                runner = ansible.run(
                    handle=handle,
                    limit=limit,
                    tags=options.tags,
                    cmdline=_playbook_cmdline(options, ansible.playbooks),
                )
                status, rc = str(runner.status), int(runner.rc if runner.rc is not None else -1)
                if not progress.final and not progress.hosts:
                    raise _did_not_run(status, rc, event_log, list(loose_output))
                progress.close()
            ran = [row.as_dict() for row in progress.rows()]
            finished = progress.finished_hosts() if run_playbook else []
            _record_converged(ansible, state, found, capture, ran, finished, run_id, options, log_handle)
            wall = time.monotonic() - started
            cpu = _children_cpu() - cpu_before
        hosts = sorted(
            ran
            + [
                HostProgress(host, message=why, converged=True).as_dict()
                for host, why in found.converged.items()
            ],
            key=lambda h: h["host"],
        )
        when = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        installed = None
        if not options.check:
            merge_incoming(state)  # the signed log heads the runtime role fetched (AU-9)
            installed = write_installed(
                state,
                run_id=run_id,
                when=when,
                plan_digest=digest,
                reports=reports,
                results={h["host"]: h["status"] for h in hosts},
            )
        result = DeployResult(
            site=name,
            run_id=run_id,
            check=options.check,
            bundle_version=bundle.version,
            bundle_digest=bundle.digest,
            plan_digest=digest,
            hosts=hosts,
            status=status,
            rc=rc,
            wall_seconds=wall,
            controller_cpu_seconds=cpu,
            event_log=event_log,
            inventory=ansible.inventory,
            installed=installed,
            connection=setup.connection,
            rerun_reasons=found.reasons,
            strategy=ansible.strategy,
        )
        if not options.check and not options.limit and result.exit_code == ExitCode.OK:
            write_deployed_plan(state, plan)  # every host of the plan runs it: `aifactory resize` starts here
        (run_dir / "summary.json").write_text(json.dumps(result.as_dict(), indent=1, sort_keys=True) + "\n")
        state.record(
            command="deploy --check" if options.check else "deploy",
            result="ok" if result.exit_code == ExitCode.OK else "hosts-failed",
            spec_digest=plan.spec_digest,
            bundle_digest=bundle.digest,
            detail={
                "run_id": run_id,
                "limit": options.limit,
                "tags": list(options.tags),
                "full": options.full,
                "converged_hosts": sorted(found.converged),
                "rerun_reasons": dict(sorted(found.reasons.items())),
                "failed_hosts": result.failed_hosts,
                "changed": result.changed,
            },
        )
        return result


STARTUP_LINES = 5  # of ansible-playbook's own output, in the error when no host ran
STARTUP_LINE_CHARS = 300


def _did_not_run(status: str, rc: int, event_log: Path, output: Sequence[str] = ()) -> DeployError:
    said = "; ".join(line.strip()[:STARTUP_LINE_CHARS] for line in output if line.strip())
    return DeployError(
        f"ansible-playbook stopped before any host ran (status {status}, rc {rc})"
        + (f": {said}" if said else ""),
        code="deploy-did-not-run",
        exit_code=ExitCode.CANNOT_EVALUATE,
        location=Location(file=str(event_log)),
        hint="run again with -vvv, and read the event log",
    )


def _playbook_cmdline(options: DeployOptions, playbooks: Path) -> list[str]:
    cmdline = []
    if options.check:
        cmdline.append("--check")
    if options.diff if options.diff is not None else options.check:
        cmdline.append("--diff")
    if options.skip_tags:
        cmdline += ["--skip-tags", ",".join(options.skip_tags)]
    if options.verbosity:
        cmdline.append("-" + "v" * options.verbosity)
    if options.extra_vars:
        cmdline += ["-e", json.dumps(options.extra_vars, sort_keys=True)]
    cmdline.append(str(playbooks / PLAYBOOK))
    return cmdline


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
