#!/usr/bin/env python3
"""Rewrite the moderate baseline profile aifactory ships from aifactory.audit.controls.MODERATE_BASELINE,
and its SHA-256 in oscal_content/SOURCES.json. Run after changing MODERATE_BASELINE."""

from __future__ import annotations

import hashlib
import json
import sys

from aifactory.audit.catalog import CONTENT, PROFILE, SOURCES, profile_bytes


def main() -> int:
    body = profile_bytes()
    (CONTENT / PROFILE).write_bytes(body)
    sources = json.loads((CONTENT / SOURCES).read_text(encoding="utf-8"))
    entry = {
        "file": PROFILE,
        "sha256": hashlib.sha256(body).hexdigest(),
        "what": "aifactory's OSCAL profile: the SP 800-53B moderate baseline controls aifactory implements, "
        "selected from the shipped NIST catalog (not NIST's moderate baseline profile)",
        "license": "Apache-2.0 (aifactory)",
        "source": {
            "generated_by": "scripts/oscal_profile.py from aifactory.audit.controls.MODERATE_BASELINE"
        },
        "copied": "generated",
    }
    sources["files"] = [f for f in sources["files"] if f["file"] != PROFILE] + [entry]
    (CONTENT / SOURCES).write_text(json.dumps(sources, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(f"{CONTENT / PROFILE}: sha256 {entry['sha256']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
