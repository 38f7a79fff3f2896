"""The stages of `aifactory up`, in order. Each calls the library function its own command uses;
nothing here re-implements a stage.

    validate -> plan -> policy -> lab -> provision -> bundle -> import -> inventory -> deploy
             -> scan -> scheduler -> health -> monitoring -> train -> serve -> loop -> audit

The loop stage lives in aifactory/pipeline/loop_stage.py (it uses this module's helpers).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifactory import __version__
from aifactory.connection import Connection
from aifactory.errors import (
    AifactoryError,
    DeployError,
    ExitCode,
    HealthGateFailed,
    PolicyDenied,
    PrerequisiteError,
    Problem,
    SchedulerError,
    UsageError,
)
from aifactory.pipeline.connection import site_connection
from aifactory.pipeline.runner import Stage, StageResult
from aifactory.plan import PlannedSite
from aifactory.plan.build import commit_lock
from aifactory.plan.model import DatasetPlan, Host, ModelPlan, SitePlan
from aifactory.resources import resource_dir
from aifactory.runtime.health.model import Level
from aifactory.state import SiteState

if TYPE_CHECKING:
    from aifactory.scheduler.slurm import SlurmClient


@dataclass(frozen=True)
class UpOptions:
    lab: bool
    engine: str = "embedded"
    opa_url: str | None = None
    timestamp: str | None = None  # the audit report's timestamp (default: now)
    bundle_passphrase_file: Path | None = None


@dataclass
class UpContext:
    """What every stage of one `aifactory up` shares: the site planned once at the edge, and the
    connection to its hosts (chosen at the edge: the lab, or SSH), made when a stage first needs it
    (after the lab stage has brought the lab up)."""

    spec_path: Path
    state: SiteState
    options: UpOptions
    planned: PlannedSite
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _connection: Connection | None = None

    def plan(self) -> PlannedSite:
        return self.planned

    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = site_connection(self.planned.plan.name, lab=self.options.lab)
        return self._connection

    @property
    def plan_digest(self) -> str:
        return self.plan().plan.digest()


def tree_digest(root: Path) -> str:
    """Digest of a folder's files (names and bytes), so a changed role or policy re-runs its stages."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def _spec_inputs(context: UpContext) -> dict[str, Any]:
    lock = context.spec_path.with_name(context.spec_path.stem + ".alloc.json")
    return {
        "spec": hashlib.sha256(context.spec_path.read_bytes()).hexdigest(),
        "lock": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None,
    }


# ------------------------------------------------------------------ validate, plan, policy


def run_validate(context: UpContext) -> StageResult:
    from aifactory.spec import load_spec

    spec = load_spec(context.spec_path).spec
    hosts = sum(p.count for p in spec.node_pools)
    return StageResult("ok", f"site '{spec.site.name}' is valid ({hosts} hosts)")


def run_plan(context: UpContext) -> StageResult:
    planned = commit_lock(context.planned)
    context.planned = planned.committed()
    summary = planned.plan.summary()
    note = "; allocation lock updated" if planned.lock_changed else ""
    return StageResult(
        "ok",
        f"{summary['hosts']} hosts, {summary['addresses']} addresses{note}",
        {"plan_digest": planned.plan.digest()},
    )


def run_policy(context: UpContext) -> StageResult:
    from aifactory.policy import check_site

    report = check_site(context.plan(), engine=context.options.engine, opa_url=context.options.opa_url)
    failed = [f for f in report.findings if f.status == "fail"]
    waived = [f for f in report.findings if f.status == "waived"]
    if report.denied:
        problems = [
            Problem("policy-deny", f"{f.resource}: {f.msg} [{', '.join(f.controls)}]", hint=f.remediation)
            for f in failed
        ]
        raise PolicyDenied(
            f"{len(failed)} policy violation(s): nothing was changed",
            problems=problems,
            hint="fix the spec, or record an approved waiver (docs/policy.md)",
        )
    controls = len(report.controls)
    return StageResult(
        "ok",
        f"{controls} controls pass" + (f", {len(waived)} waived finding(s)" if waived else ""),
        {"controls": controls, "waived": len(waived)},
    )


def _policy_inputs(context: UpContext) -> dict[str, Any]:
    return {
        "plan": context.plan_digest,
        "policies": tree_digest(resource_dir("policies")),
        "engine": context.options.engine,
        "opa_url": context.options.opa_url,
    }


# ------------------------------------------------------------------ lab, provision


def run_lab(context: UpContext) -> StageResult:
    if not context.options.lab:
        return StageResult("skipped", "not a lab site (use --lab to rehearse it in the local lab)")
    from aifactory.lab import lab_up

    status = lab_up(context.plan())
    data = status.as_dict()
    hosts = data.get("hosts", [])
    bmcs = sum(1 for h in hosts if h.get("bmc"))
    return StageResult("ok", f"{len(hosts)} hosts, {bmcs} BMCs up, air-gapped", {"lab": True})


