"""scripts/gpu-health.sh --dry-run: the GPU script's steps on a machine without a GPU, as CI runs it.
Every GPU tool is reported absent, torch's copy and matmul run on the CPU, and the project's parsers
read the fixtures the dry run stands in for captures with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import waiting

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-health.sh"

pytestmark = pytest.mark.slow  # imports torch


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU host: run the script for real")
def test_dry_run_passes_and_saves_every_output(tmp_path: Path) -> None:
    out = tmp_path / "capture"
    done = subprocess.run(
        [str(SCRIPT), "--dry-run", "--out", str(out), "--python", sys.executable],
        capture_output=True,
        text=True,
        timeout=waiting.scaled(300),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [line.split()[:2] for line in (out / "steps.txt").read_text().splitlines()]
    assert steps == [
        ["nvidia-smi", "absent"],
        ["dcgmi", "absent"],
        ["torch.json", "ok"],
        ["parsed.json", "ok"],
    ]
    assert "mode: dry-run" in (out / "capture.txt").read_text()
    parsed = json.loads((out / "parsed.json").read_text())
    assert [g["product"] for g in parsed["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert parsed["xid"] == {"0000:37:00": [79, 48], "0000:18:00": [13]}
    assert parsed["dcgmi_r2_failures"] == ["Deployment/Page Retirement/Row Remap", "Integration/PCIe/gpu1"]
    torch_result = parsed["torch"]
    assert torch_result["device"] == "cpu" and torch_result["gpu-h2d-bandwidth"]["value"] > 0
    assert torch_result["gpu-matmul-rate"]["value"] > 0


def test_an_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr
