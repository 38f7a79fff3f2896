# METADATA
# scope: package
# title: Test fixture shared by the policy tests
# description: >-
#   A small site that every policy allows: one datacenter in NG, encrypted storage, a cleared
#   owner, a grant inside the residency. Each test changes one thing and asserts the whole result.
# custom:
#   controls: [CA-2]
#   severity: info
#   remediation: Nothing to remediate; test data only.
package aifactory.fixture_test

import rego.v1

site := {
	"name": "t",
	"jurisdiction": "ECOWAS",
	"air_gapped": true,
	"datacenters": {"dc1": {"country": "NG", "region": "NG-FC"}, "dc2": {"country": "GH", "region": null}},
	"pools": {
		"gpu": {"role": "gpu", "datacenter": "dc1", "count": 2},
		"edge": {"role": "cpu", "datacenter": "dc2", "count": 1},
	},
	"hosts": {
		"t-gpu-001": "dc1",
		"t-gpu-002": "dc1",
		"t-edge-001": "dc2",
	},
	"storage": {
		"lake": {"kind": "lustre", "datacenter": "dc1", "encrypted_at_rest": true, "replicas": ["lake-dr"]},
		"lake-dr": {"kind": "ceph", "datacenter": "dc1", "encrypted_at_rest": true, "replicas": []},
		"scratch": {"kind": "nfs", "datacenter": "dc2", "encrypted_at_rest": false, "replicas": []},
	},
	"tenants": {
		"health": {"clearance": "secret", "pools": ["gpu"]},
		"research": {"clearance": "internal", "pools": ["gpu", "edge"]},
	},
	"datasets": {
		"records": {"owner": "health", "classification": "confidential", "residency": "NG", "storage": "lake"},
		"weather": {"owner": "research", "classification": "public", "residency": "ECOWAS", "storage": "scratch"},
	},
	"models": {
		"triage": {
			"owner": "health", "classification": "secret", "trained_on": ["records"],
			"storage": "lake", "serve_on": ["gpu"],
		},
		"forecast": {
			"owner": "research", "classification": "public", "trained_on": ["weather"],
			"storage": "scratch", "serve_on": ["gpu", "edge"],
		},
	},
	"access": [
		{
			"tenant": "health", "resource": "model/triage", "kind": "model", "name": "triage",
			"actions": ["export"], "expires": "2030-12-31", "to": "NG", "approved_by": "ciso@t.example",
		},
		{
			"tenant": "health", "resource": "model/forecast", "kind": "model", "name": "forecast",
			"actions": ["infer", "export"], "expires": null, "to": "GH", "approved_by": null,
		},
		{
			"tenant": "health", "resource": "dataset/weather", "kind": "dataset", "name": "weather",
			"actions": ["read"], "expires": "2026-06-30", "to": null, "approved_by": null,
		},
	],
	"egress": [],
	"today": "2026-01-15",
}

# The site with `patch` merged in (objects merge key by key; anything else is replaced).
with_changes(patch) := object.union(site, patch)
