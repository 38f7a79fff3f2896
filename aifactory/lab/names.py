"""How every lab object is named: all names derive from the site name, so two labs never collide.

Namespaces live in the machine-wide `/run/netns`, so their names carry the site name
(`aif.<site>.fabric`, `aif.<site>.host.<host>`, `aif.<site>.bmc.<fabric>`); the dot cannot appear in a
site or host name, so no two sites can produce the same namespace name. Bridges and the fabric ends
of the veth pairs live inside the site's own fabric namespace, so their short names (Linux allows 15
characters) only need to be unique within one site. Interface names inside a host come from the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from aifactory.plan.model import Host, SitePlan

PREFIX = "aif."
IFNAMSIZ = 15


def site_prefix(site: str) -> str:
    """Every namespace of a site starts with this."""
    return f"{PREFIX}{site}."


@dataclass(frozen=True)
class LabNames:
    site: str

    @property
    def fabric_ns(self) -> str:
        return f"{site_prefix(self.site)}fabric"

    def host_ns(self, host: str) -> str:
        return f"{site_prefix(self.site)}host.{host}"

    def bmc_ns(self, fabric: str) -> str:
        return f"{site_prefix(self.site)}bmc.{fabric}"

    def bridge(self, plan: SitePlan, fabric: str) -> str:
        """`br-<fabric>` when it fits in 15 characters, else `br<index>` (index in the plan's fabrics)."""
        name = f"br-{fabric}"
        if len(name) <= IFNAMSIZ:
            return name
        index = [f.name for f in plan.fabrics].index(fabric)
        return f"br{index}"

    @staticmethod
    def host_port(plan: SitePlan, host: Host, interface_index: int) -> str:
        """The fabric-side end of a host's veth: `h<host index>i<interface index>`."""
        return f"h{plan.hosts.index(host)}i{interface_index}"

    @staticmethod
    def bmc_port(plan: SitePlan, fabric: str) -> str:
        index = [f.name for f in plan.fabrics].index(fabric)
        return f"bmc{index}"
