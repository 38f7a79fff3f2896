"""Sites for the plan tests (a module of its own: `conftest` is not importable by name)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NATIONAL = ROOT / "inventory" / "examples" / "national" / "site.yaml"


def site_text(
    pools: list[tuple[str, int]], *, compute_cidr: str = "10.20.0.0/22", mgmt_cidr: str = "10.10.0.0/24"
) -> str:
    """A site with the given (pool, count) gpu pools, in order, on a 4-rail compute fabric."""
    lines = [
        "schema: aifactory.site/v1",
        "site: {name: grow, jurisdiction: DE}",
        "datacenters: [{name: dc1, country: DE}]",
        "fabrics:",
        f"  - {{name: mgmt, kind: ethernet, purpose: management, cidr: {mgmt_cidr}}}",
        f"  - {{name: compute, kind: roce, purpose: compute, cidr: {compute_cidr}, rails: 4}}",
        "  - {name: bmc, kind: ethernet, purpose: bmc, cidr: 'fd00:9::/64'}",
        "node_pools:",
    ]
    for name, count in pools:
        lines.append(
            f"  - {{name: {name}, role: gpu, count: {count}, datacenter: dc1, "
            "hardware: {gpu: {model: L40S, count: 4}}, fabrics: [mgmt, compute], "
            "bmc: {fabric: bmc, credentials: 'secret://bmc/{host}'}}"
        )
    return "\n".join(lines) + "\n"
