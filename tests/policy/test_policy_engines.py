"""The two backends decide alike: the same sites and requests through the embedded engine and OPA.

No `opa` binary can be installed here, so the OPA backend talks (through opa-python-client, over
real HTTP) to a loopback server speaking OPA's REST API over the embedded engine: that checks the
backend's upload, query and answer handling, not a second Rego implementation. Whenever an `opa`
binary is on the PATH the same cases also run against a real `opa run --server`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest
import requests
from waiting import wait_for

from aifactory.plan import plan_site
from aifactory.policy import RuntimeAuthorizer, check_site

from .conftest import LAB_SITE, NATIONAL_SITE, SiteWriter
from .opa_loopback import opa_loopback_server
from .test_policy_corpus import CASES

TODAY = dt.date(2026, 11, 22)
ANSWER_LIMIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _real_opa() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [shutil.which("opa") or "opa", "run", "--server", "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=0.2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(answers, what=f"opa to answer at {url}", timeout=5, every=0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["loopback", "opa-binary"])
def opa_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "loopback":
        with opa_loopback_server() as (url, _state):
            yield url
    else:
        if shutil.which("opa") is None:
            pytest.skip("no `opa` binary on the PATH (cannot be installed here)")
        yield from _real_opa()


def _decisions(report) -> list[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    return [(f.rule, f.resource, f.msg, f.status) for f in report.findings]


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CASES
        if c[0]
        in {
            "datacenter-abroad",
            "replica-abroad",
            "model-with-disjoint-training-data-stored-anywhere",
            "egress-on-air-gapped-site",
            "uncleared-grant-on-dataset",
            "export-to-bloc-wider-than-residency",
            "underclassified-model",
            "unencrypted-replica-of-confidential-store",
        }
    ],
    ids=lambda c: c[0],
)
def test_site_check_same_on_both_engines(opa_url: str, write_site: SiteWriter, case) -> None:  # type: ignore[no-untyped-def]
    planned = plan_site(write_site(case[1]))
    embedded = check_site(planned, today=TODAY)
    opa = check_site(planned, engine="opa", opa_url=opa_url, today=TODAY)
    assert opa.engine == "opa" and embedded.engine == "embedded"
    assert _decisions(opa) == _decisions(embedded) and _decisions(embedded)
    assert [c.as_dict() for c in opa.controls] == [c.as_dict() for c in embedded.controls]


def test_example_sites_same_on_both_engines(opa_url: str) -> None:
    for site in (LAB_SITE, NATIONAL_SITE):
        planned = plan_site(site, write_lock=False)
        opa = check_site(planned, engine="opa", opa_url=opa_url, today=TODAY)
        assert opa.findings == [] and not opa.denied


REQUESTS = list(
    itertools.product(
        ["health", "research", "nobody"],
        ["read", "train", "infer", "export"],
        ["dataset/vitals", "model/vitals-mlp", "model/none"],
        ["NG", "GH", None],
        [dt.date(2026, 1, 1), dt.date(2031, 1, 1)],
    )
)


def test_runtime_decisions_same_on_both_engines(opa_url: str) -> None:
    plan = plan_site(LAB_SITE, write_lock=False).plan
    # The answers are compared, not the speed: a limit no busy machine reaches (the runtime's own
    # limit is tested below and in test_policy_fail_closed.py).
    embedded = RuntimeAuthorizer(plan, time_limit_s=ANSWER_LIMIT_S)
    opa = RuntimeAuthorizer(plan, engine="opa", opa_url=opa_url, time_limit_s=ANSWER_LIMIT_S)
    for tenant, action, resource, country, today in REQUESTS:
        a = embedded.decide(tenant, action, resource, host_country=country, today=today)
        b = opa.decide(tenant, action, resource, host_country=country, today=today)
        assert (a.allow, a.reasons, a.controls) == (b.allow, b.reasons, b.controls), (
            tenant,
            action,
            resource,
        )
    assert {d for d in (embedded.decide(*r[:3], host_country=r[3], today=r[4]).allow for r in REQUESTS)} == {
        True,
        False,
    }


def test_a_slow_opa_server_still_loads_the_policies_but_a_slow_decision_is_denied() -> None:
    plan = plan_site(LAB_SITE, write_lock=False).plan
    with opa_loopback_server() as (url, state):
        state.delay_s = 0.2  # slower than a decision may take (0.05 s), well within loading's bound
        authz = RuntimeAuthorizer(plan, engine="opa", opa_url=url)  # uploads and compiles
        decision = authz.decide("health", "infer", "model/vitals-mlp", host_country="NG")
    assert (decision.allow, decision.reasons) == (False, ["engine-timeout"])


def test_loopback_server_really_answered() -> None:
    with opa_loopback_server() as (url, state):
        check_site(plan_site(LAB_SITE, write_lock=False), engine="opa", opa_url=url, today=TODAY)
        assert state.queries == 4  # one Data API query per site package
        assert any(p.endswith("locality.rego") for p in state.policies)
