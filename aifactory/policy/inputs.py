"""The policy input: the site as the policies see it, built from the plan.

Collections are objects keyed by name, so the policies look things up instead of scanning lists.
Only spec-level facts go in (places as written, datacenters, references); the policies compute
countries, residencies and clearances themselves from the places data, so the Rego is the source
of truth for every decision. Every host is included (name -> datacenter), so the check covers the
whole site. Built from a `SitePlan` or from its JSON form (`SitePlan.to_dict()`, a bundle's
plan.json) alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from aifactory.plan.model import SitePlan


def site_document(plan: SitePlan | dict[str, Any], *, hosts: bool = True) -> dict[str, Any]:
    """The site as the policies see it; without `hosts` for run time, where no rule reads them."""
    if not hosts:
        return {key: value for key, value in site_document(_without_hosts(plan)).items() if key != "hosts"}
    section: Callable[[str], Any]
    if isinstance(plan, SitePlan):
        section = partial(getattr, plan)
        host_datacenters = {h.name: h.datacenter for h in plan.hosts}
    else:
        section = plan.__getitem__
        host_datacenters = {h["name"]: h["datacenter"] for h in plan["hosts"]}
    site = section("site")
    return {
        "name": site["name"],
        "jurisdiction": site["jurisdiction"],
        "air_gapped": bool(site["air_gapped"]),
        "datacenters": {
            d["name"]: {"country": d["country"], "region": d.get("region")} for d in section("datacenters")
        },
        "pools": {
            p["name"]: {"role": p["role"], "datacenter": p["datacenter"], "count": p["count"]}
            for p in section("pools")
        },
        "hosts": host_datacenters,
        "storage": {
            s["name"]: {
                "kind": s["kind"],
                "datacenter": s["datacenter"],
                "encrypted_at_rest": bool(s["encrypted_at_rest"]),
                "replicas": list(s.get("replicas", [])),
            }
            for s in section("storage")
        },
        "tenants": {
            t["name"]: {"clearance": t["clearance"], "pools": list(t.get("pools", []))}
            for t in section("tenants")
        },
        "datasets": {
            d["name"]: {
                "owner": d["owner"],
                "classification": d["classification"],
                "residency": d["residency"],
                "storage": d["storage"],
            }
            for d in section("datasets")
        },
        "models": {
            m["name"]: {
                "owner": m["owner"],
                "classification": m["classification"],
                "trained_on": list(m["trained_on"]),
                "storage": m["storage"],
                "serve_on": list(m["serve_on"]),
            }
            for m in section("models")
        },
        "access": [
            {
                "tenant": g["tenant"],
                "resource": g["resource"],
                "kind": g["kind"],
                "name": g["name"],
                "actions": list(g["actions"]),
                "expires": g.get("expires"),
                "to": g.get("to"),
                "approved_by": g.get("approved_by"),
            }
            for g in section("access")
        ],
        "egress": [
            {"name": e["name"], "endpoint": e["endpoint"], "country": e["country"]}
            for e in section("egress")["allow"]
        ],
    }


def _without_hosts(plan: SitePlan | dict[str, Any]) -> SitePlan | dict[str, Any]:
    return replace(plan, hosts=()) if isinstance(plan, SitePlan) else {**plan, "hosts": []}


def site_input(plan: SitePlan | dict[str, Any], today: str) -> dict[str, Any]:
    """The input of the site packages: the site document plus the evaluation date (ISO)."""
    return {**site_document(plan), "today": today}
