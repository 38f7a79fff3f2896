"""The monitoring role's node facts script (playbooks/roles/monitoring/files/aifactory_node_facts.py),
the code its timer runs on every host: what it reads from Slurm's listings, certificates and
allowed_signers lines, and that its label values stay bounded.

Real parts: the script itself, run as the timer runs it (`python3 SCRIPT --out ...`) on certificates
from a real site CA; Slurm's listings are given as text in `scontrol show node --oneliner` and
`squeue --format=%T|%a` form (Slurm needs a running cluster; the lab test runs it against one).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from aifactory.trust.issuing.certs import ensure_site_ca
from aifactory.trust.tokens import TrustFiles

SCRIPT = (
    Path(__file__).resolve().parents[2]
    / "playbooks"
    / "roles"
    / "monitoring"
    / "files"
    / "aifactory_node_facts.py"
)

NODES = "\n".join(
    [
        "NodeName=gpu-001 Arch=x86_64 CPUAlloc=8 CPUTot=64 State=MIXED Gres=gpu:h100:8"
        " AllocTRES=cpu=8,gres/gpu=2 Reason=none",
        "NodeName=gpu-002 Arch=x86_64 CPUAlloc=0 CPUTot=64 State=IDLE+DRAIN Gres=gpu:h100:8 AllocTRES="
        " Reason=health: gpu 3 ecc errors [root@2026-12-02T01:00:00]",
        "NodeName=gpu-003 Arch=x86_64 CPUAlloc=4 CPUTot=64 State=MIXED+DRAIN Gres=gpu:8"
        " AllocTRES=cpu=4,gres/gpu:h100=1 Reason=maintenance [admin@2026-12-02T01:00:00]",
        "NodeName=cpu-001 Arch=x86_64 CPUAlloc=0 CPUTot=2 State=DOWN*+NOT_RESPONDING Gres=(null)"
        " Reason=Not responding [slurm@2026-12-02T01:00:00]",
    ]
)


@pytest.fixture(scope="module")
def facts() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aifactory_node_facts", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_node_states_drains_and_allocations(facts: ModuleType) -> None:
    lines = set(facts.slurm_lines(facts.parse_nodes(NODES), [("RUNNING", "health"), ("PENDING", "research")]))
    assert 'aifactory_slurm_node_state{node="gpu-001",state="mixed"} 1' in lines
    assert 'aifactory_slurm_node_state{node="gpu-002",state="drained"} 1' in lines
    assert 'aifactory_slurm_node_state{node="gpu-003",state="draining"} 1' in lines
    assert 'aifactory_slurm_node_state{node="cpu-001",state="down"} 1' in lines
    assert 'aifactory_slurm_node_drained{node="gpu-002",reason="health: gpu 3 ecc errors"} 1' in lines
    assert 'aifactory_slurm_node_drained{node="gpu-001",reason=""} 0' in lines
    assert 'aifactory_slurm_node_cpus{node="gpu-001",use="allocated"} 8' in lines
    assert 'aifactory_slurm_node_gpus{node="gpu-001",use="allocated"} 2' in lines
    assert 'aifactory_slurm_node_gpus{node="gpu-003",use="allocated"} 1' in lines
    assert 'aifactory_slurm_node_gpus{node="gpu-002",use="total"} 8' in lines
    assert 'aifactory_slurm_jobs{account="health",state="running"} 1' in lines


def test_label_values_do_not_grow_with_jobs_and_reasons_are_cut_short(facts: ModuleType) -> None:
    nodes = facts.parse_nodes(NODES.replace("maintenance", "x" * 500))
    few = facts.slurm_lines(nodes, [("RUNNING", "health")] * 3)
    many = facts.slurm_lines(nodes, [(("RUNNING", "PENDING")[n % 2], "health") for n in range(5000)])
    assert len(many) == len(few) + 1  # one more (state, account) pair, not one line per job
    drained = next(line for line in many if 'node="gpu-003"' in line and "drained{" in line)
    assert 'reason="' + "x" * facts.REASON_MAX + '"' in drained


def test_signing_keys_valid_before_in_utc_and_local_time(facts: ModuleType) -> None:
    text = (
        '# comment\nsite-tokens namespaces="aifactory-token",valid-before="20270102Z" ssh-ed25519 AAAA\n'
        "old-tokens valid-before=202701020304 ssh-ed25519 BBBB\nforever ssh-ed25519 CCCC\n"
    )
    found = dict(facts.signer_expiries(text))
    assert found["site-tokens"] == datetime(2027, 1, 2, tzinfo=UTC).timestamp()
    assert found["old-tokens"] == datetime(2027, 1, 2, 3, 4).timestamp()  # local time, as OpenSSH reads it
    assert "forever" not in found


def test_the_script_writes_certificate_expiry_as_the_timer_runs_it(tmp_path: Path) -> None:
    ca = ensure_site_ca(TrustFiles(tmp_path / "runtime"), site="facts")
    (tmp_path / "signers").write_text('ops valid-before="20300101Z" ssh-ed25519 AAAA\n')
    out = tmp_path / "aifactory.prom"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--certificate", str(ca.certificate)]
        + ["--certificate", str(tmp_path / "absent.pem"), "--signers", str(tmp_path / "signers")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    from cryptography import x509

    not_after = x509.load_pem_x509_certificate(ca.certificate.read_bytes()).not_valid_after_utc
    assert (
        f'aifactory_certificate_not_after_seconds{{file="{ca.certificate}"}} {not_after.timestamp():g}'
        in text
    )
    assert "absent.pem" not in text
    assert f'aifactory_signing_key_not_after_seconds{{file="{tmp_path / "signers"}",principal="ops"}}' in text
    assert datetime.now(UTC) + timedelta(days=365) < not_after
    assert "slurm" not in text  # --slurm only on the controller
    assert list(tmp_path.glob(".aifactory-facts-*")) == []  # written by rename, nothing left behind


def _manager(folder: Path, answer: str) -> Path:
    """A stand-in for the service manager (systemctl, or the lab's supervisor, whose `is-active` is
    tested in tests/lab): it records its arguments and prints `answer` as `is-active` would."""
    script = folder / "manager"
    script.write_text(f'#!/bin/sh\necho "$@" > {folder / "asked"}\nprintf "%s\\n" {answer}\nexit 3\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("failed inactive", ['{unit="check.service"} 1', '{unit="other.service"} 0', "answered 1"]),
        ("inactive active", ['{unit="check.service"} 0', '{unit="other.service"} 0', "answered 1"]),
        ("failed", ["answered 0"]),  # one word for two units: not read, nothing claimed
    ],
)
def test_the_script_exports_whether_each_units_last_run_failed(
    answer: str, expected: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "aifactory.prom"
    manager = _manager(tmp_path, answer)
    argv = [sys.executable, str(SCRIPT), "--out", str(out), "--service-manager", str(manager)]
    done = subprocess.run(argv + ["--unit", "check.service", "--unit", "other.service"], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "asked").read_text().split() == ["is-active", "--", "check.service", "other.service"]
    lines = [line for line in out.read_text().splitlines() if line.startswith("aifactory_unit")]
    assert lines == [
        ("aifactory_unit_failed" if item.startswith("{") else "aifactory_units_") + item for item in expected
    ]


def test_without_units_the_manager_is_not_asked(tmp_path: Path) -> None:
    out = tmp_path / "aifactory.prom"
    manager = _manager(tmp_path, "failed")
    argv = [sys.executable, str(SCRIPT), "--out", str(out), "--service-manager", str(manager)]
    assert subprocess.run(argv, capture_output=True).returncode == 0
    assert not (tmp_path / "asked").exists() and "aifactory_unit" not in out.read_text()