def verify_lab(context: UpContext, outputs: dict[str, Any]) -> str:
    """The lab's hosts and BMCs still exist. A host whose sshd died is not the lab's failure but the
    deploy stage's (an unreachable host, exit 4); `aifactory lab up` restarts the sshd."""
    if not outputs.get("lab"):
        return "not a lab site"
    from aifactory.lab import lab_status

    status = lab_status(context.plan().plan.name)
    hosts = status.hosts
    if status.state not in ("up", "degraded") or not hosts or any(h.state != "running" for h in hosts):
        raise AifactoryError("the lab is not up", code="lab-down")
    unreachable = [h.name for h in hosts if h.sshd_state != "listening"]
    note = f"; sshd down on {', '.join(unreachable)}" if unreachable else ""
    return f"{len(hosts)} hosts up{note}"


def run_provision(context: UpContext) -> StageResult:
    from aifactory.provision.driver import ProvisionOptions, find_pulumi_cli, provision_site

    try:
        find_pulumi_cli()
    except PrerequisiteError as missing:
        where = (
            "the lab's hosts are used as already provisioned"
            if context.options.lab
            else "the hosts are taken as already provisioned"
        )
        return StageResult("skipped", f"{missing.message}; {where}")
    options = ProvisionOptions(policy_engine=context.options.engine, opa_url=context.options.opa_url)
    if context.options.lab:
        options = ProvisionOptions(
            policy_engine=context.options.engine,
            opa_url=context.options.opa_url,
            bmc={"scheme": "http", "port": 8000},
        )
    result = provision_site(context.plan(), options, state=context.state)
    return StageResult("ok", f"provisioned: {result.summary() if hasattr(result, 'summary') else 'done'}")


# ------------------------------------------------------------------ bundle, import


def _bundle_dir(context: UpContext) -> Path:
    return context.state.subdir("up")


def _bundle_key(context: UpContext) -> tuple[Path, Path]:
    """The site's bundle signing key, generated on first use (0600) with its allowed_signers."""
    from aifactory import signing

    folder = context.state.subdir("bundle-key")
    key = folder / "signing_key"
    if not key.exists():
        signing.generate_keypair(
            folder, identity=f"bundle@{context.plan().plan.name}", namespaces="aifactory-bundle"
        )
    return key, folder / "allowed_signers"


def run_bundle(context: UpContext) -> StageResult:
    from aifactory.bundle import BuildOptions, build_bundle, verify_bundle

    key, trust = _bundle_key(context)
    output = _bundle_dir(context) / f"{context.plan().plan.name}.bundle.tar"
    result = build_bundle(context.plan(), output=output, options=BuildOptions(key=key))
    verify_bundle(result.parts[0], trust=trust, site_state=context.state, check_rollback=False)
    size = result.archive_bytes / 1e6
    return StageResult(
        "ok",
        f"version {result.version}, {result.files} files, {size:.0f} MB, signed and verified",
        {
            "bundle": str(result.parts[0]),
            "digest": result.digest,
            "version": result.version,
            "trust": str(trust),
        },
    )


def _bundle_inputs(context: UpContext) -> dict[str, Any]:
    return {
        "plan": context.plan_digest,
        "aifactory": __version__,
        "playbooks": tree_digest(resource_dir("playbooks")),
        "policies": tree_digest(resource_dir("policies")),
    }


def verify_bundle_stage(context: UpContext, outputs: dict[str, Any]) -> str:
    from aifactory.bundle import verify_bundle

    bundle = Path(outputs["bundle"])
    if not bundle.exists():
        raise AifactoryError("the bundle is gone", code="bundle-missing")
    verify_bundle(bundle, trust=Path(outputs["trust"]), site_state=context.state, check_rollback=False)
    return f"version {outputs['version']} re-verified"


def run_import(context: UpContext) -> StageResult:
    from aifactory.bundle import current_import, import_bundle

    built = context.outputs["bundle"]
    current = current_import(context.state)
    if current is not None and current.digest == built["digest"]:
        return StageResult("ok", f"version {current.version} already imported", {"digest": current.digest})
    imported = import_bundle(Path(built["bundle"]), trust=Path(built["trust"]), site_state=context.state)
    return StageResult(
        "ok", f"version {imported.version} imported to {imported.root}", {"digest": imported.digest}
    )


def _import_inputs(context: UpContext) -> dict[str, Any]:
    return {"bundle": context.outputs.get("bundle", {}).get("digest")}


def verify_import(context: UpContext, outputs: dict[str, Any]) -> str:
    from aifactory.bundle import current_import

    current = current_import(context.state)
    if current is None or current.digest != outputs.get("digest"):
        raise AifactoryError("the imported bundle changed", code="import-changed")
    return f"version {current.version} in use"


# ------------------------------------------------------------------ inventory, deploy


