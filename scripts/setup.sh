#!/usr/bin/env bash
# Set up this checkout on a fresh Debian 12 machine (as root): system packages the lab and tests use,
# and a virtual environment in .venv with aifactory and everything it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client iproute2 procps util-linux zstd   # the lab: namespaces, sshd
  chromium                                                         # the audit report's browser test
  slurm-wlm munge chrony                                           # what the roles install (machine-wide:
                                                                   #   lab hosts share /usr)
  python3-venv git
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
# The lab runs its own sshd, munged and Slurm daemons inside each lab host (private /run); it never
# starts, stops or reconfigures the machine's own services.

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first: on this machine pip takes the CPU build from local disk. Elsewhere, see README
# ("Getting torch") for the CPU or CUDA index URL.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[control,runtime,dev]"
echo "setup: ready (.venv/bin/aifactory $(.venv/bin/aifactory --version | cut -d' ' -f2))"
