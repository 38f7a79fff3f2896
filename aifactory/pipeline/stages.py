"""The stages of `aifactory up`, in order. Each calls the library function its own command uses;
nothing here re-implements a stage.

    validate -> plan -> policy -> lab -> provision -> bundle -> import -> inventory -> deploy
             -> scheduler -> train -> serve -> audit
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifactory import __version__
from aifactory.errors import AifactoryError, DeployError, ExitCode, PolicyDenied, PrerequisiteError, Problem
from aifactory.pipeline.runner import Stage, StageResult
from aifactory.plan import PlannedSite, plan_site
from aifactory.resources import resource_dir
from aifactory.state import SiteState


@dataclass(frozen=True)
class UpOptions:
    lab: bool
    engine: str = "embedded"
    opa_url: str | None = None
    timestamp: str | None = None  # the audit report's timestamp (default: now)
    bundle_passphrase_file: Path | None = None


@dataclass
class UpContext:
    spec_path: Path
    state: SiteState
    options: UpOptions
    planned: PlannedSite | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def plan(self) -> PlannedSite:
        if self.planned is None:
            self.planned = plan_site(self.spec_path)
        return self.planned

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
    context.planned = None
    planned = context.plan()
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
    if not outputs.get("lab"):
        return "not a lab site"
    from aifactory.lab import lab_status

    data = lab_status(context.plan().plan.name).as_dict()
    hosts = data.get("hosts", [])
    if data.get("state") != "up" or not hosts:
        raise AifactoryError("the lab is not fully up", code="lab-down")
    return f"{len(hosts)} hosts up"


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
    result = build_bundle(context.spec_path, output=output, options=BuildOptions(key=key))
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
    from aifactory.deploy.bundle import describe_current_bundle
    from aifactory.inventory.site import site_inventory

    folder = context.state.subdir("up") / "inventory"
    rendered = site_inventory(
        context.plan().plan.to_dict(), bundle=describe_current_bundle(context.state), state=context.state
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

    result = deploy_site(context.spec_path, options=DeployOptions())
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
    """Re-probe without changing anything: a check-mode run must find nothing to change."""
    from aifactory.deploy import DeployOptions, deploy_site

    result = deploy_site(context.spec_path, options=DeployOptions(check=True, diff=False))
    if result.exit_code != ExitCode.OK or result.changed:
        raise DeployError("the hosts drifted from the bundle", code="deploy-drift")
    return f"{len(result.hosts)} hosts match the bundle (check mode: changed=0)"


def _deploy_inputs(context: UpContext) -> dict[str, Any]:
    return {"bundle": context.outputs.get("import", {}).get("digest"), "plan": context.plan_digest}


# ------------------------------------------------------------------ audit


def run_audit(context: UpContext) -> StageResult:
    from aifactory.audit import ReportOptions, produce_report

    folder = context.state.subdir("up") / "report"
    written = produce_report(
        context.spec_path,
        folder,
        ReportOptions(
            timestamp=context.options.timestamp,
            engine=context.options.engine,
            opa_url=context.options.opa_url,
        ),
    )
    return StageResult(
        "ok", f"signed report in {folder}", {"report": str(folder), "identity": written.identity}
    )


def stage_list() -> list[Stage]:
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
        Stage("audit", "signed auditor report", run_audit, always=True),
    ]
