#!/usr/bin/env bash
# Set up this checkout on a fresh Debian 12 machine (as root): system packages the lab and tests use,
# and a virtual environment in .venv with aifactory and everything it needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client iproute2 procps util-linux zstd   # the lab: namespaces, sshd
  chromium                                                         # the audit report's browser test
  poppler-utils                                                    # ... and its printed PDF (pdftotext)
  slurm-wlm munge chrony openscap-scanner fio iperf3               # what the roles install (machine-wide:
  prometheus prometheus-alertmanager prometheus-node-exporter      #   lab hosts share /usr); promtool
  libpam-pwquality sudo aide aide-common                           #   tests the alert rules
  haproxy                                                          # the front door (front_door role, its tests)
  linux-base                                                       # the lab hosts run this machine's kernel:
                                                                   #   Debian's base of every kernel package, which
                                                                   #   the SCAP content's "system with kernel"
                                                                   #   platform checks (docs/lab.md)
  nftables faketime                                                # the lab's fault corpus: a lossy link, a
                                                                   #   wrong time source (aifactory/lab/faults.py)
  python3-venv git curl
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
# The SCAP content with a Debian 12 datastream: Debian 13's ssg-debian 0.1.76 (architecture-
# independent), pinned by SHA-256 exactly as aifactory/bundle/apt.py's PINNED_DEBS (a test keeps the
# two equal); installed machine-wide like the role packages, because lab hosts share /usr.
SSG_PINS=(
  "ssg-base 0.1.76-1 559650cd800f18d1eec68692679a5c761136d84f1cff35f30ff4e2e04d8c1b56"
  "ssg-debian 0.1.76-1 f6880719015c16e8e221bc2503c0e5a9f83d6a09fc6f9292d3522e46bf4fc9d7"
)
SSG_CACHE="${HOME}/.cache/aifactory/debs/pinned"
for pin in "${SSG_PINS[@]}"; do
  read -r name version sha <<<"$pin"
  [ "$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null)" = "$version" ] && continue
  deb="$SSG_CACHE/${name}_${version}_all.deb"
  mkdir -p "$SSG_CACHE"
  if ! echo "$sha  $deb" | sha256sum -c --status 2>/dev/null; then
    curl -fsS -m 300 -o "$deb.partial" "https://deb.debian.org/debian/pool/main/s/scap-security-guide/${name}_${version}_all.deb"
    echo "$sha  $deb.partial" | sha256sum -c --status || { echo "setup: $deb: SHA-256 mismatch" >&2; exit 1; }
    mv "$deb.partial" "$deb"
  fi
  echo "setup: installing $name $version (Debian 13's SCAP content)"
  dpkg -i "$deb" >/dev/null
done

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
# Shell completion of `aifactory` (argcomplete), for this virtual environment only: the README says
# how to source it. Nothing is written to the machine's /etc/bash_completion.d or zsh site folders.
mkdir -p .venv/share/aifactory
.venv/bin/register-python-argcomplete --shell bash aifactory >.venv/share/aifactory/completion.bash
.venv/bin/register-python-argcomplete --shell zsh aifactory >.venv/share/aifactory/completion.zsh
echo "setup: ready (.venv/bin/aifactory $(.venv/bin/aifactory --version | cut -d' ' -f2))"
