#!/usr/bin/env bash
# The GPU health checks on one GPU host, in under five minutes, every raw output saved as a fixture
# candidate (docs/health.md):
#
#   scripts/gpu-health.sh [--out DIR] [--python PYTHON]     on a GPU host (nvidia-smi, dcgmi, torch with CUDA)
#   scripts/gpu-health.sh --dry-run [--out DIR]             anywhere: the same steps without a GPU (CI runs it)
#
# Writes DIR/ (default ./gpu-health-<host>-<UTC time>): capture.txt (where, when, which driver),
# nvidia-smi.xml, xid.txt, dcgmi-r1.json, dcgmi-r2.json, torch.json, parsed.json (aifactory's parsers
# over the captures), steps.txt (one line per step: name, status, seconds). Exit 0 when every step
# ran (a dry run: when every GPU tool was reported absent and the parsers read the test fixtures), 1
# otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dry_run=0
out=""
python="${AIFACTORY_PYTHON:-/opt/aifactory/current/bin/python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out="$2"; shift ;;
    --python) python="$2"; shift ;;
    *) echo "usage: $0 [--dry-run] [--out DIR] [--python PYTHON]" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$python" ] || python=$(command -v python3)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="${out:-./gpu-health-$(hostname)-$stamp}"
mkdir -p "$out"
steps="$out/steps.txt"
: > "$steps"
failed=0

# step NAME TIMEOUT COMMAND...: run, keep its output in the step's file, record status and time.
step() {
  local name="$1" limit="$2"; shift 2
  local start end status=ok
  start=$(date +%s.%N)
  if ! timeout "$limit" "$@" > "$out/$name" 2> "$out/$name.stderr"; then status="failed($?)"; fi
  end=$(date +%s.%N)
  awk -v n="$name" -v s="$status" -v a="$start" -v b="$end" 'BEGIN { printf "%s %s %.1f\n", n, s, b - a }' >> "$steps"
  [ "$status" = ok ]
}

# absent TOOL: in a dry run a GPU tool must be missing (else this is a GPU host: run for real).
absent() {
  if command -v "$1" > /dev/null; then
    echo "$1 is installed: run without --dry-run" >&2
    failed=1
  else
    printf '%s absent 0.0\n' "$1" >> "$steps"
  fi
}

{
  echo "captured-on: $(hostname)"
  echo "captured-at: $stamp"
  echo "mode: $([ $dry_run = 1 ] && echo dry-run || echo gpu)"
  echo "kernel: $(uname -r)"
  if [ $dry_run = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,vbios_version --format=csv,noheader || true
  fi
} > "$out/capture.txt"

if [ $dry_run = 1 ]; then
  absent nvidia-smi
  absent dcgmi
  fixtures="$here/tests/health/fixtures"
  cp "$fixtures/nvidia-smi-h100-healthy.xml" "$out/nvidia-smi.xml"
  cp "$fixtures/dmesg-xid.txt" "$out/xid.txt"
  cp "$fixtures/dcgmi-diag-r2-pass.json" "$out/dcgmi-r1.json"
  cp "$fixtures/dcgmi-diag-r2-fail.json" "$out/dcgmi-r2.json"
  step torch.json 120 "$python" -c 'from aifactory.runtime.health.gpu_bench import report; report(dry_run=True)' || failed=1
else
  step nvidia-smi.xml 60 nvidia-smi -q -x || failed=1
  step xid.txt 30 sh -c 'dmesg --notime | grep -E "NVRM: Xid|SXid" || true' || failed=1
  step dcgmi-r1.json 120 dcgmi diag -r 1 -j || failed=1
  step dcgmi-r2.json 240 dcgmi diag -r 2 -j || failed=1
  step torch.json 120 "$python" -c 'from aifactory.runtime.health.gpu_bench import report; report(dry_run=False)' || failed=1
fi

# The project's parsers over what was captured: a parser that cannot read real output fails here.
step parsed.json 60 "$python" - "$out" <<'PY' || failed=1
import json, sys
from pathlib import Path
from aifactory.runtime.health.gpu import diag_failures, parse_dcgmi_diag, parse_nvidia_smi_xml, parse_xid_events
out = Path(sys.argv[1])
gpus = parse_nvidia_smi_xml((out / "nvidia-smi.xml").read_text())
print(json.dumps({
    "gpus": [{"index": g.index, "product": g.product, "ecc_volatile_uncorrectable": g.ecc_volatile_uncorrectable,
              "remap_failure": g.remap_failure, "power_limit_w": g.power_limit_w, "memory_total_mib": g.memory_total_mib}
             for g in gpus],
    "xid": parse_xid_events((out / "xid.txt").read_text()),
    "dcgmi_r1_failures": diag_failures(parse_dcgmi_diag((out / "dcgmi-r1.json").read_text())),
    "dcgmi_r2_failures": diag_failures(parse_dcgmi_diag((out / "dcgmi-r2.json").read_text())),
    "torch": json.loads((out / "torch.json").read_text()),
}, indent=2, sort_keys=True))
PY

cat "$steps"
echo "saved in $out"
exit $failed
