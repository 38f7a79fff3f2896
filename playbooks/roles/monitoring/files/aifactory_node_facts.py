#!/usr/bin/python3
"""aifactory node facts: one Prometheus text file for node exporter's textfile collector.

Run by the monitoring role's timer (aifactory-node-facts.timer) on every host, as root. Standard
library and Slurm's own tools only (`scontrol`, `squeue`): it runs on the hosts' own Python, which
has no X.509 library, so certificates are read by the decoder behind `SSLSocket.getpeercert()`.
Written atomically (temporary file, then rename), so the collector never reads half of it.

    aifactory_certificate_not_after_seconds{file}            each --certificate that exists
    aifactory_signing_key_not_after_seconds{file,principal}  each allowed_signers line with valid-before
    aifactory_slurm_node_state{node,state}                   1 for the node's state (--slurm: the controller)
    aifactory_slurm_node_drained{node,reason}                1 when drained or draining (reason cut short)
    aifactory_slurm_node_cpus{node,use}, _gpus{node,use}     allocated and total
    aifactory_slurm_jobs{state,account}                      jobs by state and account
    aifactory_unit_failed{unit}                              1 when the service manager calls the unit
                                                             failed (its last run failed), else 0
    aifactory_units_answered                                 0 when the manager's answer could not be read
    aifactory_node_facts_timestamp_seconds                   when this file was written

Label values are bounded: file names and units from the role, node names and accounts from the
plan, Slurm's own states; never a job or request id. The units' states come from one
`<manager> is-active -- UNIT...` (systemctl, or the lab's supervisor, which answers the same way).
"""

from __future__ import annotations

import argparse
import calendar
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

REASON_MAX = 64
_STATE_MARKS = "*~#!%$@^-"
_VALID_BEFORE = re.compile(r'(?:^|[\s,])valid-before="?([0-9]{8,14})(Z?)"?', re.IGNORECASE)
_KEY_VALUE = re.compile(r"(\w+)=(\S*)")
_TRES_GPU = re.compile(r"gres/gpu(?::[^=,]*)?=([0-9]+)")
_GRES_GPU = re.compile(r"gpu(?::[^:(,]*)?:([0-9]+)")


def escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{key}="{escape(labels[key])}"' for key in sorted(labels))
    return f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}"


