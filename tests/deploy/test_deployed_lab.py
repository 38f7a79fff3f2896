"""The session's deployed lab (`deployed_lab`, tests/conftest.py), as every module that shares it meets
it: each host runs the session bundle, and a host a test breaks and restores is found as it was
(`drifted()` sees the break, and no longer sees it once the test restored the host).

Runs after tests/deploy/test_deploy_lab.py (tests/suite_order.py), which did the session's first deploy
on the same lab: the fixture's own deploy then only finds every host converged.
"""

from __future__ import annotations

import pytest
from waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SUPERVISOR = "/run/aifactory-lab/bin/aifactory-service"


def test_every_host_runs_the_session_bundle_and_matches_the_deploy(deployed_lab) -> None:  # noqa: ANN001
    lab, version = deployed_lab.lab, deployed_lab.bundle.version
    for host in lab.hosts:
        target = deployed_lab.ssh(host, "readlink /opt/aifactory/current").stdout.strip()
        assert target == f"/opt/aifactory/{version}", (host, target)
    assert deployed_lab.drifted() == {}


def test_the_probe_given_other_extra_vars_finds_no_host_converged(deployed_lab) -> None:  # noqa: ANN001
    """Extra variables are inputs of a deploy: a probe asked as a deploy with other ones would run
    (benchmarks/deploy_bench.py path probes as its deploys ran) runs every host; asked without, none."""
    drifted = deployed_lab.drifted({"slurm_health_check_interval": 0})
    assert sorted(drifted) == sorted(deployed_lab.lab.hosts), drifted
    assert all("inputs" in why for why in drifted.values()), drifted
    assert deployed_lab.drifted() == {}


def test_a_stopped_service_is_drift_until_the_test_restores_it(deployed_lab) -> None:  # noqa: ANN001
    host = deployed_lab.lab.hosts[0]
    deployed_lab.ssh(host, f"{SUPERVISOR} stop aifactory-serve")
    try:
        drifted = deployed_lab.drifted()
    finally:
        deployed_lab.ssh(host, f"{SUPERVISOR} start aifactory-serve")
    assert list(drifted) == [host] and "not running: aifactory-serve" in drifted[host], drifted
    wait_for(
        lambda: deployed_lab.ssh(host, f"{SUPERVISOR} status aifactory-serve", check=False).returncode == 0,
        what=f"aifactory-serve running again on {host}",
        timeout=30,
        every=0.5,
    )
    assert deployed_lab.drifted() == {}
