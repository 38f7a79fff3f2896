"""The plan: SitePlan, stable address allocation, diff.

`SitePlan` and its sections (aifactory.plan.model) need only the standard library: nodes load a plan
with them. The builders need the spec (pydantic, the places data), so they load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aifactory.plan.model import Host, SitePlan

if TYPE_CHECKING:
    from aifactory.plan.build import PlannedSite, build_plan, plan_site

__all__ = ["Host", "PlannedSite", "SitePlan", "build_plan", "plan_site"]
_BUILDERS = ("PlannedSite", "build_plan", "plan_site")


def __getattr__(name: str) -> Any:
    if name in _BUILDERS:
        from aifactory.plan import build

        return getattr(build, name)
    raise AttributeError(f"module 'aifactory.plan' has no attribute {name!r}")
