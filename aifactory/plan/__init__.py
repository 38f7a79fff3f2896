"""The plan: SitePlan, stable address allocation, diff."""

from aifactory.plan.build import PlannedSite, build_plan, plan_site
from aifactory.plan.model import Host, SitePlan

__all__ = ["Host", "PlannedSite", "SitePlan", "build_plan", "plan_site"]
