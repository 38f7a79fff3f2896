"""`aifactory provision`: the missing-CLI message, the policy gate, the outputs file, the provider's
pickle, the artifact files."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pulumi.dynamic.dynamic import serialize_provider

from aifactory.errors import (
    ExitCode,
    PolicyDenied,
    PrerequisiteError,
    ProvisionError,
    SecretError,
    SpecError,
)
from aifactory.plan import plan_site
from aifactory.provision.artifacts import ArtifactLogic, digest_of
from aifactory.provision.driver import ProvisionOptions, StackRun, automation_run, provision_site
from aifactory.provision.outputs import OUTPUTS_SCHEMA, read_outputs
from aifactory.provision.provider import BareMetalHostProvider
from aifactory.state import SiteState
from tests.provision.conftest import REPO

LAB = REPO / "inventory" / "lab" / "site.yaml"


def no_pulumi_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AIFACTORY_PULUMI_BIN"}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env["HOME"] = str(tmp_path)
    env["AIFACTORY_STATE_HOME"] = str(tmp_path / "state")
    return env


def test_provision_without_the_pulumi_cli_says_what_to_install_and_exits_3(tmp_path):
    aifactory = Path(sys.executable).parent / "aifactory"
    done = subprocess.run(
        [str(aifactory), "provision", str(LAB), "--preview"],
        capture_output=True,
        text=True,
        env=no_pulumi_env(tmp_path),
        timeout=120,
    )
    assert done.returncode == ExitCode.CANNOT_EVALUATE == 3
    assert "error[pulumi-cli-missing]: the pulumi CLI is not installed" in done.stderr
    assert "pulumi-v" in done.stderr and "/opt/pulumi on PATH" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "state" / "lab" / "provision").exists()  # nothing was started


def test_the_automation_apis_bare_file_not_found_is_wrapped(tmp_path):
    with pytest.raises(PrerequisiteError) as caught:
        automation_run(
            cli=tmp_path / "bin" / "pulumi",
            workdir=tmp_path,
            site="lab",
            backend=tmp_path,
            config={},
            secrets_passphrase_file=tmp_path / "pw",
            preview=True,
        )
    assert caught.value.code == "pulumi-cli-missing"


def _never(**_: Any) -> StackRun:
    raise AssertionError("the stack must not run")


def _fake_cli() -> Path:
    return Path("/bin/true")  # stands in for the pulumi CLI, which cannot be installed here


def denied_site(tmp_path: Path) -> Path:
    text = LAB.read_text().replace("    country: NG\n    region: NG-FC\n", "    country: DE\n")
    spec = tmp_path / "denied.yaml"
    spec.write_text(text.replace("name: lab\n", "name: denied\n", 1))
    return spec


def test_a_policy_deny_stops_before_any_resource(tmp_path):
    spec = denied_site(tmp_path)
    plan_site(spec)  # allocate and write its lock, as `aifactory plan` does
    planned = plan_site(spec, write_lock=False)
    state = SiteState.for_site("denied", home=tmp_path / "state")
    with pytest.raises(PolicyDenied) as caught:
        provision_site(planned, ProvisionOptions(), state=state, locate_cli=_fake_cli, runner=_never)
    assert caught.value.exit_code == ExitCode.INVALID
    assert any("locality" in p.code for p in caught.value.problems)
    assert not state.path("provision").exists()


def test_a_spec_its_lock_does_not_cover_is_refused(tmp_path):
    planned = plan_site(denied_site(tmp_path), write_lock=False)  # no lock beside it yet
    state = SiteState.for_site("denied", home=tmp_path / "state")
    with pytest.raises(SpecError) as caught:
        provision_site(planned, ProvisionOptions(), state=state, locate_cli=_fake_cli, runner=_never)
    assert caught.value.code == "allocation-lock-stale" and caught.value.exit_code == ExitCode.INVALID


def test_the_passphrase_is_required(tmp_path, monkeypatch):
    monkeypatch.delenv("AIFACTORY_PASSPHRASE_FILE", raising=False)
    planned = plan_site(LAB, write_lock=False)
    state = SiteState.for_site("lab", home=tmp_path / "state")
    with pytest.raises(SecretError):
        provision_site(planned, ProvisionOptions(), state=state, locate_cli=_fake_cli, runner=_never)


def test_missing_bmc_credentials_are_listed_before_the_stack_runs(tmp_path, monkeypatch):
    for name in ("AIFACTORY_SECRET_LAB_BMC_LAB_CPU_001", "AIFACTORY_SECRET_LAB_BMC_LAB_CPU_002"):
        monkeypatch.delenv(name, raising=False)
    passphrase = tmp_path / "pw"
    passphrase.write_text("correct horse battery staple\n")
    planned = plan_site(LAB, write_lock=False)
    state = SiteState.for_site("lab", home=tmp_path / "state")
    with pytest.raises(SecretError) as caught:
        provision_site(
            planned,
            ProvisionOptions(passphrase_file=passphrase),
            state=state,
            locate_cli=_fake_cli,
            runner=_never,
        )
    where = [p.location.path for p in caught.value.problems]
    assert where == ["hosts.lab-cpu-001.bmc", "hosts.lab-cpu-002.bmc"]


def test_an_apply_writes_the_outputs_file_and_keeps_the_partition_keys(tmp_path, monkeypatch):
    for name in ("AIFACTORY_SECRET_LAB_BMC_LAB_CPU_001", "AIFACTORY_SECRET_LAB_BMC_LAB_CPU_002"):
        monkeypatch.setenv(name, "admin:lab-test-credential")
    planned = plan_site(LAB, write_lock=False)
    state = SiteState.for_site("lab", home=tmp_path / "state")
    passphrase = tmp_path / "pw"
    passphrase.write_text("correct horse battery staple\n")
    seen: dict[str, Any] = {}

    def runner(**kwargs: Any) -> StackRun:
        """Stands in for the Pulumi engine (no CLI here); returns outputs shaped like the stack's."""
        seen.update(kwargs)
        host = {
            "state": "provisioned",
            "bmc": {"endpoint": "http://10.199.0.3:8000", "state": "reachable", "power_state": "On"},
            "system": {"uuid": "u1"},
            "boot": {"source": "pxe", "image": None, "reported": {"target": "Pxe"}},
            "inventory": {},
        }
        return StackRun(
            {"create": 9},
            {
                "hosts": {"lab-cpu-001": host},
                "fabrics": {},
                "storage": {},
                "pkeys": {"health": "0x5749", "research": "0x48f7"},
            },
        )

    result = provision_site(
        planned,
        ProvisionOptions(passphrase_file=passphrase, bmc={"scheme": "http", "port": 8000}),
        state=state,
        locate_cli=_fake_cli,
        runner=runner,
    )
    config = seen["config"]
    assert Path(config["planFile"]).read_text() == planned.plan.to_json()
    assert config["stateDir"] == str(state.root) and config["bmc"]["port"] == 8000
    assert seen["backend"] == state.path("provision", "backend") and seen["preview"] is False
    assert (seen["workdir"] / "Pulumi.yaml").exists() and (seen["workdir"] / "aifactory_stack").is_dir()
    document = read_outputs(state)
    assert result.outputs_path == state.path("provision", "outputs.json")
    assert document["schema"] == OUTPUTS_SCHEMA and document["plan_digest"] == planned.plan.digest()
    assert sorted(document["hosts"]) == ["lab-control-001", "lab-cpu-001", "lab-cpu-002"]
    assert document["hosts"]["lab-cpu-002"]["state"] == "not provisioned"
    assert oct(result.outputs_path.stat().st_mode & 0o777) == "0o600"
    registry = json.loads(state.path("provision", "pkeys.json").read_text())
    assert registry["tenants"] == {"health": "0x5749", "research": "0x48f7"}
    assert state.verify_operator_log().ok


