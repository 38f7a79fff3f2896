"""The starter spec `aifactory init` writes: small, valid, and commented for a first edit."""

from __future__ import annotations

from aifactory.errors import UsageError
from aifactory.spec.model import NAME_PATTERN, PLACE_PATTERN
from aifactory.spec.places import load_places

_TEMPLATE = """\
# Site spec for {name}: see docs/site-spec.md for every field.
schema: aifactory.site/v1
site:
  name: {name}
  jurisdiction: {jurisdiction}          # everything must stay inside this place
  air_gapped: true
datacenters:
  - name: dc1
    country: {country}
fabrics:
  - {{name: mgmt, kind: ethernet, purpose: management, cidr: 10.10.0.0/24}}
  - {{name: compute, kind: ethernet, purpose: compute, cidr: 10.20.0.0/24}}
  - {{name: bmc, kind: ethernet, purpose: bmc, cidr: 10.9.0.0/24}}
node_pools:
  - name: control
    role: control
    count: 1
    datacenter: dc1
    fabrics: [mgmt, bmc]
  - name: gpu
    role: gpu
    count: 2
    datacenter: dc1
    hardware:
      gpu: {{model: H100-SXM5-80GB, count: 8}}
    fabrics: [mgmt, compute]
    bmc: {{protocol: redfish, fabric: bmc, credentials: "secret://bmc/{{host}}"}}
storage:
  - name: share
    kind: nfs
    datacenter: dc1
    capacity_tib: 10
    encrypted_at_rest: true
    mount_path: /share
tenants:
  - {{name: team, clearance: confidential}}
datasets: []
models: []
access: []
egress:
  allow: []
"""


def starter_spec(name: str, jurisdiction: str) -> str:
    import re

    places = load_places()
    if not re.match(NAME_PATTERN, name):
        raise UsageError(
            f"'{name}' is not a site name: a lowercase letter, then lowercase letters, digits or "
            "'-', at most 20 characters"
        )
    if not re.match(PLACE_PATTERN, jurisdiction) or not places.countries_of(jurisdiction):
        raise UsageError(f"unknown jurisdiction '{jurisdiction}': give a country code (NG) or a bloc (EU)")
    country = jurisdiction if places.is_country(jurisdiction) else places.countries_of(jurisdiction)[0]
    return _TEMPLATE.format(name=name, jurisdiction=jurisdiction, country=country)
