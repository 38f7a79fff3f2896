#!/usr/bin/env bash
# Set up this checkout on a fresh Debian 12 machine (as root): system packages the lab and tests use,
# and a virtual environment in .venv with aifactory and everything it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client iproute2 procps util-linux zstd   # the lab: namespaces, sshd
  chromium                                                         # the audit report's browser test
  poppler-utils                                                    # ... and its printed PDF (pdftotext)
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
# Every Python package comes from requirements.lock, pinned with SHA-256 hashes (refresh it with
# ./scripts/lock.sh). torch is locked to the CPU build that pip finds on this machine kind's local
# disk; elsewhere, see README ("Getting torch") before running this.
.venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements.lock
# aifactory itself, editable, with the locked build backend (nothing is downloaded for the build).
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }
echo "setup: ready (.venv/bin/aifactory $(.venv/bin/aifactory --version | cut -d' ' -f2))"
