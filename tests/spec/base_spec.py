"""A small valid site that touches every section: broken specs are one edit away from it."""

BASE = """\
schema: aifactory.site/v1
site:
  name: base
  jurisdiction: NG
  air_gapped: true
datacenters:
  - name: dc1
    country: NG
    region: NG-FC
fabrics:
  - name: mgmt
    kind: ethernet
    purpose: management
    cidr: 10.10.0.0/24
  - name: compute
    kind: infiniband
    purpose: compute
    cidr: 10.20.0.0/24
    rails: 2
  - name: bmc
    kind: ethernet
    purpose: bmc
    cidr: 10.9.0.0/24
node_pools:
  - name: gpu
    role: gpu
    count: 4
    datacenter: dc1
    hardware:
      gpu: {model: H100-SXM5-80GB, count: 8}
    fabrics: [mgmt, compute]
    bmc:
      protocol: redfish
      fabric: bmc
      credentials: secret://bmc/{host}
  - name: ctl
    role: control
    count: 1
    datacenter: dc1
    fabrics: [mgmt, bmc]
storage:
  - name: lake
    kind: lustre
    datacenter: dc1
    capacity_tib: 100
    encrypted_at_rest: true
    mount_path: /lake
    mounted_by: [gpu]
    fabric: compute
    replicas: [lake-dr]
  - name: lake-dr
    kind: ceph
    datacenter: dc1
    capacity_tib: 100
    encrypted_at_rest: true
    mount_path: /lake-dr
  - name: objects
    kind: s3
    datacenter: dc1
    capacity_tib: 10
tenants:
  - name: health
    clearance: secret
    pools: [gpu]
  - name: research
    clearance: internal
datasets:
  - name: records
    owner: health
    classification: secret
    residency: NG
    storage: lake
    path: /health/records
  - name: images
    owner: health
    classification: internal
    residency: ECOWAS
    storage: lake
    path: /health/images
models:
  - name: triage
    owner: health
    trained_on: [records]
    classification: secret
    storage: lake
    serve_on: [gpu]
access:
  - tenant: research
    resource: dataset/images
    actions: [read, train]
    approved_by: ciso@health.example
    expires: 2030-06-30
  - tenant: health
    resource: model/triage
    actions: [infer, export]
    to: NG
egress:
  allow: []
"""
