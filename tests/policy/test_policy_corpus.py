"""A corpus of sites, each breaking exactly one rule: each gets exactly that finding, nothing else.

Every case starts from the lab site (which passes) and changes only what is needed to break one
rule; some first widen the jurisdiction to ECOWAS so a second datacenter (in GH) is lawful.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from aifactory.plan import plan_site
from aifactory.policy import check_site

from .conftest import NATIONAL_SITE, SiteWriter

Spec = dict[str, Any]
TODAY = dt.date(2026, 11, 22)


def ecowas(spec: Spec) -> None:
    """Jurisdiction ECOWAS with a second datacenter in GH holding an encrypted S3 store and a pool."""
    spec["site"]["jurisdiction"] = "ECOWAS"
    spec["datacenters"].append({"name": "dc2", "country": "GH"})
    spec["storage"].append(
        {"name": "ghstore", "kind": "s3", "datacenter": "dc2", "capacity_tib": 1, "encrypted_at_rest": True}
    )


def gh_pool(spec: Spec) -> None:
    spec["node_pools"].append(
        {
            "name": "ghcpu",
            "role": "cpu",
            "count": 1,
            "datacenter": "dc2",
            "hardware": {"cpus": 2, "memory_gib": 4},
            "fabrics": ["mgmt"],
        }
    )


def grant(spec: Spec, tenant: str, resource: str, actions: list[str], **extra: Any) -> None:
    spec["access"].append({"tenant": tenant, "resource": resource, "actions": actions, **extra})


def dataset(spec: Spec, name: str, **fields: Any) -> None:
    spec["datasets"].append(
        {
            "name": name,
            "owner": "health",
            "classification": "internal",
            "residency": "NG",
            "storage": "share",
            "path": f"/datasets/{name}",
            **fields,
        }
    )


def model(spec: Spec, **fields: Any) -> None:
    spec["models"][0].update(fields)


def storage(spec: Spec, name: str, **fields: Any) -> None:
    spec["storage"].append(
        {
            "name": name,
            "kind": "s3",
            "datacenter": "dc1",
            "capacity_tib": 1,
            "encrypted_at_rest": True,
            **fields,
        }
    )


def egress(name: str, country: str, *, connected: bool = False) -> Callable[[Spec], None]:
    """Declare an egress endpoint (and, when `connected`, make the site connected)."""

    def change(spec: Spec) -> None:
        spec["site"]["air_gapped"] = not connected
        spec["egress"]["allow"].append({"name": name, "endpoint": f"{name}.example:443", "country": country})

    return change


def without_loop(spec: Spec) -> None:
    """The lab without its loop and the loop's held-out dataset (a second dataset on the share, which
    a change to the share would otherwise break the rule for as well)."""
    held_out = {entry["evaluation"]["dataset"] for entry in spec.pop("loop")}
    spec["datasets"] = [d for d in spec["datasets"] if d["name"] not in held_out]


def _steps(*steps: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        for step in steps:
            step(spec)

    return change


# (case id, change, rule, controls, resource)
CASES: list[tuple[str, Callable[[Spec], None], str, list[str], str]] = [
    (
        "datacenter-abroad",
        lambda s: s["datacenters"].append({"name": "dc2", "country": "FR"}),
        "locality.datacenter_outside_jurisdiction",
        ["SA-9(5)"],
        "datacenter/dc2",
    ),
    (
        "datacenter-abroad-with-hosts",
        _steps(
            lambda s: s["datacenters"].append({"name": "dc2", "country": "US"}),
            lambda s: s["node_pools"].append(
                {
                    "name": "far",
                    "role": "cpu",
                    "count": 2,
                    "datacenter": "dc2",
                    "hardware": {"cpus": 2, "memory_gib": 4},
                    "fabrics": ["mgmt"],
                }
            ),
        ),
        "locality.datacenter_outside_jurisdiction",
        ["SA-9(5)"],
        "datacenter/dc2",
    ),
    (
        "datacenter-outside-bloc-jurisdiction",
        _steps(ecowas, lambda s: s["datacenters"].append({"name": "dc3", "country": "FR"})),
        "locality.datacenter_outside_jurisdiction",
        ["SA-9(5)"],
        "datacenter/dc3",
    ),
    (
        "dataset-on-foreign-storage",
        _steps(ecowas, lambda s: s["datasets"][0].update(storage="ghstore")),
        "locality.dataset_outside_residency",
        ["AC-4"],
        "dataset/vitals",
    ),
    (
        "second-dataset-outside-residency",
        lambda s: dataset(s, "survey", residency="GH"),
        "locality.dataset_outside_residency",
        ["AC-4"],
        "dataset/survey",
    ),
    (
        "replica-abroad",
        _steps(
            ecowas,
            without_loop,
            lambda s: storage(s, "models"),
            lambda s: model(s, storage="models"),
            lambda s: s["storage"][0].update(replicas=["ghstore"]),
        ),
        "locality.dataset_replica_outside_residency",
        ["AC-4"],
        "dataset/vitals",
    ),
    (
        "model-stored-outside-residency",
        _steps(ecowas, lambda s: model(s, storage="ghstore")),
        "locality.model_stored_outside_residency",
        ["AC-4"],
        "model/vitals-mlp",
    ),
    (
        "model-replica-outside-residency",
        _steps(
            ecowas, lambda s: storage(s, "models", replicas=["ghstore"]), lambda s: model(s, storage="models")
        ),
        "locality.model_stored_outside_residency",
        ["AC-4"],
        "model/vitals-mlp",
    ),
    (
        "model-with-disjoint-training-data-stored-anywhere",
        _steps(
            ecowas,
            lambda s: dataset(s, "weather", residency="GH", storage="ghstore"),
            lambda s: model(s, trained_on=["vitals", "weather"], serve_on=[]),
            lambda s: s["access"].clear(),
        ),
        "locality.model_stored_outside_residency",
        ["AC-4"],
        "model/vitals-mlp",
    ),
    (
        "model-served-outside-residency",
        _steps(ecowas, gh_pool, lambda s: model(s, serve_on=["cpu", "ghcpu"])),
        "locality.model_served_outside_residency",
        ["AC-4"],
        "model/vitals-mlp",
    ),
    (
        "egress-on-air-gapped-site",
        egress("ntp", "NG"),
        "egress.endpoint_on_air_gapped_site",
        ["SC-7"],
        "egress/ntp",
    ),
    (
        "egress-abroad-on-connected-site",
        egress("mirror", "DE", connected=True),
        "egress.endpoint_outside_jurisdiction",
        ["SC-7", "AC-4"],
        "egress/mirror",
    ),
    (
        "egress-outside-bloc-jurisdiction",
        _steps(ecowas, egress("ntp", "US", connected=True)),
        "egress.endpoint_outside_jurisdiction",
        ["SC-7", "AC-4"],
        "egress/ntp",
    ),
    (
        "uncleared-grant-on-dataset",
        lambda s: grant(s, "research", "dataset/vitals", ["read"]),
        "access.grant_uncleared",
        ["AC-3(3)"],
        "access/research/dataset/vitals",
    ),
    (
        "uncleared-grant-on-model",
        lambda s: grant(s, "research", "model/vitals-mlp", ["infer"], expires="2030-01-01"),
        "access.grant_uncleared",
        ["AC-3(3)"],
        "access/research/model/vitals-mlp",
    ),
    (
        "uncleared-grant-to-public-tenant",
        _steps(
            lambda s: s["tenants"].append({"name": "audit", "clearance": "public"}),
            lambda s: grant(s, "audit", "model/vitals-mlp", ["read"]),
        ),
        "access.grant_uncleared",
        ["AC-3(3)"],
        "access/audit/model/vitals-mlp",
    ),
    (
        "uncleared-dataset-owner",
        lambda s: dataset(s, "notes", owner="research", classification="confidential"),
        "access.owner_uncleared",
        ["AC-3(3)"],
        "dataset/notes",
    ),
    (
        "uncleared-model-owner",
        _steps(
            lambda s: s["access"].clear(),
            lambda s: model(s, classification="secret"),
            lambda s: s["tenants"][0].update(clearance="confidential"),
        ),
        "access.owner_uncleared",
        ["AC-3(3)"],
        "model/vitals-mlp",
    ),
    (
        "export-outside-residency",
        _steps(ecowas, lambda s: s["access"][0].update(to="GH")),
        "access.export_outside_residency",
        ["AC-4"],
        "access/health/model/vitals-mlp",
    ),
    (
        "export-to-bloc-wider-than-residency",
        _steps(ecowas, lambda s: s["access"][0].update(to="ECOWAS")),
        "access.export_outside_residency",
        ["AC-4"],
        "access/health/model/vitals-mlp",
    ),
    (
        "underclassified-model",
        lambda s: model(s, classification="internal"),
        "access.model_underclassified",
        ["AC-16"],
        "model/vitals-mlp",
    ),
    (
        "public-model-from-confidential-data",
        lambda s: model(s, classification="public"),
        "access.model_underclassified",
        ["AC-16"],
        "model/vitals-mlp",
    ),
    (
        "unencrypted-store-with-confidential-data",
        lambda s: s["storage"][0].update(encrypted_at_rest=False),
        "encryption.unencrypted_storage",
        ["SC-28(1)"],
        "storage/share",
    ),
    (
        "unencrypted-store-with-confidential-model",
        _steps(lambda s: storage(s, "models", encrypted_at_rest=False), lambda s: model(s, storage="models")),
        "encryption.unencrypted_storage",
        ["SC-28(1)"],
        "storage/models",
    ),
    (
        "unencrypted-replica-of-confidential-store",
        _steps(
            lambda s: storage(s, "dr", encrypted_at_rest=False),
            lambda s: s["storage"][0].update(replicas=["dr"]),
        ),
        "encryption.unencrypted_replica",
        ["SC-28(1)"],
        "storage/dr",
    ),
    (
        "unencrypted-replica-of-model-store",
        _steps(
            lambda s: storage(s, "dr", encrypted_at_rest=False),
            lambda s: storage(s, "models", replicas=["dr"]),
            lambda s: model(s, storage="models"),
        ),
        "encryption.unencrypted_replica",
        ["SC-28(1)"],
        "storage/dr",
    ),
]


@pytest.mark.parametrize(("case", "change", "rule", "controls", "resource"), CASES, ids=[c[0] for c in CASES])
def test_site_breaking_one_rule_gets_exactly_that_finding(
    write_site: SiteWriter,
    case: str,
    change: Callable[[Spec], None],
    rule: str,
    controls: list[str],
    resource: str,
) -> None:
    report = check_site(plan_site(write_site(change)), today=TODAY)
    got = [(f.rule, f.controls, f.resource, f.status) for f in report.findings]
    assert got == [(rule, controls, resource, "fail")]
    assert report.denied
    failing = {c.id for c in report.controls if c.status == "fail"}
    assert failing == set(controls)


def test_corpus_breaks_every_site_rule(policies) -> None:  # type: ignore[no-untyped-def]
    site_rules = {rule for rule, a in policies.rules.items() if a.package in policies.deny_packages()}
    assert {case[2] for case in CASES} == site_rules
    assert len(CASES) >= 25


@pytest.mark.parametrize("site", ["lab", "national"])
def test_example_sites_pass(write_site: SiteWriter, site: str) -> None:
    path = write_site() if site == "lab" else NATIONAL_SITE
    report = check_site(plan_site(path, write_lock=False), today=TODAY)
    assert report.findings == [] and report.waiver_problems == []
    assert not report.denied
    assert report.controls and all(c.status == "pass" for c in report.controls)