def run_inventory(context: UpContext) -> StageResult:
    from aifactory.deploy.imported_bundle import describe_current_bundle
    from aifactory.inventory.site import site_inventory

    folder = context.state.subdir("up") / "inventory"
    rendered = site_inventory(
        context.plan().plan,
        connection=context.connection(),
        bundle=describe_current_bundle(context.state),
        state=context.state,
    )
    rendered.write(folder)
    inventory = rendered.inventory
    return StageResult(
        "ok",
        f"{len(inventory.hosts)} hosts in {len(inventory.groups)} groups: {folder}",
        {"inventory": str(folder)},
    )


def run_deploy(context: UpContext) -> StageResult:
    from aifactory.deploy import DeployOptions, deploy_site

    result = deploy_site(context.plan(), connection=context.connection(), options=DeployOptions())
    if result.exit_code != ExitCode.OK:
        names = ", ".join(result.failed_hosts) or "see the event log"
        raise DeployError(
            f"deploy failed on {names} (event log {result.event_log})",
            hint="fix the host, then run `aifactory up` again: it resumes at deploy",
        )
    return StageResult(
        "ok",
        f"{len(result.hosts)} hosts, changed={result.changed}, bundle {result.bundle_version}",
        {"bundle": result.bundle_digest, "changed": result.changed},
    )


def verify_deploy(context: UpContext, outputs: dict[str, Any]) -> str:
    """Re-read without changing anything: every host must still match its last full deploy (the
    same inputs, and every managed path, service and package as that run left it; docs/deploy.md)."""
    from aifactory.deploy import check_converged

    found = check_converged(context.plan(), connection=context.connection())
    drifted = {host: why for host, why in found.items() if why is not None}
    if drifted:
        detail = "; ".join(f"{host}: {why}" for host, why in sorted(drifted.items()))
        raise DeployError(f"hosts differ from their last deploy: {detail}", code="deploy-drift")
    return f"{len(found)} hosts re-read: every managed path, service and package matches (changed=0)"


def _deploy_inputs(context: UpContext) -> dict[str, Any]:
    return {"bundle": context.outputs.get("import", {}).get("digest"), "plan": context.plan_digest}


def run_scan(context: UpContext) -> StageResult:
    """Every host scanned with OpenSCAP right after deploy (the bundle's content, each pool's profile),
    weighed against the reviewed waivers beside the spec; the audit stage reports it."""
    import datetime as dt

    from aifactory.audit import scap
    from aifactory.deploy.scan import scan_site

    run = scan_site(context.plan().plan.name, connection=context.connection())
    waivers_file = scap.waivers_path_for(context.spec_path)
    waivers = scap.load_waivers(waivers_file) if waivers_file.is_file() else []
    assessed = scap.assess(run.scans, waivers, today=dt.datetime.now(dt.UTC).date())
    hosts = "; ".join(
        f"{h.host} {h.passed}/{h.applicable} ({100 * h.pass_ratio:.1f}%)" for h in assessed.hosts
    )
    unwaived = sorted({rule for h in assessed.hosts for rule in h.unwaived})
    return StageResult(
        "ok",
        f"{len(run.scans)} hosts scanned ({run.run_id}): {hosts}; {len(unwaived)} failing rules without "
        f"a waiver, {len(assessed.stale)} stale and {len(assessed.expired)} expired waivers",
        {
            "run": run.run_id,
            "folder": str(run.folder),
            "hosts": {h.host: {"applicable": h.applicable, "passed": h.passed} for h in assessed.hosts},
            "unwaived": unwaived,
        },
    )


# ------------------------------------------------------------------ scheduler, train, serve

NODE_RUNTIME = Path("/opt/aifactory/current/bin")
NODE_PLAN = "/etc/aifactory/plan.json"  # where deploy puts the bundle's signed plan on each host
SERVE_PORT = 8600  # the runtime role's default (runtime_serve_port)
JOB_TIMEOUT_S = 900.0
GENERATE_TIMEOUT_S = 300
TRAIN_SAMPLES = 1024  # the train stage's draw of the training dataset
SERVE_TIMEOUT_S = 120.0


def slurm_client(context: UpContext) -> SlurmClient:
    from aifactory.scheduler.slurm import client_for

    return client_for(context.connection())


# The level the gate runs at in `up`: the quick checks and each pool's all-reduce, so a drain for any
# check the standard level measures (the collective included) is lifted by the next `up`.
UP_HEALTH_LEVEL: Level = "standard"
NODES_READY_TIMEOUT_S = 90.0
IN_SERVICE = ("idle", "mixed", "allocated", "completing")


@dataclass(frozen=True)
class NodeStatus:
    state: str  # sinfo's %T: idle, drained, idle*, ...
    reason: str  # sinfo's %E: the drain's reason, "none" when there is none

    @property
    def waiting_for_health(self) -> bool:
        """Drained by the health gate (a new host's admission, or a failed check)."""
        from aifactory.health.slurm import REASON_PREFIX

        return self.state.rstrip("*~#").startswith("drain") and self.reason.startswith(REASON_PREFIX)

    @property
    def in_service(self) -> bool:
        """Answering slurmctld and free to take jobs."""
        return self.state in IN_SERVICE


