# METADATA
# scope: package
# title: Data and infrastructure locality
# description: >-
#   Hardware stays in the jurisdiction; each dataset, with every replica of its storage, stays in
#   its residency; a model is stored and served only inside the intersection of its training
#   datasets' residencies.
# custom:
#   controls: [SA-9(5), AC-4]
#   severity: high
#   remediation: Move the resource into the jurisdiction or residency, or change the declared place.
package aifactory.locality

import rego.v1

import data.aifactory.lib

_violation(rule, resource, msg) := lib.violation("locality", rule, resource, msg)

_jurisdiction := lib.countries_of(input.jurisdiction)

# METADATA
# title: Datacenter outside the jurisdiction
# description: >-
#   Every datacenter, and so every host and storage system in it, lies inside the site's
#   jurisdiction.
# custom:
#   controls: [SA-9(5)]
#   severity: critical
#   remediation: >-
#     Remove the datacenter (and its pools and storage) from the site, or move them to a
#     datacenter inside the jurisdiction.
deny contains result if {
	some name, dc in input.datacenters
	not dc.country in _jurisdiction
	hosts := count([host | input.hosts[host] == name])
	msg := sprintf("datacenter %s is in %s, outside the jurisdiction %s (%d hosts)", [name, dc.country, input.jurisdiction, hosts])
	result := _violation("datacenter_outside_jurisdiction", sprintf("datacenter/%s", [name]), msg)
}

# METADATA
# title: Dataset stored outside its residency
# description: The storage system that holds a dataset lies inside the dataset's residency.
# custom:
#   controls: [AC-4]
#   severity: critical
#   remediation: Put the dataset on storage in a datacenter inside its residency.
deny contains result if {
	some name, dataset in input.datasets
	country := object.get(lib.input_storage_country, dataset.storage, "")
	not country in lib.input_dataset_residency[name]
	msg := sprintf("dataset %s is stored on %s in %s, outside its residency %s", [name, dataset.storage, _shown(country), dataset.residency])
	result := _violation("dataset_outside_residency", sprintf("dataset/%s", [name]), msg)
}

# METADATA
# title: Dataset replica outside its residency
# description: Every replica of the storage that holds a dataset lies inside the dataset's residency.
# custom:
#   controls: [AC-4]
#   severity: critical
#   remediation: Drop the replica from the storage's replicas, or place the replica inside the residency.
deny contains result if {
	some name, dataset in input.datasets
	some replica in object.get(input.storage, [dataset.storage, "replicas"], [])
	country := object.get(lib.input_storage_country, replica, "")
	not country in lib.input_dataset_residency[name]
	msg := sprintf("dataset %s is replicated to %s in %s, outside its residency %s", [name, replica, _shown(country), dataset.residency])
	result := _violation("dataset_replica_outside_residency", sprintf("dataset/%s", [name]), msg)
}

# METADATA
# title: Model stored outside its residency
# description: >-
#   A model's weights, on its storage and every replica of it, stay inside the model's residency:
#   the intersection of its training datasets' residencies. An empty intersection allows nowhere.
# custom:
#   controls: [AC-4]
#   severity: critical
#   remediation: >-
#     Store the model on storage inside the residency of all its training data, or train it on
#     data whose residencies overlap.
deny contains result if {
	some name, model in input.models
	residency := lib.input_model_residency[name]
	some store in object.get(lib.input_copies, model.storage, {model.storage})
	country := object.get(lib.input_storage_country, store, "")
	not country in residency
	msg := sprintf("model %s is stored on %s in %s, outside its residency (%s)", [name, store, _shown(country), lib.places_text(residency)])
	result := _violation("model_stored_outside_residency", sprintf("model/%s", [name]), msg)
}

# METADATA
# title: Model served outside its residency
# description: Every node pool that serves a model lies inside the model's residency.
# custom:
#   controls: [AC-4]
#   severity: critical
#   remediation: Serve the model only from pools in datacenters inside its residency.
deny contains result if {
	some name, model in input.models
	residency := lib.input_model_residency[name]
	some pool in model.serve_on
	country := object.get(lib.input_pool_country, pool, "")
	not country in residency
	msg := sprintf("model %s is served on pool %s in %s, outside its residency (%s)", [name, pool, _shown(country), lib.places_text(residency)])
	result := _violation("model_served_outside_residency", sprintf("model/%s", [name]), msg)
}

_shown(country) := country if country != ""

else := "an unknown place"
