"""The stack's resource graph under pulumi.runtime.Mocks (no pulumi CLI and no engine needed).

The mocks echo inputs as outputs; what is checked is the graph the program declares: one
BareMetalHost per planned host with a BMC, each parented to its pool's component, fabric artifacts
with one partition per tenant, storage artifacts, the BMC credential a secret, and no credential
inside any pickled provider.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pulumi
import pytest
import yaml

from aifactory.plan.model import SitePlan
from aifactory.provision.partitions import parse_partitions_conf
from aifactory.secrets import env_name
from tests.provision.conftest import REPO, planned_copy

CREDENTIAL = "admin:pa55-word-never-in-state"


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


@pytest.fixture
def mocks() -> Iterator[RecordingMocks]:
    # Pulumi's mocks run on the thread's current event loop; a test that ran asyncio.run() earlier in
    # the session leaves none set (Python 3.11 then refuses get_event_loop()): give them their own.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    recorder = RecordingMocks()
    pulumi.runtime.set_mocks(recorder, preview=False)
    try:
        yield recorder
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, lab_plan: SitePlan, ib_plan: SitePlan) -> None:
    for plan in (lab_plan, ib_plan):
        for host in plan.hosts:
            if host.bmc:
                monkeypatch.setenv(env_name(host.bmc.credentials), CREDENTIAL)


def build(plan_file: Path, state_dir: Path):
    from aifactory_stack.settings import read_settings
    from aifactory_stack.site import build_site

    settings = read_settings(plan_file=plan_file, state_dir=state_dir, bmc={"scheme": "http", "port": 8000})
    return build_site(settings)


def registered(site) -> pulumi.Output:
    """Resolves once every resource of the site is registered with the mocks (a custom resource's
    id comes back from the mocks' new_resource)."""
    components = [*site.pools.values(), *site.fabrics.values(), *site.storage.values()]
    custom = [h for p in site.pools.values() for h in p.hosts.values()]
    custom += [a for c in [*site.fabrics.values(), *site.storage.values()] for a in c.artifacts.values()]
    return pulumi.Output.all(*[r.urn for r in components], *[r.id for r in custom])


def host_urns(site) -> pulumi.Output:
    return pulumi.Output.all(*[h.urn for p in site.pools.values() for h in p.hosts.values()])


def artifact_urns(site) -> pulumi.Output:
    return pulumi.Output.all(
        *[a.urn for c in [*site.fabrics.values(), *site.storage.values()] for a in c.artifacts.values()]
    )


def assert_artifacts_parented(urns: list[str]) -> None:
    """Each artifact's URN carries its component's type: the parent is set."""
    assert urns
    for urn in urns:
        assert (
            "::aifactory:network:Fabric$pulumi-python:dynamic/artifacts:Artifact::" in urn
            or "::aifactory:storage:StoragePool$pulumi-python:dynamic/artifacts:Artifact::" in urn
        ), urn


def _check_graph(mocks: RecordingMocks, plan: SitePlan, site) -> None:
    hosts = mocks.of_type("pulumi-python:dynamic/compute:BareMetalHost")
    with_bmc = sorted(h.name for h in plan.hosts if h.bmc)
    assert sorted(r.name for r in hosts) == with_bmc
    pools = {r.name: r for r in mocks.of_type("aifactory:compute:GpuNodePool")}
    assert sorted(pools) == sorted(f"{plan.site.name}-{p.name}" for p in plan.pools)
    assert len(mocks.of_type("aifactory:network:Fabric")) == len(plan.fabrics)
    assert len(mocks.of_type("aifactory:storage:StoragePool")) == len(plan.storage)
    for component in [*site.fabrics.values(), *site.storage.values()]:
        assert component.artifacts


def _check_no_credential_in_providers(mocks: RecordingMocks) -> None:
    serialized = [r.inputs["__provider"] for r in mocks.resources if "__provider" in r.inputs]
    assert serialized, "no dynamic provider was serialized"
    for blob in serialized:
        raw = base64.b64decode(blob)
        assert CREDENTIAL.encode() not in raw
        assert b"pa55-word" not in raw


@pulumi.runtime.test
def test_lab_graph(mocks, credentials, lab_plan_file, lab_plan, tmp_path):
    site = build(lab_plan_file, tmp_path)
    host = site.pools["cpu"].hosts["lab-cpu-001"]

    def check(values):
        endpoint, is_secret, control, cpu, _, urns, artifacts = values
        assert_artifacts_parented(artifacts)
        # parents set: the URN of each host carries its pool component's type
        assert urns and all(
            "::aifactory:compute:GpuNodePool$pulumi-python:dynamic/compute:BareMetalHost::" in urn
            for urn in urns
        )
        _check_graph(mocks, lab_plan, site)
        _check_no_credential_in_providers(mocks)
        record = next(
            r for r in mocks.of_type("pulumi-python:dynamic/compute:BareMetalHost") if r.name == "lab-cpu-001"
        )
        assert record.inputs["credentials_ref"] == "secret://lab/bmc/lab-cpu-001"
        assert record.inputs["expect"]["cpus"] == 2
        assert endpoint == "http://10.199.0.3:8000"
        assert is_secret is True  # the credential is a Pulumi secret (encrypted in state)
        assert control["lab-control-001"]["state"].startswith("unmanaged")
        assert cpu["lab-cpu-001"]["bmc"]["endpoint"] == endpoint
        assert CREDENTIAL not in json.dumps(cpu)  # outputs never carry the credential

    return pulumi.Output.all(
        host.endpoint,
        pulumi.Output.from_input(host.credentials.is_secret()),
        site.pools["control"].outputs,
        site.pools["cpu"].outputs,
        registered(site),
        host_urns(site),
        artifact_urns(site),
    ).apply(check)


@pulumi.runtime.test
def test_ib_site_graph_and_partitions(mocks, credentials, ib_plan_file, ib_plan, tmp_path):
    site = build(ib_plan_file, tmp_path)
    return pulumi.Output.all(registered(site), artifact_urns(site)).apply(
        lambda v: (assert_artifacts_parented(v[1]), _check_ib(mocks, ib_plan, site))
    )


def _check_ib(mocks: RecordingMocks, ib_plan: SitePlan, site) -> None:
    _check_graph(mocks, ib_plan, site)
    _check_no_credential_in_providers(mocks)
    records = mocks.of_type("pulumi-python:dynamic/artifacts:Artifact")
    artifacts = {r.inputs["name"]: r.inputs for r in records}
    partitions = parse_partitions_conf(artifacts["compute.partitions.conf"]["content"])
    assert sorted(p.name for p in partitions) == ["Default", "t_health", "t_public_data", "t_research"]
    assert artifacts["compute.partitions.conf"]["complete"] is False  # no facts: the file says so
    assert next(p for p in partitions if p.name == "t_health").members == ()  # no GUIDs, no members
    roce = yaml.safe_load(artifacts["storage.fabric.yaml"]["content"])
    assert (roce["vlan"], roce["mtu"], roce["qos"]["pfc"]["enabled"]) == (130, 9000, True)
    lake = yaml.safe_load(artifacts["lake.storage.yaml"]["content"])
    assert [e["name"] for e in lake["filesets"]] == ["open-corpus", "patient-records", "triage-llm"]
    assert lake["replicas"][0]["storage"] == "lake-dr"
    assert set(site.fabrics["compute"].outputs["partitions"]) == {"health", "public-data", "research"}


@pytest.mark.slow
def test_national_example(mocks, monkeypatch, tmp_path):
    spec = REPO / "inventory" / "examples" / "national" / "site.yaml"
    if not spec.exists():
        pytest.skip("inventory/examples/national/site.yaml is not in the repository yet (spec engineer)")
    plan_file = planned_copy(spec, tmp_path / "plan")
    plan = SitePlan.load(plan_file)
    for host in plan.hosts:
        if host.bmc:
            monkeypatch.setenv(env_name(host.bmc.credentials), CREDENTIAL)

    @pulumi.runtime.test
    def run():
        site = build(plan_file, tmp_path / "state")
        return pulumi.Output.all(registered(site), artifact_urns(site)).apply(
            lambda v: (
                assert_artifacts_parented(v[1]),
                _check_graph(mocks, plan, site),
                _check_no_credential_in_providers(mocks),
            )
        )

    run()


@pulumi.runtime.test
def test_the_program_reads_its_config_once_and_composes_the_site(mocks, credentials, lab_plan_file, tmp_path):
    """stacks/__main__.py and config.py, run as the Pulumi CLI would run them (config set, mocks)."""
    import runpy

    from tests.provision.conftest import STACKS

    pulumi.runtime.set_all_config(
        {
            "aifactory:planFile": str(lab_plan_file),
            "aifactory:stateDir": str(tmp_path),
            "aifactory:bmc": json.dumps({"scheme": "http", "port": 8000, "power_timeout": 30}),
            "aifactory:boot": json.dumps({"source": "pxe", "image": None}),
            "aifactory:pkeys": json.dumps({"health": "0x0042"}),
        }
    )
    try:
        program = runpy.run_path(str(STACKS / "__main__.py"), run_name="__main__")
    finally:
        pulumi.runtime.set_all_config({})

    def check(_):
        hosts = mocks.of_type("pulumi-python:dynamic/compute:BareMetalHost")
        assert sorted(r.name for r in hosts) == ["lab-cpu-001", "lab-cpu-002"]
        assert {r.inputs["power_timeout"] for r in hosts} == {30}
        assert {r.inputs["endpoint"] for r in hosts} == {"http://10.199.0.3:8000", "http://10.199.0.4:8000"}

    return registered(program["site"]).apply(check)
