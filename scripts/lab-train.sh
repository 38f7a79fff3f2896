#!/usr/bin/env bash
# A 2-host training job on the lab, after `aifactory lab up` and `aifactory deploy` (docs/runtime.md).
#
#   scripts/lab-train.sh [SITE_SPEC]          (default inventory/lab/site.yaml)
#
# Runs `aifactory-train` (as deploy installed it, /opt/aifactory/current) on the first two compute
# hosts of the plan at once, through `aifactory lab exec --host`; they rendezvous on the first host's
# compute address and train with Gloo. Passes when both exit 0, every step ran with world size 2 and
# the loss fell. Settings (environment):
#   AIFACTORY      the aifactory command             (default: .venv/bin/aifactory, else aifactory)
#   RUNTIME_BIN    aifactory-train on the hosts      (default /opt/aifactory/current/bin/aifactory-train)
#   HOST_PYTHON    python on the hosts               (default /opt/aifactory/current/bin/python)
#   RUNTIME_DIR    the hosts' runtime state folder   (default /var/lib/aifactory/runtime, deploy's)
#   PLAN           the plan on the hosts             (default /etc/aifactory/plan.json, deploy's)
#   STORAGE_ROOT   prefix of planned storage paths   (default /)
#   WORK           a folder every lab host can read  (default: a new folder under /tmp)
set -euo pipefail

spec=${1:-inventory/lab/site.yaml}
aifactory=${AIFACTORY:-$( [ -x .venv/bin/aifactory ] && echo .venv/bin/aifactory || echo aifactory )}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
runtime_bin=${RUNTIME_BIN:-/opt/aifactory/current/bin/aifactory-train}
host_python=${HOST_PYTHON:-/opt/aifactory/current/bin/python}
runtime_dir=${RUNTIME_DIR:-/var/lib/aifactory/runtime}
plan_on_hosts=${PLAN:-/etc/aifactory/plan.json}
storage_root=${STORAGE_ROOT:-/}
work=${WORK:-$(mktemp -d /tmp/aifactory-lab-train.XXXXXX)}
chmod 0755 "$work"

say() { printf 'lab-train: %s\n' "$*" >&2; }

"$aifactory" plan "$spec" --frozen -o "$work/plan.json" >/dev/null
read -r site tenant dataset model host1 host2 < <("$python" - "$work/plan.json" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))
hosts = [h["name"] for h in plan["hosts"] if h.get("compute_address") and h["role"] in ("cpu", "gpu")]
dataset = plan["datasets"][0]
model = next(m for m in plan["models"] if dataset["name"] in m["trained_on"])
if len(hosts) < 2:
    sys.exit("the plan has fewer than two hosts with compute addresses")
print(plan["site"]["name"], dataset["owner"], dataset["name"], model["name"], hosts[0], hosts[1])
EOF
)
say "site $site: tenant $tenant trains $model on $dataset across $host1 and $host2"

# The token: issued by the site key on this (the admin's) machine; the hosts verify it with the
# public key and revocation list that deploy copied into $runtime_dir (copied here if missing).
"$aifactory" token issue "$spec" --tenant "$tenant" --expires 1d > "$work/token" 2>/dev/null
chmod 0644 "$work/token"
admin_runtime=$("$python" -c 'import sys; from aifactory.state import SiteState; print(SiteState.for_site(sys.argv[1]).subdir("runtime"))' "$site")
for host in "$host1" "$host2"; do
  "$aifactory" lab exec "$site" --host "$host" -- sh -c "test -s '$runtime_dir/token-key/allowed_signers' ||
    { mkdir -p '$runtime_dir/token-key' && cp '$admin_runtime/token-key/allowed_signers' '$runtime_dir/token-key/' &&
      cp '$admin_runtime/revoked-tokens.json' '$admin_runtime/revoked-tokens.json.sig' '$runtime_dir/'; }"
done

cat > "$work/job.yaml" <<EOF
schema: aifactory.job/v1
name: lab-two-hosts
plan: $plan_on_hosts
token_file: $work/token
dataset: $dataset
model: $model
hosts: [$host1, $host2]
processes_per_host: 1
rendezvous_port: 29400
storage_root: $storage_root
runtime_dir: $runtime_dir
network: {hidden: 64, layers: 2}
train: {steps: 100, global_batch: 64, learning_rate: 0.01, checkpoint_every: 25}
EOF

"$aifactory" lab exec "$site" --host "$host1" -- "$runtime_bin" "$work/job.yaml" --host "$host1" --generate-dataset

say "starting both nodes"
"$aifactory" lab exec "$site" --host "$host1" -- "$runtime_bin" "$work/job.yaml" --host "$host1" \
  > "$work/$host1.log" 2>&1 &
first=$!
"$aifactory" lab exec "$site" --host "$host2" -- "$runtime_bin" "$work/job.yaml" --host "$host2" \
  > "$work/$host2.log" 2>&1 &
second=$!
status=0
wait "$first" || status=$?
wait "$second" || status=$?
if [ "$status" -ne 0 ]; then
  say "a node failed (exit $status); logs: $work/$host1.log $work/$host2.log"
  tail -n 20 "$work/$host1.log" "$work/$host2.log" >&2
  exit "$status"
fi

metrics="$work/metrics.jsonl"
"$aifactory" lab exec "$site" --host "$host1" -- "$host_python" - "$plan_on_hosts" "$model" "$storage_root" <<'EOF' > "$metrics"
import json, sys
from pathlib import Path
plan = json.load(open(sys.argv[1]))
model = next(m for m in plan["models"] if m["name"] == sys.argv[2])
print(Path(sys.argv[3], model["host_path"].lstrip("/"), "runs", "lab-two-hosts", "metrics.jsonl").read_text(), end="")
EOF
"$python" - "$metrics" <<'EOF'
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
assert steps, "no metrics were written"
assert {s["world_size"] for s in steps} == {2}, "not every step ran on 2 processes"
first, last = steps[0]["loss"], steps[-1]["loss"]
assert last < first, f"the loss did not fall ({first} -> {last})"
print(f"lab-train: OK: {len(steps)} steps on 2 hosts, loss {first:.3f} -> {last:.3f}, "
      f"{steps[-1]['samples_per_s']:.0f} samples/s", file=sys.stderr)
EOF
