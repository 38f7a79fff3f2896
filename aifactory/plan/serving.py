"""What one host's inference server takes from the site plan, and its digest.

The server reads the plan once, when it starts (aifactory.runtime.server): its own host entry, the
models and where they are served, the tenants, datasets and grants its policy decides on, the site's
name and jurisdiction. It never reads the other hosts, the pools' counts and members, the plan's
summary, the spec's digest, the address allocation, the front door's backends, the monitoring
settings, the loop (a canary's settings come in its promotion record) or the economics (the front
door's port and address reach it in runtime.yaml). A plan that changes only those (a resize: hosts
added or removed) leaves every other host's server as it is, so the runtime role restarts the
service when this digest changes, not whenever plan.json does. (The runtime policy's input keeps the
pools' counts, aifactory.policy.inputs.site_document; no runtime rule reads them.)
"""

from __future__ import annotations

from typing import Any

from aifactory.chain import canonical_json
from aifactory.digests import sha256_bytes
from aifactory.plan.model import SitePlan

# What a pool says about its members (a resize changes them; no server reads them).
POOL_MEMBERS = ("count", "hosts")
# Top-level plan keys no server reads (its front door settings come from runtime.yaml).
NOT_SERVED = ("summary", "spec_digest", "allocation", "front_door", "monitoring", "loop", "economics")


def serving_views(plan: SitePlan) -> dict[str, dict[str, Any]]:
    """Each host's serving view: the plan with its own host entry only, and pools without members."""
    data = plan.to_dict()
    shared = {key: value for key, value in data.items() if key not in (*NOT_SERVED, "hosts")}
    shared["pools"] = [{k: v for k, v in pool.items() if k not in POOL_MEMBERS} for pool in shared["pools"]]
    return {host["name"]: {**shared, "hosts": [host]} for host in data["hosts"]}


def serving_digests(plan: SitePlan) -> dict[str, str]:
    """Each host's serving view's sha256, of its canonical JSON (the plan ids' form)."""
    return {
        host: "sha256:" + sha256_bytes(canonical_json(view).encode())
        for host, view in serving_views(plan).items()
    }
