"""ssp.json: an OSCAL System Security Plan written from the site's plan and aifactory's control model.

What it says comes from the same spec and plan that deploy the system:
- system characteristics: the site, its jurisdiction and whether it is air-gapped, the data and
  models it holds (information types, with classification and residency), its authorization
  boundary (datacenters, pools, fabrics, storage, egress);
- components: this system, each node pool (hardware), fabric (network), storage system and service,
  each policy package and each part of aifactory that implements controls;
- users: the tenants (with their clearance) and the site's roles;
- for every control aifactory implements (controls.IMPLEMENTATIONS) and every control the policy
  check reported: how it is implemented (the statement, the spec settings, the policy rules and
  evidence checks behind it, and the roles responsible), by component.

It imports the moderate baseline profile aifactory ships (profile.json beside it). Every UUID is a
uuid5 of content; its one time is the report's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import is_dataclass
from typing import Any

from aifactory.audit.catalog import OSCAL_VERSION, catalog_resource, load_catalog
from aifactory.audit.controls import (
    IMPLEMENTATIONS,
    MODERATE_BASELINE,
    PARTS,
    ROLES,
    Implementation,
    oscal_control_id,
    sort_key,
)
from aifactory.audit.model import PASS, AuditReport, Control, RuleResult, content_uuid
from aifactory.audit.oscal import PROFILE_FILE, one_line, prop
from aifactory.plan.model import (
    AccessGrant,
    DatasetPlan,
    FabricPlan,
    ModelPlan,
    PoolPlan,
    SitePlan,
    StoragePlan,
)

# FIPS 199 impact of a breach of confidentiality, by the data's classification.
IMPACT = {
    "public": "fips-199-low",
    "internal": "fips-199-low",
    "confidential": "fips-199-moderate",
    "secret": "fips-199-high",
    "top-secret": "fips-199-high",
}
SENSITIVITY = {
    "public": "low",
    "internal": "low",
    "confidential": "moderate",
    "secret": "high",
    "top-secret": "high",
}


# The evidence sources of a report, as the parts of aifactory the SSP names.
SOURCE_PARTS = {"operator-log": "logs", "decision-logs": "logs", "models": "runtime"}


def _uuid(site: str, *parts: str) -> str:
    return content_uuid("ssp", site, *parts)


def _words(items: Iterable[str]) -> str:
    listed = [i for i in items if i]
    return ", ".join(listed) if listed else "none"


def _component(
    site: str, kind: str, name: str, ctype: str, title: str, description: str, props: Sequence[dict[str, str]]
) -> dict[str, Any]:
    component: dict[str, Any] = {
        "uuid": _uuid(site, "component", kind, name),
        "type": ctype,
        "title": one_line(title),
        "description": description,
        "status": {"state": "operational"},
    }
    if props:
        component["props"] = list(props)
    return component


def _pool(site: str, pool: PoolPlan) -> dict[str, Any]:
    gpu = pool.hardware.gpu
    where = f"datacenter {pool.datacenter} ({pool.country})"
    what = f"{pool.count} host(s), role {pool.role}, in {where}"
    if gpu:
        what += f", {gpu.count} x {gpu.model} GPU each"
    return _component(
        site,
        "pool",
        pool.name,
        "hardware",
        f"Node pool {pool.name}",
        what + f"; on fabrics {_words(pool.fabrics)}.",
        [
            prop("pool-role", pool.role),
            prop("host-count", str(pool.count)),
            prop("datacenter", pool.datacenter),
            prop("country", pool.country),
        ],
    )


def _fabric(site: str, fabric: FabricPlan) -> dict[str, Any]:
    return _component(
        site,
        "fabric",
        fabric.name,
        "network",
        f"Fabric {fabric.name}",
        f"{fabric.kind} fabric for {fabric.purpose} traffic, network {fabric.cidr}, "
        f"{fabric.rails or 1} rail(s).",
        [prop("purpose", fabric.purpose), prop("network", fabric.cidr)],
    )


def _storage(site: str, store: StoragePlan) -> dict[str, Any]:
    encrypted = "encrypted at rest" if store.encrypted_at_rest else "not encrypted at rest"
    replicas = store.replica_countries
    return _component(
        site,
        "storage",
        store.name,
        "service",
        f"Storage {store.name}",
        f"{store.kind} storage in datacenter {store.datacenter} ({store.country}), {encrypted}; "
        f"mounted by pools {_words(store.mounted_by)}"
        + (f"; replicated to {_words(replicas)}" if replicas else "")
        + ".",
        [
            prop("storage-kind", store.kind),
            prop("country", store.country),
            prop("encrypted-at-rest", "yes" if store.encrypted_at_rest else "no"),
        ],
    )


def _services(site: str, plan: SitePlan) -> list[dict[str, Any]]:
    """What runs on the hosts: the scheduler and a serving endpoint per model that is served."""
    control = [p.name for p in plan.pools if p.role == "control"]
    compute = [p.name for p in plan.pools if p.role != "control"]
    services = [
        _component(
            site,
            "service",
            "scheduler",
            "service",
            "Slurm scheduler",
            f"slurmctld on the control pool ({_words(control)}), slurmd on compute pools "
            f"({_words(compute)}); munge authenticates the daemons with one key per site.",
            [],
        )
    ]
    for model in sorted(plan.models, key=lambda m: m.name):
        pools = model.serve_on
        if pools:
            services.append(
                _component(
                    site,
                    "service",
                    f"serve-{model.name}",
                    "service",
                    f"Model serving: {model.name}",
                    f"aifactory-serve serves model {model.name} ({model.classification}) on "
                    f"pools {_words(pools)} over TLS with client certificates; every request is "
                    "authorized by policy and recorded in the decision log.",
                    [prop("classification", model.classification)],
                )
            )
    return services


def _policy_packages(report: AuditReport) -> dict[str, list[RuleResult]]:
    packages: dict[str, list[RuleResult]] = {}
    for control in report.controls:
        for rule in control.rules:
            if rule.source == "policy" and "." in rule.id:
                mine = packages.setdefault(rule.id.split(".", 1)[0], [])
                if rule.id not in [r.id for r in mine]:
                    mine.append(rule)
    return dict(sorted(packages.items()))


def _policy_component(site: str, package: str, rules: list[RuleResult]) -> dict[str, Any]:
    return _component(
        site,
        "policy",
        package,
        "policy",
        f"Policy: {package}",
        "Rego policy package checked against the plan before anything is built; its rules: "
        + "; ".join(f"{r.id} ({r.title})" if r.title else r.id for r in sorted(rules, key=lambda r: r.id))
        + ".",
        [],
    )


def _components(plan: SitePlan, report: AuditReport) -> list[dict[str, Any]]:
    site = plan.name
    this_system = _component(
        site,
        "this-system",
        site,
        "this-system",
        f"AI factory {site}",
        f"The sovereign AI factory {site}, built and operated with aifactory from its site spec.",
        [],
    )
    parts = [
        _component(site, "part", name, "software", f"aifactory {name}", description, [])
        for name, description in PARTS.items()
    ]
    return [
        this_system,
        *(_pool(site, p) for p in plan.pools),
        *(_fabric(site, f) for f in plan.fabrics),
        *(_storage(site, s) for s in plan.storage),
        *_services(site, plan),
        *(_policy_component(site, package, rules) for package, rules in _policy_packages(report).items()),
        *parts,
    ]


def _information_types(plan: SitePlan) -> list[dict[str, Any]]:
    types = []
    items: list[tuple[str, DatasetPlan | ModelPlan]] = [
        *(("dataset", d) for d in sorted(plan.datasets, key=lambda d: d.name)),
        *(("model", m) for m in sorted(plan.models, key=lambda m: m.name)),
    ]
    for kind, item in items:
        classification = item.classification or "internal"
        impact = IMPACT.get(classification, "fips-199-moderate")
        # A model has no residency of its own in the spec: it stays in the site's jurisdiction.
        residency = item.residency if isinstance(item, DatasetPlan) else plan.site.jurisdiction
        types.append(
            {
                "uuid": _uuid(plan.name, "information", kind, item.name),
                "title": one_line(f"{kind.capitalize()} {item.name}"),
                "description": f"{kind.capitalize()} {item.name}, owned by tenant "
                f"{item.owner}, classified {classification}, kept in {residency}, "
                f"on storage {item.storage}.",
                "props": [
                    prop("classification", classification),
                    prop("residency", residency),
                    prop("owner", item.owner),
                ],
                "confidentiality-impact": {"base": impact},
                "integrity-impact": {"base": "fips-199-moderate"},
                "availability-impact": {"base": "fips-199-moderate"},
            }
        )
    if not types:
        types.append(
            {
                "uuid": _uuid(plan.name, "information", "none"),
                "title": "No datasets or models",
                "description": "The site spec names no dataset or model yet.",
                "confidentiality-impact": {"base": "fips-199-low"},
                "integrity-impact": {"base": "fips-199-moderate"},
                "availability-impact": {"base": "fips-199-moderate"},
            }
        )
    return types


def _boundary(plan: SitePlan) -> str:
    places = _words(f"{d.name} ({d.country})" for d in plan.datacenters)
    outside = (
        "The site is air-gapped: it declares no connection outside the boundary."
        if plan.site.air_gapped
        else f"Connections outside the boundary: {_words(e.endpoint for e in plan.egress.allow)}."
    )
    return (
        f"Every host of {len(plan.pools)} node pool(s) ({len(plan.hosts)} hosts) in datacenter(s) {places}, "
        f"the fabrics {_words(f.name for f in plan.fabrics)} and the storage systems "
        f"{_words(s.name for s in plan.storage)}, all inside {plan.site.jurisdiction}. {outside}"
    )


def _characteristics(plan: SitePlan, report: AuditReport) -> dict[str, Any]:
    site = plan.site
    deployed = next((e.status for e in report.evidence if e.name == "deploy"), "")
    classification = report.classification
    return {
        "system-ids": [{"identifier-type": "https://ietf.org/rfc/rfc4122", "id": _uuid(plan.name, "system")}],
        "system-name": plan.name,
        "description": site.description or f"AI factory {plan.name}",
        "props": [
            prop("jurisdiction", site.jurisdiction),
            prop("air-gapped", "yes" if site.air_gapped else "no"),
            prop("data-residency", _words(sorted({d.residency for d in plan.datasets}))),
            prop("spec-digest", plan.spec_digest),
            prop("classification", classification),
        ],
        "security-sensitivity-level": SENSITIVITY.get(classification, "moderate"),
        "system-information": {"information-types": _information_types(plan)},
        "security-impact-level": {
            "security-objective-confidentiality": IMPACT.get(classification, "fips-199-moderate"),
            "security-objective-integrity": "fips-199-moderate",
            "security-objective-availability": "fips-199-moderate",
        },
        "status": {
            "state": "operational" if deployed == PASS else "under-development",
            "remarks": "operational once the audit finds every planned host deployed from the current plan",
        },
        "authorization-boundary": {"description": _boundary(plan)},
    }


def _users(plan: SitePlan) -> list[dict[str, Any]]:
    users = [
        {
            "uuid": _uuid(plan.name, "user", "tenant", t.name),
            "title": f"Tenant {t.name}",
            "short-name": t.name,
            "description": f"Tenant {t.name}, cleared to {t.clearance}, "
            f"runs jobs on pools {_words(t.pools)}.",
            "props": [prop("clearance", t.clearance)],
            "role-ids": ["data-owner"],
        }
        for t in sorted(plan.tenants, key=lambda t: t.name)
    ]
    users.append(
        {
            "uuid": _uuid(plan.name, "user", "site-administrator"),
            "title": "Site administrators",
            "description": "People who run aifactory on the control host (plan, bundle, deploy, audit).",
            "role-ids": ["site-administrator"],
        }
    )
    return users


def _plan_section(plan: SitePlan, key: str) -> Any:
    """A top-level section of the spec, as the plan holds it."""
    sections: dict[str, Any] = {
        "site": plan.site,
        "datacenters": plan.datacenters,
        "fabrics": plan.fabrics,
        "node_pools": plan.pools,
        "storage": plan.storage,
        "tenants": plan.tenants,
        "datasets": plan.datasets,
        "models": plan.models,
        "access": plan.access,
        "egress": plan.egress,
    }
    return sections.get(key)


def _setting_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return _words(_item_label(v) if is_dataclass(v) else str(v) for v in value)
    return "none" if value in (None, "") else str(value)


def _item_label(item: Any) -> str:
    if isinstance(item, AccessGrant):
        return f"{item.tenant} on {item.resource}"
    return str(getattr(item, "name", None))


def setting_text(plan: SitePlan, setting: str) -> str:
    """A spec setting with its values on this site: "storage[].encrypted_at_rest: share = yes".

    Settings are named by the spec's field paths (the control model's), so they are read by name."""
    head, _, field = setting.partition(".")
    section = _plan_section(plan, head.removesuffix("[]"))
    if head.endswith("[]") and isinstance(section, tuple):
        if not field:
            return f"{setting}: {_words(_item_label(item) for item in section)}"
        values = [f"{_item_label(item)} = {_setting_value(getattr(item, field, None))}" for item in section]
        return f"{setting}: {'; '.join(values) or 'none'}"
    if is_dataclass(section) and field:
        name, _, _rest = field.partition("[]")
        return f"{setting}: {_setting_value(getattr(section, name, None))}"
    return setting


def _rules_text(rules: Sequence[RuleResult]) -> str:
    return "; ".join(f"{r.id} ({r.title})" if r.title else r.id for r in rules)


def _by_components(
    plan: SitePlan, control_id: str, implementation: Implementation | None, control: Control | None
) -> list[dict[str, Any]]:
    site = plan.name
    rules = list(control.rules) if control else []
    by_part: dict[str, list[RuleResult]] = {}
    for rule in rules:
        part = SOURCE_PARTS.get(rule.source, rule.source)
        by_part.setdefault(part if part in PARTS else "audit", []).append(rule)
    parts = list(implementation.parts) if implementation else []
    parts += [p for p in by_part if p not in parts]
    out = []
    for part in parts:
        text = implementation.statement if implementation and part == parts[0] else PARTS[part] + "."
        if implementation and implementation.settings and part == parts[0]:
            text += (
                " Set in the site spec: "
                + "; ".join(setting_text(plan, s) for s in implementation.settings)
                + "."
            )
        if by_part.get(part):
            kind = "Policy rules" if part == "policy" else "Checked by"
            text += f" {kind}: {_rules_text(by_part[part])}."
        entry: dict[str, Any] = {
            "component-uuid": _uuid(site, "component", "part", part),
            "uuid": _uuid(site, "by-component", control_id, part),
            "description": text,
            "implementation-status": {"state": "implemented"},
        }
        if implementation:
            entry["responsible-roles"] = [{"role-id": r} for r in implementation.roles]
        out.append(entry)
    return out


def _requirement(
    plan: SitePlan, control_id: str, implementation: Implementation | None, control: Control | None
) -> dict[str, Any]:
    props = [prop("in-moderate-baseline", "yes" if control_id in MODERATE_BASELINE else "no")]
    if implementation and implementation.settings:
        props.append(prop("spec-settings", ", ".join(implementation.settings)))
    requirement: dict[str, Any] = {
        "uuid": _uuid(plan.name, "requirement", control_id),
        "control-id": oscal_control_id(control_id),
        "props": props,
    }
    if implementation:
        requirement["responsible-roles"] = [{"role-id": r} for r in implementation.roles]
    requirement["by-components"] = _by_components(plan, control_id, implementation, control)
    return requirement


def build_ssp(plan: SitePlan, report: AuditReport) -> dict[str, Any]:
    catalog = load_catalog()
    controls = {c.id: c for c in report.controls}
    ids = sorted({*IMPLEMENTATIONS, *controls}, key=sort_key)
    ids = [i for i in ids if catalog.get(i) is not None]  # an id outside the catalog cannot be planned
    requirements = [_requirement(plan, i, IMPLEMENTATIONS.get(i), controls.get(i)) for i in ids]
    site = plan.name
    resource = catalog_resource(catalog)
    metadata = {
        "title": one_line(f"System Security Plan: {site}"),
        "last-modified": report.generated,
        "version": plan.spec_digest,
        "oscal-version": OSCAL_VERSION,
        "props": [prop("classification", report.classification)],
        "links": [{"href": f"#{resource['uuid']}", "rel": "reference", "text": "the control catalog"}],
        "roles": [{"id": role, "title": title} for role, title in ROLES.items()],
        "remarks": "Generated by aifactory from the site spec and plan; the classification is the "
        "highest of any dataset or model the site holds.",
    }
    return {
        "system-security-plan": {
            "uuid": _uuid(site, "ssp", plan.spec_digest, report.generated),
            "metadata": metadata,
            "import-profile": {"href": PROFILE_FILE},
            "system-characteristics": _characteristics(plan, report),
            "system-implementation": {
                "users": _users(plan),
                "components": _components(plan, report),
            },
            "control-implementation": {
                "description": "How aifactory implements each control of the moderate baseline profile it "
                "addresses, and the further controls its policies and checks enforce.",
                "implemented-requirements": requirements,
            },
            "back-matter": {"resources": [resource]},
        }
    }
