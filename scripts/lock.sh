#!/usr/bin/env bash
# Refresh requirements.lock: every Python package scripts/setup.sh installs (aifactory's dependencies
# with all extras, the build backend, pip itself), pinned with SHA-256 hashes. Run it after changing
# dependencies in pyproject.toml or requirements/pins.txt, then commit the lock:
#   ./scripts/lock.sh            # keep current pins where they still satisfy pyproject.toml
#   ./scripts/lock.sh --upgrade  # move every pin to the newest release allowed
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${LOCK_TOOLS_VENV:-.venv-lock}
[ -x "$TOOLS/bin/pip-compile" ] || {
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "pip-tools==7.6.2"
}
CUSTOM_COMPILE_COMMAND="./scripts/lock.sh" "$TOOLS/bin/pip-compile" -q \
  --generate-hashes --allow-unsafe --strip-extras --all-extras \
  --no-emit-index-url --no-emit-find-links \
  --constraint requirements/pins.txt \
  --output-file requirements.lock "$@" pyproject.toml requirements/setup.in
echo "lock: requirements.lock ($(grep -c '^[a-z0-9]' requirements.lock) packages)"
