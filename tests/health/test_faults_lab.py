"""The fault corpus on the deployed lab (issue 23; docs/health.md, "The fault corpus"): each real
fault made once on one compute host while the control host's continuous checks run (`aifactory
health --every`) and slurmd runs each node's own check (HealthCheckProgram): the faulty host is
drained with the fault's reason, no other host is drained, and once the fault is undone the host
comes back into service. A table of fault / host / reason / seconds to drain is printed.

Then the site storage is taken from every host at once: no more hosts are drained than the drain
budget, one incident names the storage, and serving goes on (the runtime's server on the host left
in service still answers).

Every fault is undone in `finally`, and the module ends with every node back in service."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import scaled, wait_for

from aifactory.lab import faults
from aifactory.lab.layout import LabLayout

pytestmark = [pytest.mark.lab, pytest.mark.slow]

CONTROL_EVERY_S = 10.0  # the control host's checks on the lab (a real site: 60 s, docs/health.md)
DRAIN_WITHIN_S = 60.0  # the bound from fault to drain, on an idle lab
BACK_WITHIN_S = 90.0
# Whether the runtime's server answers at all (any HTTP status, 401 included, over TLS or not).
SERVING_PROBE = """/usr/bin/python3 - <<'PY'
import ssl, urllib.error, urllib.request
context = ssl._create_unverified_context()
for url in ("https://ADDRESS:8600/healthz", "http://ADDRESS:8600/healthz"):
    try:
        urllib.request.urlopen(url, timeout=10, context=context)
        print("answered", url)
    except urllib.error.HTTPError:
        print("answered", url)
    except Exception as error:
        print("no", url, type(error).__name__)
PY
"""


@pytest.fixture(scope="module")
def watched(deployed_lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:  # noqa: ANN001
    """The control host's continuous checks running for the module; their JSON lines' file."""
    log = tmp_path_factory.mktemp("faults") / "control-checks.jsonl"
    process = faults.start_control_checks(str(deployed_lab.lab.spec), CONTROL_EVERY_S, log)
    try:
        wait_for(lambda: _runs(log), what="the control host's first continuous run", timeout=60)
        yield log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=scaled(120))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _runs(log: Path) -> list[dict[str, object]]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def _compute_hosts(deployed_lab) -> list[str]:  # noqa: ANN001
    return [h.name for h in deployed_lab.lab.plan.hosts if h.role in ("cpu", "gpu")]


def test_each_fault_drains_only_its_host_with_its_reason(deployed_lab, watched: Path, capsys) -> None:  # noqa: ANN001
    lab = deployed_lab.lab
    nodes = _compute_hosts(deployed_lab)
    target = next(h for h in lab.plan.hosts if h.name == nodes[0])
    corpus = faults.fault_corpus(lab.plan, target, LabLayout.for_site(lab.site))
    observed = []
    try:
        for fault in corpus:
            wait_for(
                lambda: faults.all_in_service(lab.site, nodes),
                what=f"every node in service before {fault.name}",
                timeout=BACK_WITHIN_S,
            )
            observed.append(
                faults.observe(
                    lab.site,
                    fault,
                    nodes,
                    drain_within_s=scaled(DRAIN_WITHIN_S) / 2,
                    back_within_s=scaled(BACK_WITHIN_S),
                )
            )
    finally:
        left = faults.undo_all(lab.site, corpus)
        with capsys.disabled():
            print("\n" + faults.table(observed))
    assert left == [], left
    wrong = [o for o in observed if not o.right or o.back_after_s is None]
    assert not wrong, "\n" + faults.table(wrong) + f"\ncontrol checks: {watched}"
    assert [o.fault.name for o in observed] == [f.name for f in corpus]


def test_storage_gone_everywhere_drains_no_more_than_the_budget(deployed_lab, watched: Path) -> None:  # noqa: ANN001
    """Every host loses the site storage at once: the lab's budget (one cpu host of two) is drained,
    the other stays in service and its runtime's server still answers, and the control host's runs
    raise one incident naming storage-mounted-rw."""
    lab = deployed_lab.lab
    nodes = _compute_hosts(deployed_lab)
    everywhere = faults.storage_gone_everywhere(lab.plan, LabLayout.for_site(lab.site))
    assert len(everywhere) == len(lab.plan.hosts)
    before = len(_runs(watched))
    try:
        for fault in everywhere:
            faults.inject(lab.site, fault)

        def incident() -> dict[str, object] | None:
            for run in _runs(watched)[before:]:
                if run.get("incident"):
                    return run
            return None

        run = wait_for(incident, what="an incident from the control host's runs", timeout=DRAIN_WITHIN_S)
        assert "storage-mounted-rw" in str(run["incident"]), run["incident"]
        states = faults.slurm_nodes(lab.site)
        drained = [n for n in nodes if states[n].drained_by_us]
        assert len(drained) == 1, states
        serving = next(h for h in lab.plan.hosts if h.name in nodes and h.name not in drained)
        probe = SERVING_PROBE.replace("ADDRESS", serving.management_address)
        answer = deployed_lab.ssh(serving.name, probe).stdout.split()
        assert "answered" in answer, f"the runtime's server on {serving.name} did not answer: {answer}"
        causes = [r["incident"]["cause"] for r in _runs(watched)[before:] if r.get("incident")]  # type: ignore[index]
        assert all("storage-mounted-rw" in cause for cause in causes), (
            f"every incident names the storage: {causes}"
        )
    finally:
        left = faults.undo_all(lab.site, everywhere)
        assert left == [], left
        wait_for(
            lambda: faults.all_in_service(lab.site, nodes),
            what="every node back in service once the storage is back",
            timeout=BACK_WITHIN_S,
        )
