"""Two hosts, one job: each host is a network namespace whose only link is the compute fabric (the
plan's compute addresses on an interface named as the plan's GLOO_SOCKET_IFNAME says), and
`aifactory-train` on each rendezvouses over it. This is the lab's 2-host test without deploy: the
namespaces are made here (root, iproute2), and share this machine's files as NFS would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_for

from .conftest import RuntimeSite, write_job

pytestmark = [pytest.mark.lab, pytest.mark.slow]
HOSTS = {"rtlab-cpu-001": "10.201.0.2", "rtlab-cpu-002": "10.201.0.3"}  # the plan's compute addresses


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture()
def namespaces(site: RuntimeSite) -> Iterator[dict[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    plan = json.loads(site.plan_path.read_text())
    for host in plan["hosts"]:
        if host["name"] in HOSTS:
            assert host["compute_address"] == HOSTS[host["name"]]
            interface = host["nccl"]["GLOO_SOCKET_IFNAME"]
    names = {host: f"aifrt{os.getpid() % 100000}-{i}" for i, host in enumerate(HOSTS)}
    peers = [f"rtv{os.getpid() % 100000}{i}" for i in range(2)]
    try:
        for namespace in names.values():
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", peers[0], "type", "veth", "peer", "name", peers[1])
        for peer, (host, namespace) in zip(peers, names.items(), strict=True):
            _ip("link", "set", peer, "netns", namespace)
            _ip("-n", namespace, "link", "set", peer, "name", interface)
            _ip("-n", namespace, "addr", "add", f"{HOSTS[host]}/24", "dev", interface)
            _ip("-n", namespace, "link", "set", interface, "up")
        yield names
    finally:
        for namespace in names.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


def test_a_job_trains_across_two_hosts_over_their_compute_addresses(
    site: RuntimeSite, tmp_path: Path, namespaces: dict[str, str]
) -> None:
    job = write_job(
        site,
        tmp_path,
        name="two-hosts",
        hosts=list(HOSTS),
        processes_per_host=1,
        train={"steps": 30, "global_batch": 64, "learning_rate": 0.01, "checkpoint_every": 10},
    )
    env = {k: v for k, v in os.environ.items() if k != "AIFACTORY_TOKEN"}
    logs = [tmp_path / f"node-{rank + 1}.log" for rank in range(len(namespaces))]
    sinks = [log.open("w") for log in logs]
    launches = [
        subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "aifactory.runtime.train_cli"]
            + [str(job), "--host", host],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for (host, namespace), sink in zip(namespaces.items(), sinks, strict=True)
    ]

    def both_done_or_one_failed() -> bool:
        codes = [launch.poll() for launch in launches]
        return all(code is not None for code in codes) or any(code not in (None, 0) for code in codes)

    try:
        wait_for(
            both_done_or_one_failed,
            what="both nodes to finish training",
            timeout=120,
            every=0.5,
            detail=lambda: "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs),
        )
    finally:
        for launch in launches:  # a node whose peer failed would wait out the rendezvous: stop it
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
        for sink in sinks:
            sink.close()
    outputs = [log.read_text() for log in logs]
    assert [launch.returncode for launch in launches] == [0, 0], "\n".join(outputs)
    assert "node 1 of 2" in outputs[0] and "node 2 of 2" in outputs[1]
    metrics = [
        json.loads(line)
        for line in (tmp_path / "storage/srv/share/models/vitals-mlp/runs/two-hosts/metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    assert {m["world_size"] for m in metrics} == {2} and len(metrics) == 30
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    records = [json.loads(line) for line in (site.runtime_dir / "decisions.jsonl").read_text().splitlines()]
    hosts_allowed = {r["host"] for r in records if r["request"].get("job") == "two-hosts" and r["allow"]}
    assert hosts_allowed == set(HOSTS)  # each host decided for itself before reading
