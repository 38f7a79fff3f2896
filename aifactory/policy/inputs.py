"""The policy input: the site as the policies see it, built from the plan.

Collections are objects keyed by name, so the policies look things up instead of scanning lists.
Only spec-level facts go in (places as written, datacenters, references); the policies compute
countries, residencies and clearances themselves from the places data, so the Rego is the source
of truth for every decision. Every host is included (name -> datacenter), so the check covers the
whole site. A bundle's plan.json is read with `SitePlan.load` first.
"""

from __future__ import annotations

from typing import Any

from aifactory.plan.model import SitePlan


def site_document(plan: SitePlan, *, hosts: bool = True) -> dict[str, Any]:
    """The site as the policies see it; without `hosts` for run time, where no rule reads them."""
    return {
        "name": plan.site.name,
        "jurisdiction": plan.site.jurisdiction,
        "air_gapped": plan.site.air_gapped,
        "datacenters": {d.name: {"country": d.country, "region": d.region} for d in plan.datacenters},
        "pools": {p.name: {"role": p.role, "datacenter": p.datacenter, "count": p.count} for p in plan.pools},
        **({"hosts": {h.name: h.datacenter for h in plan.hosts}} if hosts else {}),
        "storage": {
            s.name: {
                "kind": s.kind,
                "datacenter": s.datacenter,
                "encrypted_at_rest": s.encrypted_at_rest,
                "replicas": list(s.replicas),
            }
            for s in plan.storage
        },
        "tenants": {t.name: {"clearance": t.clearance, "pools": list(t.pools)} for t in plan.tenants},
        "datasets": {
            d.name: {
                "owner": d.owner,
                "classification": d.classification,
                "residency": d.residency,
                "storage": d.storage,
            }
            for d in plan.datasets
        },
        "models": {
            m.name: {
                "owner": m.owner,
                "classification": m.classification,
                "trained_on": list(m.trained_on),
                "storage": m.storage,
                "serve_on": list(m.serve_on),
            }
            for m in plan.models
        },
        "access": [
            {
                "tenant": g.tenant,
                "resource": g.resource,
                "kind": g.kind,
                "name": g.name,
                "actions": list(g.actions),
                "expires": g.expires,
                "to": g.to,
                "approved_by": g.approved_by,
            }
            for g in plan.access
        ],
        "egress": [{"name": e.name, "endpoint": e.endpoint, "country": e.country} for e in plan.egress.allow],
    }


def site_input(plan: SitePlan, today: str) -> dict[str, Any]:
    """The input of the site packages: the site document plus the evaluation date (ISO)."""
    return {**site_document(plan), "today": today}
