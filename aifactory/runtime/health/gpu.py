"""GPU checks: parsers of NVIDIA's tools' output, and the probe that runs them on a GPU host.

- `nvidia-smi -q -x`: count and model of the GPUs, volatile uncorrectable ECC errors, retired pages
  pending (pre-Hopper) or row-remapping failures (Ampere and later), power draw against its limit,
  SM clock against its maximum, hardware slowdown.
- the kernel log: `NVRM: Xid (PCI:...): N, ...` lines, NVIDIA's GPU error events.
- `dcgmi diag -r 1|2|3 -j`: every test's status (any `Fail` fails the host).

The parsers take text and return values: they are tested on fixture files (tests/fixtures/health/),
since no GPU is here. XML is read with the standard library's parser, which has refused entity
expansion attacks since expat 2.4.1 (Python 3.11 ships a newer one).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aifactory.errors import ToolOutputError
from aifactory.runtime.health.model import HostTask, Measurement, clipped
from aifactory.runtime.health.probes import run_tool

NOT_AVAILABLE = ("N/A", "[N/A]", "Not Supported", "[Not Supported]", "")
XID_LINE = re.compile(r"NVRM: Xid \(PCI:(?P<bus>[0-9A-Fa-f:.]+)\): (?P<code>\d+)")


@dataclass(frozen=True)
class GpuState:
    index: int
    bus_id: str
    product: str
    ecc_volatile_uncorrectable: float | None
    retired_pending: bool | None  # retired pages waiting for a reset (pre-Hopper)
    remap_failure: bool | None  # row remapping failed or pending (Ampere and later)
    power_draw_w: float | None
    power_limit_w: float | None
    sm_clock_mhz: float | None
    sm_clock_max_mhz: float | None
    hw_slowdown: bool | None
    memory_total_mib: float | None = None


def _number(text: str | None) -> float | None:
    """'700.00 W' -> 700.0; N/A -> None."""
    if text is None or text.strip() in NOT_AVAILABLE:
        return None
    head = text.strip().split()[0]
    try:
        return float(head)
    except ValueError as exc:
        raise ToolOutputError(f"not a number: {text.strip()!r}") from exc


def _text(node: ET.Element, path: str) -> str | None:
    found = node.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _first_text(node: ET.Element, *paths: str) -> str | None:
    """The first of several element paths that the driver writes (names changed between drivers)."""
    for path in paths:
        value = _text(node, path)
        if value is not None:
            return value
    return None


def _yes(value: str | None) -> bool | None:
    if value is None or value in NOT_AVAILABLE:
        return None
    return value.strip().lower() in ("yes", "active")


def parse_nvidia_smi_xml(text: str) -> list[GpuState]:
    """The GPUs of one `nvidia-smi -q -x` report, in the report's order."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ToolOutputError(f"not XML: {exc}") from exc
    if root.tag != "nvidia_smi_log":
        raise ToolOutputError(f"root element is <{root.tag}>, not <nvidia_smi_log>")
    return [_gpu(index, node) for index, node in enumerate(root.findall("gpu"))]


def _gpu(index: int, node: ET.Element) -> GpuState:
    uncorrectable = [
        _number(_text(node, f"ecc_errors/volatile/{name}"))
        for name in ("sram_uncorrectable", "dram_uncorrectable", "double_bit/total")
    ]
    known = [v for v in uncorrectable if v is not None]
    remap = [
        _yes(_text(node, f"remapped_rows/{name}"))
        for name in ("remapped_row_pending", "remapped_row_failure")
    ]
    remap_known = [v for v in remap if v is not None]
    slowdown = _first_text(
        node,
        "clocks_event_reasons/clocks_event_reason_hw_slowdown",
        "clocks_throttle_reasons/clocks_throttle_reason_hw_slowdown",
    )
    return GpuState(
        index=index,
        bus_id=node.get("id", ""),
        product=_text(node, "product_name") or "",
        ecc_volatile_uncorrectable=sum(known) if known else None,
        retired_pending=_yes(_text(node, "retired_pages/pending_retirement")),
        remap_failure=any(remap_known) if remap_known else None,
        power_draw_w=_number(_first_text(node, "gpu_power_readings/power_draw", "power_readings/power_draw")),
        power_limit_w=_number(
            _first_text(node, "gpu_power_readings/current_power_limit", "power_readings/power_limit")
        ),
        sm_clock_mhz=_number(_text(node, "clocks/sm_clock")),
        sm_clock_max_mhz=_number(_text(node, "max_clocks/sm_clock")),
        hw_slowdown=_yes(slowdown),
        memory_total_mib=_number(_text(node, "fb_memory_usage/total")),
    )


