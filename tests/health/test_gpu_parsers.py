"""The GPU parsers on fixture files written after the documented output of nvidia-smi, the kernel's
Xid lines and dcgmi (tests/health/fixtures; no GPU here, the fixtures say so in their text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifactory.errors import ToolOutputError
from aifactory.runtime.health.gpu import (
    diag_failures,
    gpu_measurements,
    parse_dcgmi_diag,
    parse_nvidia_smi_xml,
    parse_xid_events,
)
from aifactory.runtime.health.model import HostTask

FIXTURES = Path(__file__).parent / "fixtures"


def _values(measurements: list) -> dict[tuple[str, str], float | None]:
    return {(m.check, m.subject): m.value for m in measurements}


def test_healthy_h100_report_reads_every_value() -> None:
    states = parse_nvidia_smi_xml((FIXTURES / "nvidia-smi-h100-healthy.xml").read_text())
    assert [(s.index, s.bus_id, s.product) for s in states] == [
        (0, "00000000:18:00.0", "NVIDIA H100 80GB HBM3"),
        (1, "00000000:37:00.0", "NVIDIA H100 80GB HBM3"),
    ]
    first = states[0]
    assert (first.ecc_volatile_uncorrectable, first.retired_pending, first.remap_failure) == (0, None, False)
    assert (first.power_draw_w, first.power_limit_w, first.hw_slowdown) == (71.23, 700.0, False)
    assert (first.sm_clock_mhz, first.sm_clock_max_mhz, first.memory_total_mib) == (1980.0, 1980.0, 81559.0)


def test_faulty_h200_gpu_shows_its_faults_as_values() -> None:
    text = (FIXTURES / "nvidia-smi-h200-faulty.xml").read_text()
    task = HostTask(host="g1", level="quick", gpus_expected=2, gpu_model="H200")
    values = _values(gpu_measurements(parse_nvidia_smi_xml(text), task, text))
    assert values[("gpu-count", "host")] == 2
    assert values[("gpu-model-mismatch", "host")] == 0
    assert values[("gpu-ecc-uncorrectable", "gpu0")] == 0 and values[("gpu-ecc-uncorrectable", "gpu1")] == 2
    assert values[("gpu-memory-retirement-pending", "gpu1")] == 1
    assert values[("gpu-hw-slowdown", "gpu1")] == 1 and values[("gpu-hw-slowdown", "gpu0")] == 0
    assert values[("gpu-power-limit", "gpu1")] == 500 and values[("gpu-power-limit", "gpu0")] == 700
    assert values[("gpu-sm-clock", "gpu1")] == pytest.approx(71.2)
    assert values[("gpu-memory-total", "gpu0")] == pytest.approx(140.4, abs=0.01)


def test_a_model_the_plan_does_not_name_is_counted() -> None:
    text = (FIXTURES / "nvidia-smi-h100-healthy.xml").read_text()
    task = HostTask(host="g1", level="quick", gpus_expected=2, gpu_model="H200")
    values = _values(gpu_measurements(parse_nvidia_smi_xml(text), task, text))
    assert values[("gpu-model-mismatch", "host")] == 2


def test_a_value_nvidia_smi_does_not_report_is_a_failed_measurement() -> None:
    text = (FIXTURES / "nvidia-smi-h100-healthy.xml").read_text().replace("700.00 W</current", "N/A</current")
    found = gpu_measurements(parse_nvidia_smi_xml(text), HostTask(host="g", level="quick"), text)
    limits = [m for m in found if m.check == "gpu-power-limit"]
    assert [(m.value, m.error) for m in limits] == [(None, "not reported by nvidia-smi")] * 2


@pytest.mark.parametrize(
    "text",
    [
        "not xml",
        "<other/>",
        "<nvidia_smi_log><gpu><fb_memory_usage><total>lots</total></fb_memory_usage></gpu></nvidia_smi_log>",
    ],
)
def test_output_the_parser_does_not_know_is_refused(text: str) -> None:
    with pytest.raises(ToolOutputError):
        parse_nvidia_smi_xml(text)


def test_xid_events_by_bus_id_and_sxid_lines_ignored() -> None:
    events = parse_xid_events((FIXTURES / "dmesg-xid.txt").read_text())
    assert events == {"0000:37:00": [79, 48], "0000:18:00": [13]}


def test_dcgmi_diag_pass_and_fail() -> None:
    passed = parse_dcgmi_diag((FIXTURES / "dcgmi-diag-r2-pass.json").read_text())
    assert passed["Deployment/Inforom"] == "Skip" and diag_failures(passed) == []
    failed = parse_dcgmi_diag((FIXTURES / "dcgmi-diag-r2-fail.json").read_text())
    assert diag_failures(failed) == ["Deployment/Page Retirement/Row Remap", "Integration/PCIe/gpu1"]


@pytest.mark.parametrize("text", ["{}", "[]", '{"DCGM Diagnostic": {"test_categories": []}}', "nope"])
def test_dcgmi_report_without_results_is_refused(text: str) -> None:
    with pytest.raises(ToolOutputError):
        parse_dcgmi_diag(text)