def _node_states(context: UpContext) -> dict[str, NodeStatus]:
    from aifactory.scheduler.slurm import checked

    client = slurm_client(context)
    out = checked(client.run(["sinfo", "--Node", "--noheader", "--format=%N|%T|%E"]), "sinfo", client.where)
    found = {}
    for line in out.splitlines():
        name, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if name.strip():
            found[name.strip()] = NodeStatus(state.strip(), reason.strip())
    return found


def _compute_nodes(context: UpContext) -> set[str] | None:
    """The Slurm nodes the plan's topology names; None when the plan has no Slurm."""
    from aifactory.scheduler.topology import slurm_topology

    topology = slurm_topology(context.plan().plan)
    return None if topology is None else {node["name"] for node in topology["nodes"]}


def run_scheduler(context: UpContext) -> StageResult:
    """Slurm answers and knows every planned node, each idle or drained by the health gate (a new
    host is admitted by the health stage that follows)."""
    from aifactory.scheduler.topology import slurm_topology

    topology = slurm_topology(context.plan().plan)
    if topology is None:
        return StageResult("skipped", "no Slurm in this plan (no control host or no gpu/cpu pool)")
    wanted = {node["name"] for node in topology["nodes"]}
    deadline = time.monotonic() + NODES_READY_TIMEOUT_S
    states: dict[str, NodeStatus] = {}
    while time.monotonic() < deadline:
        states = _node_states(context)
        idle = {n for n in wanted if n in states and states[n].state.rstrip("*~#") == "idle"}
        held = {n for n in wanted - idle if n in states and states[n].waiting_for_health}
        if idle | held == wanted:
            partitions = ", ".join(p["name"] for p in topology["partitions"])
            note = f", {len(held)} drained until the health gate admits them" if held else ""
            return StageResult(
                "ok", f"{len(idle)} nodes idle in partition(s) {partitions}{note}", {"slurm": True}
            )
        time.sleep(1)
    busy = ", ".join(f"{n}={states[n].state if n in states else 'missing'}" for n in sorted(wanted))
    raise SchedulerError(f"Slurm nodes are not idle: {busy}", hint="see /var/log/slurm on the hosts")


def verify_scheduler(context: UpContext, outputs: dict[str, Any]) -> str:
    if not outputs.get("slurm"):
        return "no Slurm in this plan"
    return run_scheduler(context).summary


# ------------------------------------------------------------------ health


def run_health_gate(context: UpContext) -> StageResult:
    """`aifactory health` at the standard level on every host; a host that fails stops `up` (exit
    4), drained in Slurm with the reason; passing nodes the gate drained (a new host's admission
    included) are resumed, and the stage waits until Slurm has them in service."""
    from aifactory.health.gate import health_gate

    nodes = _compute_nodes(context)
    slurm = nodes is not None and bool(context.outputs.get("scheduler", {}).get("slurm"))
    gate = health_gate(
        context.plan(),
        connection=context.connection(),
        state=context.state,
        level=UP_HEALTH_LEVEL,
        slurm=slurm,
    )
    report = str(gate.evidence.report)
    failures = gate.failures()
    if failures:
        raise HealthGateFailed(
            f"{len(gate.run.failed)} host(s) failed the health gate: {'; '.join(failures)}",
            hint=f"each check's value and threshold are in the signed evidence, {report}",
        )
    resumed = [a["host"] for a in gate.run.slurm if a["action"] == "resume"]
    if slurm and nodes:
        _wait_in_service(context, nodes)
    note = f"; resumed in Slurm: {', '.join(resumed)}" if resumed else ""
    return StageResult(
        "ok",
        f"{len(gate.run.hosts)} hosts pass at the {UP_HEALTH_LEVEL} level{note}; evidence {report}",
        {"evidence": report, "slurm": slurm, "resumed": resumed},
    )


def _wait_in_service(context: UpContext, nodes: set[str]) -> None:
    """Until every node answers slurmctld and takes jobs (a resumed node may miss a ping first)."""
    deadline = time.monotonic() + NODES_READY_TIMEOUT_S
    states: dict[str, NodeStatus] = {}
    while time.monotonic() < deadline:
        states = _node_states(context)
        if all(n in states and states[n].in_service for n in nodes):
            return
        time.sleep(1)
    busy = ", ".join(f"{n}={states[n].state if n in states else 'missing'}" for n in sorted(nodes))
    raise SchedulerError(
        f"Slurm nodes are not in service after the health gate: {busy}",
        hint="see /var/log/slurm on the hosts",
    )


def _health_inputs(context: UpContext) -> dict[str, Any]:
    return {
        "deploy": context.outputs.get("deploy", {}).get("bundle"),
        "plan": context.plan_digest,
        "spec": context.plan().plan.spec_digest,  # the spec's health section tightens thresholds
        "thresholds": tree_digest(resource_dir("policies")),
        "level": UP_HEALTH_LEVEL,
    }


