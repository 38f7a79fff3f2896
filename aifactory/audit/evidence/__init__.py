"""Gathering evidence from every stage that has left some: policy, bundle, deploy, the logs and the
hosts' OpenSCAP scans, the model registry, the datasets' versions, monitoring with its review, the
health gate's runs (continuous monitoring), the control host's backups, the upgrades and
rollbacks with the version each host runs, the key rotations, and the closed loop's AI section
(promotions, refusals, lineage)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aifactory.audit.evidence.ai import AiSources, ai_evidence
from aifactory.audit.evidence.backups import backup_evidence
from aifactory.audit.evidence.bundle import bundle_evidence
from aifactory.audit.evidence.changes import change_evidence
from aifactory.audit.evidence.datasets import dataset_evidence
from aifactory.audit.evidence.deploy import deploy_evidence
from aifactory.audit.evidence.health import health_evidence
from aifactory.audit.evidence.hostscan import host_scan_evidence
from aifactory.audit.evidence.logs import decision_log_evidence, operator_log_evidence, verify_any_log
from aifactory.audit.evidence.models import model_evidence
from aifactory.audit.evidence.operations import operations_evidence
from aifactory.audit.evidence.policy import policy_evidence
from aifactory.audit.evidence.rotations import rotation_evidence
from aifactory.audit.model import Evidence
from aifactory.headcopies import collected_signers
from aifactory.plan.model import SitePlan
from aifactory.state import SiteState

__all__ = ["gather_evidence", "verify_any_log"]


def gather_evidence(
    *,
    plan: SitePlan,
    plan_digest: str,
    policy: Mapping[str, Any],
    state: SiteState,
    decision_logs: Sequence[Path] = (),
    bundle_trust: Path | None = None,
    retention_days: int | None = None,
    scap_waivers: Path | None = None,
    today: dt.date | None = None,
    models: Sequence[tuple[str, Path]] = (),
    model_trust: Path | None = None,
    datasets: Sequence[tuple[str, Path]] = (),
) -> tuple[list[Evidence], str | None]:
    """Every evidence section, in report order, and the imported bundle's digest (None if none)."""
    bundle, bundle_digest = bundle_evidence(state, plan_digest, trust=bundle_trust)
    sections = [
        policy_evidence(policy),
        bundle,
        deploy_evidence(state, plan, plan_digest),
        operator_log_evidence(state),
        decision_log_evidence(state, decision_logs, retention_days=retention_days),
        host_scan_evidence(state, waivers=scap_waivers, today=today or dt.datetime.now(dt.UTC).date()),
        model_evidence(models, model_trust),
        dataset_evidence(datasets, model_trust),  # signed with the same site key
        # Only for a site with a loop: the reports of other sites keep their sections and bytes.
        *([ai_evidence(plan, _ai_sources(plan, state, models, datasets, model_trust))] if plan.loop else []),
        backup_evidence(state),
        change_evidence(state, trust=bundle_trust),
        rotation_evidence(state),
        health_evidence(state),
        operations_evidence(state, plan),
    ]
    return sections, bundle_digest


def _ai_sources(
    plan: SitePlan,
    state: SiteState,
    models: Sequence[tuple[str, Path]],
    datasets: Sequence[tuple[str, Path]],
    trust: Path | None,
) -> AiSources:
    return AiSources(
        models=models,
        datasets=datasets,
        trust=trust,
        loop_state=state.path("loop"),
        node_signers=collected_signers(state, (host.name for host in plan.hosts)),
    )
