"""Names the plan derives from the spec: host names and Linux interface names.

Kept beside the spec so that the validator can refuse a spec whose derived names would collide.
"""

from __future__ import annotations

import hashlib

MAX_IFNAME = 15  # Linux IFNAMSIZ - 1


def host_name(site: str, pool: str, index: int) -> str:
    """`<site>-<pool>-<nnn>`: three digits, growing past 999 without renaming the others."""
    return f"{site}-{pool}-{index:03d}"


def interface_name(fabric: str, rail: int, rails: int) -> str:
    """The interface a host gets on one rail of a fabric: `<fabric>` or `<fabric><rail>`.

    A fabric name over 12 characters is cut to 8 plus 4 hex digits of its hash, so that the name
    with a rail number fits in 15 characters.
    """
    base = fabric if len(fabric) <= 12 else fabric[:8] + hashlib.sha256(fabric.encode()).hexdigest()[:4]
    return f"{base}{rail}" if rails > 1 else base