def verify_health(context: UpContext, outputs: dict[str, Any]) -> str:
    """The earlier pass still stands while no node is drained by the health gate (a later
    `aifactory health` that drained one makes the stage run again)."""
    if not outputs.get("slurm"):
        return f"unchanged: evidence {outputs.get('evidence')}"
    nodes = _compute_nodes(context) or set()
    states = _node_states(context)
    held = sorted(n for n in nodes if n in states and states[n].waiting_for_health)
    if held:
        detail = "; ".join(f"{n}: {states[n].reason}" for n in held)
        raise HealthGateFailed(f"drained by the health gate since: {detail}")
    return f"no node drained by the health gate since the pass (evidence {outputs.get('evidence')})"


# ------------------------------------------------------------------ monitoring

MONITORING_TIMEOUT_S = 180.0  # Prometheus starts, then scrapes every target once (30 s by default)


def _status_on_control_host(context: UpContext) -> tuple[dict[str, Any] | None, str]:
    """`aifactory status --format json`, run on the control host (Prometheus listens on the management
    fabric only): the status, or None and why there is none (Prometheus still starting, for one)."""
    import json

    argv = [sys.executable, "-m", "aifactory.cli.main", "status", str(context.spec_path), "--format", "json"]
    done = context.connection().run_on_control_host(argv, timeout=60)
    try:
        found = json.loads(done.stdout)
    except ValueError:
        found = None
    if done.returncode == 0 and isinstance(found, dict) and isinstance(found.get("hosts"), list):
        return found, ""
    error = found.get("error") if isinstance(found, dict) else None
    detail = error.get("message") if isinstance(error, dict) else None
    return None, str(detail or done.stderr.strip()[-300:] or f"exit {done.returncode}")


def _hosts_scraped(context: UpContext) -> str:
    """Wait until Prometheus scrapes every planned host's node exporter (up == 1), with a deadline."""
    deadline = time.monotonic() + MONITORING_TIMEOUT_S
    while True:
        found, problem = _status_on_control_host(context)
        if found is not None:
            down = [str(h["name"]) for h in found["hosts"] if h.get("up") is not True]
            if not down:
                return f"{len(found['hosts'])} hosts scraped with TLS by {found['prometheus']}"
            problem = f"Prometheus does not scrape {', '.join(down)}"
        if time.monotonic() >= deadline:
            raise DeployError(
                f"monitoring: {problem} (waited {MONITORING_TIMEOUT_S:.0f} s)",
                code="monitoring-targets-down",
                hint="`aifactory status SITE` on the control host shows each target's last error",
            )
        time.sleep(2)


def run_monitoring(context: UpContext) -> StageResult:
    from aifactory.deploy.monitoring import deploy_monitoring

    if not context.plan().plan.monitored:
        return StageResult("skipped", "no control host and no monitoring pool: nothing runs Prometheus")
    result = deploy_monitoring(context.plan(), connection=context.connection())
    summary = _hosts_scraped(context)
    return StageResult("ok", f"{summary}; changed={result.changed}", {"monitoring": True})


def verify_monitoring(context: UpContext, outputs: dict[str, Any]) -> str:
    if not outputs.get("monitoring"):
        return "no monitoring in this plan"
    return _hosts_scraped(context)


def _train_target(context: UpContext) -> tuple[ModelPlan, DatasetPlan, list[str]]:
    """The model `up` trains: the first model with training data, its first dataset, its hosts."""
    plan = context.plan().plan
    model = next((m for m in plan.models if m.trained_on and m.host_path), None)
    if model is None:
        raise UsageError("no model with training data on mounted storage to train")
    dataset = next(d for d in plan.datasets if d.name == model.trained_on[0])
    return model, dataset, training_hosts(plan, model)[:2]


def training_hosts(plan: SitePlan, model: ModelPlan) -> list[str]:
    """The compute hosts (cpu or gpu pools) that mount the model's storage, in plan order."""
    pools = [p.name for p in plan.pools if p.role in ("cpu", "gpu")]
    mounting = [h for h in plan.hosts if any(m.storage == model.storage for m in h.mounts)]
    return [h.name for h in mounting if h.pool in pools]


def _train_folder(context: UpContext) -> Path:
    folder = context.state.subdir("up/train")
    folder.chmod(0o755)  # the lab's hosts read the job and token from here (as root)
    return folder


def train_job(context: UpContext) -> dict[str, Any]:
    """The train stage's job (aifactory.job/v1): a small network, 60 steps on the first two hosts."""
    model, dataset, hosts = _train_target(context)
    folder = _train_folder(context)
    return {
        "schema": "aifactory.job/v1",
        "name": f"up-{model.name}"[:60],
        "plan": NODE_PLAN,
        "token_file": str(folder / f"{dataset.owner}.token"),
        "dataset": dataset.name,
        "model": model.name,
        "processes_per_host": 1,
        "rendezvous_port": 29400,
        "runtime_dir": str(context.state.subdir("runtime")),
        "network": {"hidden": 32, "layers": 2},
        "train": {
            "steps": 60,
            "global_batch": 32,
            "learning_rate": 0.01,
            "checkpoint_every": 20,
            "threads": 1,
        },
    }