def parse_xid_events(kernel_log: str) -> dict[str, list[int]]:
    """Xid codes by PCI bus id, from kernel log text (dmesg or journalctl -k)."""
    events: dict[str, list[int]] = {}
    for match in XID_LINE.finditer(kernel_log):
        events.setdefault(match.group("bus").lower(), []).append(int(match.group("code")))
    return events


def parse_dcgmi_diag(text: str) -> dict[str, str]:
    """Status of every test of a `dcgmi diag -j` report, by 'category/test' (per GPU when given)."""
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise ToolOutputError(f"not JSON: {exc}") from exc
    statuses: dict[str, str] = {}
    for category, test, result in _diag_results(report):
        gpu = result.get("gpu_id", result.get("entity_id"))
        key = f"{category}/{test}" + (f"/gpu{gpu}" if gpu is not None else "")
        status = str(result.get("status", "")).strip()
        if not status:
            raise ToolOutputError(f"{key}: a result without a status")
        statuses[key] = status
    if not statuses:
        raise ToolOutputError("no test results in the report")
    return statuses


def _diag_results(report: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    body = (
        report.get("DCGM Diagnostic", report.get("DCGM GPU Diagnostic")) if isinstance(report, dict) else None
    )
    if not isinstance(body, dict):
        raise ToolOutputError("no 'DCGM Diagnostic' object")
    for category in body.get("test_categories", []):
        for test in category.get("tests", []):
            for result in test.get("results", []):
                if isinstance(result, dict):
                    yield str(category.get("category", "?")), str(test.get("name", "?")), result


def diag_failures(statuses: dict[str, str]) -> list[str]:
    """Tests that did not pass ('Skip' is not a failure: DCGM skips what a GPU does not support)."""
    return sorted(key for key, status in statuses.items() if status.lower() not in ("pass", "skip"))


def gpu_measurements(states: list[GpuState], task: HostTask, raw: str) -> list[Measurement]:
    """Measurements from a parsed `nvidia-smi -q -x` report (the policy compares them)."""
    found = [Measurement("gpu-count", "host", float(len(states)), "gpus", clipped(raw))]
    if task.gpu_model is not None:
        wrong = [s.product for s in states if task.gpu_model.lower() not in s.product.lower()]
        found.append(Measurement("gpu-model-mismatch", "host", float(len(wrong)), "gpus", "; ".join(wrong)))
    for state in states:
        subject = f"gpu{state.index}"
        found.append(_value("gpu-ecc-uncorrectable", subject, state.ecc_volatile_uncorrectable, "errors"))
        pending = state.remap_failure if state.remap_failure is not None else state.retired_pending
        found.append(_value("gpu-memory-retirement-pending", subject, _flag(pending), "bool"))
        found.append(_value("gpu-hw-slowdown", subject, _flag(state.hw_slowdown), "bool"))
        if state.sm_clock_max_mhz and state.sm_clock_mhz is not None:
            ratio = round(100.0 * state.sm_clock_mhz / state.sm_clock_max_mhz, 1)
            found.append(Measurement("gpu-sm-clock", subject, ratio, "% of max"))
        memory = None if state.memory_total_mib is None else round(state.memory_total_mib / 1024, 2)
        found.append(_value("gpu-memory-total", subject, memory, "GiB"))
        found.append(_value("gpu-power-limit", subject, state.power_limit_w, "W"))
    return found


def _flag(value: bool | None) -> float | None:
    return None if value is None else (1.0 if value else 0.0)


def _value(check: str, subject: str, value: float | None, unit: str) -> Measurement:
    if value is None:
        return Measurement.failed(check, subject, unit, "not reported by nvidia-smi")
    return Measurement(check, subject, value, unit)


def gpu_checks(task: HostTask) -> list[Measurement]:
    """Run nvidia-smi and read the kernel log for Xid events (GPU hosts only)."""
    if task.gpus_expected <= 0:
        return []
    code, output = run_tool(["nvidia-smi", "-q", "-x"])
    if code != 0:
        return [Measurement.failed("gpu-count", "host", "gpus", f"nvidia-smi exited {code}", output)]
    try:
        states = parse_nvidia_smi_xml(output[output.index("<") :] if "<" in output else output)
    except ToolOutputError as exc:
        return [Measurement.failed("gpu-count", "host", "gpus", str(exc), output)]
    found = gpu_measurements(states, task, output)
    code, log = run_tool(["dmesg", "--notime"])
    if code != 0:
        found.append(Measurement.failed("gpu-xid-events", "host", "events", f"dmesg exited {code}", log))
    else:
        events = parse_xid_events(log)
        count = float(sum(len(codes) for codes in events.values()))
        found.append(
            Measurement("gpu-xid-events", "host", count, "events", json.dumps(events, sort_keys=True))
        )
    return found
