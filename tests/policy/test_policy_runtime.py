"""Per-request decisions: reasons and controls, the compiled fast path, threads."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from aifactory.plan import SitePlan, plan_site
from aifactory.policy import RuntimeAuthorizer

from .conftest import LAB_SITE
from .test_policy_engines import REQUESTS

DAY = dt.date(2026, 11, 22)


@pytest.fixture(scope="module")
def plan() -> SitePlan:
    return plan_site(LAB_SITE, write_lock=False).plan


@pytest.fixture(scope="module")
def authz(plan: SitePlan) -> RuntimeAuthorizer:
    return RuntimeAuthorizer(plan)


@pytest.mark.parametrize(
    ("tenant", "action", "resource", "country", "allow", "reasons", "controls"),
    [
        ("health", "infer", "model/vitals-mlp", "NG", True, [], ["AC-3"]),
        ("health", "train", "dataset/vitals", "NG", True, [], ["AC-3"]),
        ("health", "export", "model/vitals-mlp", "NG", True, [], ["AC-3"]),
        ("health", "infer", "model/vitals-mlp", "GH", False, ["outside-residency"], ["AC-4"]),
        ("health", "export", "model/vitals-mlp", "GH", False, ["outside-residency"], ["AC-4"]),
        ("health", "infer", "model/vitals-mlp", None, False, ["host-country-unknown"], ["AC-4"]),
        (
            "research",
            "read",
            "dataset/vitals",
            "NG",
            False,
            ["clearance-below-classification", "no-grant"],
            ["AC-3", "AC-3(3)"],
        ),
        ("nobody", "read", "dataset/vitals", "NG", False, ["no-grant", "unknown-tenant"], ["AC-3", "IA-2"]),
        ("health", "read", "dataset/missing", "NG", False, ["unknown-resource"], ["AC-3"]),
        ("health", "export", "dataset/vitals", "NG", False, ["no-grant", "unknown-action"], ["AC-3"]),
    ],
)
def test_lab_decisions(
    authz: RuntimeAuthorizer,
    tenant: str,
    action: str,
    resource: str,
    country: str | None,
    allow: bool,
    reasons: list[str],
    controls: list[str],
) -> None:
    decision = authz.decide(tenant, action, resource, host_country=country, today=DAY)
    assert (decision.allow, decision.reasons, decision.controls) == (allow, reasons, controls)
    assert (decision.tenant, decision.action, decision.resource) == (tenant, action, resource)
    assert len(decision.decision_id) == 32


def test_export_grant_expires(authz: RuntimeAuthorizer) -> None:
    assert authz.decide(
        "health", "export", "model/vitals-mlp", host_country="NG", today=dt.date(2030, 12, 31)
    ).allow
    late = authz.decide("health", "export", "model/vitals-mlp", host_country="NG", today=dt.date(2031, 1, 1))
    assert (late.allow, late.reasons, late.controls) == (False, ["grant-expired"], ["AC-2(3)"])


def test_decision_ids_are_unique(authz: RuntimeAuthorizer) -> None:
    ids = {
        authz.decide("health", "infer", "model/vitals-mlp", host_country="NG").decision_id for _ in range(50)
    }
    assert len(ids) == 50


def test_compiled_fast_path_matches_the_interpreter(plan: SitePlan, authz: RuntimeAuthorizer) -> None:
    """The regorus RVM (compiled) and the regorus interpreter answer every request alike."""
    interpreted = RuntimeAuthorizer(plan)
    interpreted.backend.fast_paths = ()  # type: ignore[attr-defined]
    assert authz.backend.program() is not None  # type: ignore[attr-defined]
    for tenant, action, resource, country, today in REQUESTS:
        a = authz.decide(tenant, action, resource, host_country=country, today=today)
        b = interpreted.decide(tenant, action, resource, host_country=country, today=today)
        assert (a.allow, a.reasons) == (b.allow, b.reasons), (tenant, action, resource, country, today)


def test_one_authorizer_serves_many_threads(authz: RuntimeAuthorizer) -> None:
    expected = {r: authz.decide(r[0], r[1], r[2], host_country=r[3], today=r[4]).allow for r in REQUESTS}
    failures: list[str] = []

    def worker(offset: int) -> None:
        for request in REQUESTS[offset::4]:
            got = authz.decide(request[0], request[1], request[2], host_country=request[3], today=request[4])
            if got.allow != expected[request] or "engine-error" in got.reasons:
                failures.append(f"{request}: {got}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_authorizer_reads_a_bundle_plan_json(plan: SitePlan) -> None:
    import json

    authz = RuntimeAuthorizer(SitePlan.from_dict(json.loads(plan.to_json())))
    assert authz.decide("health", "infer", "model/vitals-mlp", host_country="NG").allow