def token_for(context: UpContext, tenant: str) -> str:
    """A site token of `tenant`, valid 12 hours."""
    from datetime import UTC, datetime, timedelta

    from aifactory.trust.issuing.tokens import issue_token
    from aifactory.trust.tokens import TrustFiles

    trust = TrustFiles(context.state.subdir("runtime"))
    expires = datetime.now(UTC) + timedelta(hours=12)
    return issue_token(trust, site=context.plan().plan.name, tenant=tenant, expires=expires).token


def write_token_file(context: UpContext, path: Path, tenant: str) -> None:
    """A fresh token of `tenant` in a file only its owner reads (0600 from the start)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token_for(context, tenant))


def generate_on_node(
    context: UpContext, job_path: Path, host: str, *, samples: int, extra: tuple[str, ...] = ()
) -> None:
    """The node's `aifactory-train JOB --generate-dataset` writes the job's dataset at its planned path
    (a generated draw of the job's seed; `extra`: its --offset and --extend)."""
    from aifactory.lab import lab_exec

    argv = [str(NODE_RUNTIME / "aifactory-train"), str(job_path), "--generate-dataset"]
    argv += ["--samples", str(samples), *extra, "--host", host]
    generate = lab_exec(context.plan().plan.name, argv, host=host, timeout=GENERATE_TIMEOUT_S)
    if generate.returncode != 0:
        raise AifactoryError(
            f"generating the dataset of {job_path.name} on {host} failed: {generate.stderr.strip()[-300:]}",
            code="dataset-generation-failed",
            hint="run `aifactory up` again: it resumes at this stage",
        )


def _latest_step(context: UpContext, model: ModelPlan, host: str) -> int:
    from aifactory.lab import lab_exec

    latest = f"{model.host_path}/checkpoints/latest"
    done = lab_exec(context.plan().plan.name, ["cat", latest], host=host)
    text = done.stdout.strip().removeprefix("step-")
    return int(text) if done.returncode == 0 and text.isdigit() else 0


def run_train(context: UpContext) -> StageResult:
    import yaml

    from aifactory.scheduler.jobs import list_jobs
    from aifactory.scheduler.submit import train

    if not context.options.lab:
        return StageResult("skipped", "train with `aifactory train SITE JOB.yaml` on a real site")
    model, dataset, hosts = _train_target(context)
    job = train_job(context)
    folder = _train_folder(context)
    write_token_file(context, Path(job["token_file"]), dataset.owner)
    job_path = folder / "job.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=True))
    site = context.plan().plan.name
    generate_on_node(context, job_path, hosts[0], samples=TRAIN_SAMPLES)
    client = slurm_client(context)
    submission = train(context.plan(), job_path, client=client, nodes=len(hosts))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    state = "PENDING"
    while time.monotonic() < deadline:
        found = {j.id: j for j in list_jobs(site, client=client)}.get(submission.slurm_job_id)
        state = found.state if found else "PENDING"
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            break
        time.sleep(2)
    step = _latest_step(context, model, hosts[0])
    if state != "COMPLETED" or step < job["train"]["steps"]:
        raise AifactoryError(
            f"training job {submission.slurm_job_id} ended {state} at step {step}",
            code="train-failed",
            hint="see the job's output under the model's runs/ folder; "
            "run `aifactory up` again: training resumes from the last checkpoint",
        )
    provenance = {
        "name": job["name"],
        "slurm_job_id": submission.slurm_job_id,
        "decision_id": submission.decision_id,
        "hosts": hosts,
    }
    digest = _sign_and_promote(context, model, dataset, step=step, job=provenance)
    return StageResult(
        "ok",
        f"Slurm job {submission.slurm_job_id} on {', '.join(hosts)}: {step} steps, "
        f"decision {submission.decision_id}; signed {digest[:19]}..., promoted champion",
        {
            "slurm_job_id": submission.slurm_job_id,
            "decision_id": submission.decision_id,
            "step": step,
            "model": model.name,
            "digest": digest,
        },
    )


def _sign_and_promote(
    context: UpContext, model: ModelPlan, dataset: DatasetPlan, *, step: int, job: dict[str, Any]
) -> str:
    """Sign the trained checkpoint into the model's registry and promote it as the champion (the
    servers load nothing else); the version's digest. Signed again, the same bytes keep their digest
    and the champion is not promoted twice."""
    from aifactory.pipeline.models import model_dir, on_storage
    from aifactory.trust.issuing.models import ensure_model_key, promote, register
    from aifactory.trust.models import Registry, read_promotions

    plan = context.plan().plan
    folder = model_dir(plan, model, lab=context.options.lab)
    key = ensure_model_key(context.state.subdir("runtime"))
    manifest = on_storage(plan, dataset.storage, dataset.path, lab=context.options.lab) / "manifest.json"
    dataset_record: dict[str, Any] = {"name": dataset.name, "owner": dataset.owner, "path": dataset.path}
    if manifest.is_file():
        dataset_record["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    version = register(
        model_dir=folder,
        checkpoint=folder / "checkpoints" / f"step-{step:08d}",  # runtime.checkpoint's name (torch-free)
        key=key,
        job=job,
        dataset=dataset_record,
    )
    champion = read_promotions(Registry(folder), key.trust).alias("champion")
    if champion is None or champion.digest != version.digest:
        promote(
            model_dir=folder,
            digest=version.digest,
            alias="champion",
            key=key,
            reason=f"trained by aifactory up (Slurm job {job['slurm_job_id']})",
        )
    return version.digest


def _train_inputs(context: UpContext) -> dict[str, Any]:
    job = train_job(context)
    job.pop("token_file")
    return {
        "plan": context.plan_digest,
        "job": job,
        "bundle": context.outputs.get("import", {}).get("digest"),
    }


def verify_train(context: UpContext, outputs: dict[str, Any]) -> str:
    model, _, hosts = _train_target(context)
    step = _latest_step(context, model, hosts[0])
    if step < train_job(context)["train"]["steps"]:
        raise AifactoryError("the checkpoint is gone", code="checkpoint-missing")
    return f"checkpoint at step {step} is there: no retraining"


@contextlib.contextmanager
def _token_files(context: UpContext, *tenants: str) -> Iterator[list[Path]]:
    """Each tenant's token in a 0600 file of the state folder while the probe runs (a token on a
    command line would show in the process list), removed afterwards."""
    folder = context.state.subdir("up") / "probe-tokens"
    folder.mkdir(mode=0o700, exist_ok=True)
    files = []
    try:
        for tenant in tenants:
            path = folder / f"{tenant}.token"
            write_token_file(context, path, tenant)
            files.append(path)
        yield files
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def _denied_tenant(context: UpContext, model: ModelPlan) -> str | None:
    """A tenant that is neither the model's owner nor granted `infer` on it."""
    plan = context.plan().plan
    granted = {g.tenant for g in plan.access if g.resource == f"model/{model.name}" and "infer" in g.actions}
    return next((t.name for t in plan.tenants if t.name != model.owner and t.name not in granted), None)


@dataclass(frozen=True)
class ServeAnswers:
    """The serve probe's two answers from one serving host, checked: the allowed request answered
    200 by the expected version, the denied one 403."""

    host: Host
    denied_tenant: str
    allowed: dict[str, Any]
    denied: dict[str, Any]


def champion_now(context: UpContext, model: ModelPlan) -> str | None:
    """The version the servers are to serve: the registry's champion, its promotion record verified
    with the site's model key (the train stage's, or a loop turn's since); None without one."""
    from aifactory.pipeline.models import model_dir
    from aifactory.trust.issuing.models import ModelKey
    from aifactory.trust.models import Registry, read_promotions

    trust = ModelKey(context.state.subdir("runtime")).trust
    folder = model_dir(context.plan().plan, model, lab=context.options.lab)
    champion = read_promotions(Registry(folder), trust).alias("champion")
    return champion.digest if champion is not None else None


def probe_serving(context: UpContext, model: ModelPlan, champion: str | None) -> ServeAnswers:
    """One allowed request (the model's owner) and one denied (a tenant without access) to the first
    host serving the model, sent from the control host once it serves `champion` (when given)."""
    import json

    from aifactory.lab import lab_exec

    plan = context.plan().plan
    host = plan.host(next(h.name for h in plan.hosts if h.pool in model.serve_on))
    denied_tenant = _denied_tenant(context, model)
    if denied_tenant is None:
        raise UsageError("the site has no tenant without access to the model, to show a denied request")
    base = f"http://{host.management_address}:{SERVE_PORT}"
    with _token_files(context, model.owner, denied_tenant) as (allowed_file, denied_file):
        probe = lab_exec(
            plan.name,
            [
                sys.executable,
                "-m",
                "aifactory.pipeline.serve_probe",
                base,
                model.name,
                str(allowed_file),
                str(denied_file),
                str(SERVE_TIMEOUT_S),
                *(["--digest", champion] if champion else []),
            ],
            timeout=SERVE_TIMEOUT_S + 60,
        )
    if probe.returncode != 0:
        raise AifactoryError(
            f"the inference server on {host.name} did not answer: {probe.stderr.strip()[-300:]}",
            code="serve-failed",
        )
    answers = json.loads(probe.stdout)
    allowed, denied = answers["allowed"], answers["denied"]
    wrong_version = champion is not None and allowed.get("digest") != champion
    if allowed.get("status") != 200 or denied.get("status") != 403 or wrong_version:
        raise AifactoryError(
            f"unexpected answers: allowed {allowed.get('status')} from {allowed.get('digest')} "
            f"(champion {champion}), denied {denied.get('status')}",
            code="serve-unexpected",
        )
    return ServeAnswers(host, denied_tenant, allowed, denied)


def run_serve(context: UpContext) -> StageResult:
    if not context.options.lab:
        return StageResult("skipped", "requests are made against the lab only")
    model = next(m for m in context.plan().plan.models if m.name == context.outputs["train"]["model"])
    # The registry's champion: the version `up`'s train stage signed and promoted, or the one a loop
    # turn (the loop stage of an earlier run, or `aifactory loop run`) promoted since.
    champion = champion_now(context, model) or context.outputs["train"].get("digest")
    served = probe_serving(context, model, champion)
    allowed, denied = served.allowed, served.denied
    version = champion[:19] if champion else ""
    return StageResult(
        "ok",
        f"{model.name} {version} on {served.host.name}: {model.owner} 200 (decision "
        f"{allowed.get('decision_id')}), {served.denied_tenant} 403 {denied.get('reason')} (decision "
        f"{denied.get('decision_id')})",
        {"allowed": allowed, "denied": denied, "host": served.host.name, "digest": champion},
    )


# ------------------------------------------------------------------ audit


def run_audit(context: UpContext) -> StageResult:
    from aifactory.audit import ReportOptions, produce_report
    from aifactory.pipeline.models import model_dir, on_storage
    from aifactory.trust.issuing.models import ModelKey

    folder = context.state.subdir("up") / "report"
    plan = context.plan().plan
    models = tuple((m.name, model_dir(plan, m, lab=context.options.lab)) for m in plan.models if m.host_path)
    written = produce_report(
        context.plan(),
        folder,
        ReportOptions(
            timestamp=context.options.timestamp,
            engine=context.options.engine,
            opa_url=context.options.opa_url,
            models=models,
            model_trust=ModelKey(context.state.subdir("runtime")).trust.public_key,
            datasets=tuple(
                (d.name, on_storage(plan, d.storage, d.path, lab=context.options.lab))
                for d in plan.datasets
                if d.host_path
            ),
        ),
    )
    # The site's own key signed it: its allowed_signers in the state folder is the trust to check
    # with (the copy inside the report proves nothing about who signed).
    trust = context.state.path("audit", "allowed_signers")
    return StageResult(
        "ok",
        f"signed report in {folder}",
        {"report": str(folder), "identity": written.identity, "trust": str(trust)},
    )


def stage_list() -> list[Stage]:
    # Imported here: loop_stage imports this module's helpers (and UpContext) at its top.
    from aifactory.pipeline.loop_stage import loop_stage

    return [
        Stage("validate", "check the site spec", run_validate, _spec_inputs),
        Stage("plan", "hosts, addresses, mounts", run_plan, _spec_inputs),
        Stage("policy", "sovereignty policy gate", run_policy, _policy_inputs),
        Stage(
            "lab",
            "the local lab (namespaces, sshd, BMCs)",
            run_lab,
            lambda c: {"plan": c.plan_digest, "lab": c.options.lab},
            verify_lab,
        ),
        Stage(
            "provision",
            "hosts through Redfish (Pulumi)",
            run_provision,
            lambda c: {"plan": c.plan_digest, "pulumi": os.environ.get("AIFACTORY_PULUMI_BIN")},
        ),
        Stage(
            "bundle",
            "build and verify the signed offline bundle",
            run_bundle,
            _bundle_inputs,
            verify_bundle_stage,
        ),
        Stage("import", "import the bundle on the control host", run_import, _import_inputs, verify_import),
        Stage(
            "inventory",
            "Ansible inventory from the bundle's plan",
            run_inventory,
            lambda c: {"plan": c.plan_digest, "bundle": c.outputs.get("import", {}).get("digest")},
        ),
        Stage("deploy", "install the runtime from the bundle", run_deploy, _deploy_inputs, verify_deploy),
        Stage(
            "scan",
            "OpenSCAP scan of every host (host hardening evidence)",
            run_scan,
            lambda c: {"deploy": c.outputs.get("deploy", {}).get("bundle"), "plan": c.plan_digest},
        ),
        Stage(
            "scheduler",
            "Slurm controller and nodes ready",
            run_scheduler,
            lambda c: {"deploy": c.outputs.get("deploy", {}).get("bundle"), "plan": c.plan_digest},
            verify_scheduler,
        ),
        Stage(
            "health",
            "every host proves healthy; Slurm admits the nodes that pass",
            run_health_gate,
            _health_inputs,
            verify_health,
        ),
        Stage(
            "monitoring",
            "Prometheus scrapes every host with TLS",
            run_monitoring,
            lambda c: {"deploy": c.outputs.get("deploy", {}).get("bundle"), "plan": c.plan_digest},
            verify_monitoring,
        ),
        Stage("train", "train the model across the compute hosts", run_train, _train_inputs, verify_train),
        Stage("serve", "one allowed and one denied request", run_serve, always=True),
        loop_stage(),
        Stage("audit", "signed auditor report", run_audit, always=True),
    ]
