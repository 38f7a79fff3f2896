# METADATA
# scope: package
# title: Access to datasets and models
# description: >-
#   Owners and grantees are cleared for what they touch; export grants stay inside the model's
#   residency; a model is classified at least as high as the data it was trained on.
# custom:
#   controls: [AC-3, AC-4, AC-16]
#   severity: high
#   remediation: Raise the clearance, drop the grant, or correct the classification.
package aifactory.access

import rego.v1

import data.aifactory.lib

_violation(rule, resource, msg) := lib.violation("access", rule, resource, msg)

# Every dataset and model by its resource id ("dataset/<name>", "model/<name>").
_records[id] := record if {
	some name, record in input.datasets
	id := concat("/", ["dataset", name])
}

_records[id] := record if {
	some name, record in input.models
	id := concat("/", ["model", name])
}

_clearance(tenant) := object.get(input.tenants, [tenant, "clearance"], "none")

# A tenant's clearance rank is below a resource's classification rank (unknown tenants rank below
# everything, unknown resources above everything).
_below(tenant, id) if {
	object.get(lib.input_tenant_rank, tenant, -1) < object.get(lib.input_resource_rank, id, 1000)
}

# METADATA
# title: Grant to an uncleared tenant
# description: A tenant granted access to a dataset or model holds a clearance at least its classification.
# custom:
#   controls: [AC-3(3)]
#   severity: high
#   remediation: Remove the grant, or raise the tenant's clearance after vetting.
deny contains result if {
	some grant in input.access
	_below(grant.tenant, grant.resource)
	record := object.get(_records, grant.resource, {"classification": "unknown"})
	clearance := _clearance(grant.tenant)
	msg := sprintf("tenant %s (clearance %s) is granted %s on %s classified %s", [grant.tenant, clearance, concat(", ", grant.actions), grant.resource, record.classification])
	result := _violation("grant_uncleared", sprintf("access/%s/%s", [grant.tenant, grant.resource]), msg)
}

# METADATA
# title: Uncleared owner
# description: The owner of a dataset or model holds a clearance at least its classification.
# custom:
#   controls: [AC-3(3)]
#   severity: high
#   remediation: Give the resource to a cleared owner, or raise the owner's clearance after vetting.
deny contains result if {
	some id, record in _records
	_below(record.owner, id)
	clearance := _clearance(record.owner)
	msg := sprintf("%s is owned by tenant %s (clearance %s) but classified %s", [replace(id, "/", " "), record.owner, clearance, record.classification])
	result := _violation("owner_uncleared", id, msg)
}

# METADATA
# title: Export outside the model's residency
# description: An export grant's destination lies inside the exported model's residency.
# custom:
#   controls: [AC-4]
#   severity: critical
#   remediation: Export only to places inside the residency of every dataset the model was trained on.
deny contains result if {
	some grant in input.access
	"export" in grant.actions
	residency := object.get(lib.input_model_residency, grant.name, set())
	destination := lib.countries_of(object.get(grant, "to", ""))
	outside := _outside(destination, residency)
	count(outside) > 0
	msg := sprintf("tenant %s may export %s to %s, outside the model's residency (%s)", [grant.tenant, grant.resource, lib.places_text(outside), lib.places_text(residency)])
	result := _violation("export_outside_residency", sprintf("access/%s/%s", [grant.tenant, grant.resource]), msg)
}

# Destination countries not in the residency; an unresolvable destination counts as outside.
_outside(destination, residency) := destination - residency if count(destination) > 0

else := {"an unknown place"}

# METADATA
# title: Model classified below its training data
# description: A model's classification is at least that of every dataset it was trained on.
# custom:
#   controls: [AC-16]
#   severity: high
#   remediation: Raise the model's classification to the highest classification of its training data.
deny contains result if {
	some name, model in input.models
	some dataset in model.trained_on
	lib.input_resource_rank[concat("/", ["model", name])] < object.get(lib.input_resource_rank, concat("/", ["dataset", dataset]), 1000)
	classification := object.get(input.datasets, [dataset, "classification"], "unknown")
	msg := sprintf("model %s is classified %s but was trained on dataset %s classified %s", [name, model.classification, dataset, classification])
	result := _violation("model_underclassified", sprintf("model/%s", [name]), msg)
}
