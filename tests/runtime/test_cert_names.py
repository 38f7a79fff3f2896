"""Names in `aifactory token cert` become file names in the output folder: only DNS names (server)
and tenant names are accepted, so `--server ../../x` cannot write outside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = Path(__file__).parent / "fixtures" / "site.yaml"


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"AIFACTORY_STATE_HOME": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "aifactory.cli.main", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "server",
    [
        "../../x",
        "../x",
        "a/b",
        "/tmp/abs",
        ".hidden",
        "..",
        "x\ny",
        "-flag",
        "a..b",
        "a_b",
        "x" * 300,
        "{{x}}",
    ],
)
def test_a_server_name_that_is_not_a_dns_name_is_refused_and_nothing_is_written(
    server: str, tmp_path: Path
) -> None:
    out = tmp_path / "work" / "out"
    result = _cli(tmp_path, "token", "cert", str(SPEC), f"--server={server}", "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert "cannot be a server name" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()
    assert not [p for p in _files(tmp_path) if p.suffix in (".pem", ".key")]


def test_a_dns_server_name_is_issued_inside_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _cli(
        tmp_path,
        "token",
        "cert",
        str(SPEC),
        "--server",
        "gpu-001.lab.example",
        "-o",
        str(out),
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert Path(answer["certificate"]) == out / "gpu-001.lab.example.pem"
    assert {p.name for p in out.iterdir()} == {"gpu-001.lab.example.pem", "gpu-001.lab.example.key", "ca.pem"}


@pytest.mark.parametrize("tenant", ["../../x", "a/b", ".."])
def test_a_tenant_name_that_could_name_another_folder_is_refused(tenant: str, tmp_path: Path) -> None:
    result = _cli(tmp_path, "token", "cert", str(SPEC), "--tenant", tenant, "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