def certificate_not_after(path: Path) -> float | None:
    """The first certificate's notAfter in a PEM file, as Unix time (None: not a certificate)."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]  # CPython's decoder
    except (ssl.SSLError, OSError, ValueError):
        return None
    return float(ssl.cert_time_to_seconds(decoded["notAfter"]))


def signer_expiries(text: str) -> list[tuple[str, float]]:
    """(principals, valid-before as Unix time) of each allowed_signers line that has one. OpenSSH
    reads YYYYMMDD[HHMM[SS]] as local time, or UTC with a trailing Z (ssh-keygen(1))."""
    found = []
    for raw in text.splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        match = _VALID_BEFORE.search(entry)
        if not match:
            continue
        digits = match.group(1).ljust(14, "0")
        moment = time.strptime(digits, "%Y%m%d%H%M%S")
        seconds = calendar.timegm(moment) if match.group(2) else time.mktime(moment)
        found.append((entry.split()[0][:REASON_MAX], float(seconds)))
    return found


def parse_nodes(text: str) -> list[dict[str, str]]:
    """`scontrol show node --oneliner`: one line per node, KEY=VALUE, Reason= last (it holds spaces)."""
    nodes = []
    for raw in text.splitlines():
        head, _, reason = raw.partition(" Reason=")
        fields = dict(_KEY_VALUE.findall(head))
        if "NodeName" not in fields:
            continue
        fields["Reason"] = re.sub(r"\s*\[[^\]]*\]\s*$", "", reason).strip()
        nodes.append(fields)
    return nodes


def node_state(state: str) -> tuple[str, bool]:
    """Slurm's State (e.g. IDLE+DRAIN, MIXED, DOWN*+NOT_RESPONDING) -> (state label, drained). The
    suffixes Slurm marks states with (`*` not responding, `~` powered off, ...) are left out."""
    parts = [part.rstrip(_STATE_MARKS) for part in state.lower().split("+")]
    base, flags = parts[0], set(parts[1:])
    drained = "drain" in flags or base in ("drained", "draining", "drain")
    if drained:
        return ("draining" if base in ("allocated", "mixed", "completing") else "drained"), True
    return base, False


def gpu_count(text: str, pattern: re.Pattern[str]) -> int:
    return sum(int(n) for n in pattern.findall(text or ""))


def slurm_lines(nodes: Iterable[dict[str, str]], jobs: Iterable[tuple[str, str]]) -> list[str]:
    out = [
        "# HELP aifactory_slurm_node_state The Slurm node's state (1 for its current one).",
        "# TYPE aifactory_slurm_node_state gauge",
    ]
    drained_lines, cpu_lines, gpu_lines = [], [], []
    for fields in nodes:
        node = fields["NodeName"]
        state, drained = node_state(fields.get("State", "unknown"))
        out.append(line("aifactory_slurm_node_state", {"node": node, "state": state}, 1))
        reason = fields.get("Reason", "")[:REASON_MAX] if drained else ""
        drained_lines.append(
            line("aifactory_slurm_node_drained", {"node": node, "reason": reason}, int(drained))
        )
        for use, key in (("allocated", "CPUAlloc"), ("total", "CPUTot")):
            cpu_lines.append(
                line("aifactory_slurm_node_cpus", {"node": node, "use": use}, float(fields.get(key) or 0))
            )
        gpu_lines.append(
            line(
                "aifactory_slurm_node_gpus",
                {"node": node, "use": "allocated"},
                gpu_count(fields.get("AllocTRES", ""), _TRES_GPU),
            )
        )
        gpu_lines.append(
            line(
                "aifactory_slurm_node_gpus",
                {"node": node, "use": "total"},
                gpu_count(fields.get("Gres", ""), _GRES_GPU),
            )
        )
    out += [
        "# HELP aifactory_slurm_node_drained 1 when Slurm drained the node, with its reason.",
        "# TYPE aifactory_slurm_node_drained gauge",
        *drained_lines,
    ]
    out += [
        "# HELP aifactory_slurm_node_cpus CPUs of the node, allocated and in total.",
        "# TYPE aifactory_slurm_node_cpus gauge",
        *cpu_lines,
    ]
    out += [
        "# HELP aifactory_slurm_node_gpus GPUs of the node, allocated and in total.",
        "# TYPE aifactory_slurm_node_gpus gauge",
        *gpu_lines,
    ]
    counts = Counter((state.lower(), account) for state, account in jobs)
    out += [
        "# HELP aifactory_slurm_jobs Jobs in Slurm's queue by state and account.",
        "# TYPE aifactory_slurm_jobs gauge",
    ]
    out += [
        line("aifactory_slurm_jobs", {"state": s, "account": a}, n) for (s, a), n in sorted(counts.items())
    ]
    return out


def _slurm() -> list[str]:
    nodes = subprocess.run(
        ["scontrol", "show", "node", "--oneliner"], capture_output=True, text=True, check=False
    )
    queue = subprocess.run(
        ["squeue", "--noheader", "--format=%T|%a"], capture_output=True, text=True, check=False
    )
    if nodes.returncode != 0 or queue.returncode != 0:
        return ["# slurm: not answering", line("aifactory_slurm_up", {}, 0)]
    jobs = [tuple(row.split("|", 1)) for row in queue.stdout.splitlines() if "|" in row]
    return [line("aifactory_slurm_up", {}, 1), *slurm_lines(parse_nodes(nodes.stdout), jobs)]  # type: ignore[arg-type]


def unit_lines(units: Sequence[str], manager: str) -> list[str]:
    """Whether each unit's last run failed (a daily check's verdict: the runtime's files against their
    listing), from one `is-active` of them all; an answer without one word per unit is not read."""
    if not units:
        return []
    out = [
        "# HELP aifactory_unit_failed 1 when the service manager calls the unit failed (its last run did).",
        "# TYPE aifactory_unit_failed gauge",
    ]
    try:
        done = subprocess.run(
            [manager, "is-active", "--", *units], capture_output=True, text=True, check=False, timeout=60
        )
        words = done.stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        words = []
    if len(words) != len(units):
        return [*out, line("aifactory_units_answered", {}, 0)]
    states = zip(units, words, strict=True)
    out += [line("aifactory_unit_failed", {"unit": u}, int(w == "failed")) for u, w in states]
    return [*out, line("aifactory_units_answered", {}, 1)]


def facts(
    certificates: Sequence[Path],
    signers: Sequence[Path],
    *,
    slurm: bool,
    units: Sequence[str] = (),
    manager: str = "systemctl",
) -> str:
    out = [
        "# HELP aifactory_certificate_not_after_seconds When the certificate expires (Unix time).",
        "# TYPE aifactory_certificate_not_after_seconds gauge",
    ]
    for path in certificates:
        if path.is_file() and (not_after := certificate_not_after(path)) is not None:
            out.append(line("aifactory_certificate_not_after_seconds", {"file": str(path)}, not_after))
    out += [
        "# HELP aifactory_signing_key_not_after_seconds When a signing key's trust line ends (Unix time).",
        "# TYPE aifactory_signing_key_not_after_seconds gauge",
    ]
    for path in signers:
        if path.is_file():
            for principal, moment in signer_expiries(path.read_text(errors="replace")):
                out.append(
                    line(
                        "aifactory_signing_key_not_after_seconds",
                        {"file": str(path), "principal": principal},
                        moment,
                    )
                )
    if slurm:
        out += _slurm()
    out += unit_lines(units, manager)
    out.append(line("aifactory_node_facts_timestamp_seconds", {}, round(time.time())))
    return "\n".join(out) + "\n"


def write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".aifactory-facts-")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", required=True, type=Path, help="the .prom file to write")
    parser.add_argument("--certificate", action="append", default=[], type=Path)
    parser.add_argument("--signers", action="append", default=[], type=Path)
    parser.add_argument("--slurm", action="store_true", help="this host is the Slurm controller")
    parser.add_argument("--unit", action="append", default=[], help="a unit whose failure to export")
    parser.add_argument("--service-manager", default="systemctl", help="what answers `is-active -- UNIT...`")
    args = parser.parse_args(argv)
    units, manager = args.unit, args.service_manager
    text = facts(args.certificate, args.signers, slurm=args.slurm, units=units, manager=manager)
    write_atomically(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