def test_outputs_are_missing_until_provisioned(tmp_path):
    with pytest.raises(ProvisionError) as caught:
        read_outputs(SiteState.for_site("lab", home=tmp_path))
    assert caught.value.code == "provision-outputs-missing"


def test_the_pickled_provider_holds_no_credential_even_after_using_one():
    provider = BareMetalHostProvider(poll_interval=0.5)
    secret = "admin:never-pickled-9f3a"
    with pytest.raises(ProvisionError):  # nothing listens on port 9 of loopback
        provider.create(
            {
                "host": "h",
                "endpoint": "http://127.0.0.1:9",
                "credentials": secret,
                "credentials_ref": "secret://bmc/h",
                "boot": {"source": "pxe"},
            }
        )
    raw = base64.b64decode(serialize_provider(provider))
    assert b"never-pickled" not in raw and b"admin:" not in raw


def test_artifact_files_are_written_diffed_and_removed(tmp_path):
    props = {
        "directory": str(tmp_path / "fabrics"),
        "name": "compute.partitions.conf",
        "content": "Default=0x7fff : ALL=full ;\n",
    }
    props["digest"] = digest_of(props["content"])
    logic = ArtifactLogic()
    outs = logic.write(props)
    assert Path(outs["path"]).read_text() == props["content"]
    assert logic.diff(outs, props) == []
    Path(outs["path"]).write_text("edited by hand\n")
    assert logic.diff(outs, props) == ["digest"]  # drift on disk shows in the preview
    logic.remove(outs)
    assert not Path(outs["path"]).exists()
    with pytest.raises(ProvisionError):
        logic.write({**props, "digest": "sha256:0"})
