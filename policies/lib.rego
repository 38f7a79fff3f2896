# METADATA
# scope: package
# title: Shared helpers for the aifactory policies
# description: >-
#   Places (countries and blocs), the classification order, residency and the one constructor
#   of structured violations. The places data (data.aifactory) is the file the site validator
#   also reads; rule annotations (data.aifactory.annotations) are parsed from the METADATA
#   blocks of the policies by aifactory.policy and loaded beside it, so a control ID is
#   written once, in the METADATA of its rule.
# custom:
#   controls: [PL-2]
#   severity: info
#   remediation: Nothing to remediate; this package only holds helpers.
package aifactory.lib

import rego.v1

# The countries a place stands for: a bloc is its members, a country itself, anything else nothing.
countries_of(place) := members if {
	bloc := data.aifactory.blocs[place]
	members := {c | some c in bloc}
} else := {place} if {
	data.aifactory.country_index[place]
} else := set()

# Rank of a resource's classification. An unknown label ranks above the top (most protected).
classification_rank(label) := _rank[label] if {
	_rank[label]
} else := count(data.aifactory.classifications)

# Rank of a tenant's clearance. An unknown label ranks below the bottom (cleared for nothing).
clearance_rank(label) := _rank[label] if {
	_rank[label]
} else := -1

# Label -> its position in the classification order (a rule, so evaluated once per query).
_rank := {label: i | some i, label in data.aifactory.classifications}

# The country of a storage system (that of its datacenter); "" when it cannot be resolved.
storage_country(site, name) := site.datacenters[site.storage[name].datacenter].country if {
	site.datacenters[site.storage[name].datacenter].country
} else := ""

# Every storage system that holds a copy of what lives on `name`: itself and its replicas.
copies_of(site, name) := {name} | {r | some r in object.get(site.storage, [name, "replicas"], [])}

# The countries a dataset may be stored in; an unresolvable dataset may be stored nowhere.
dataset_residency(site, name) := countries_of(site.datasets[name].residency) if {
	site.datasets[name]
} else := set()

# A model's residency: the intersection of its training datasets' residencies; a model trained on
# nothing stays in the jurisdiction. An empty intersection means nowhere.
model_residency(site, model) := intersection(residencies) if {
	count(model.trained_on) > 0
	residencies := {r | some d in model.trained_on; r := dataset_residency(site, d)}
} else := countries_of(site.jurisdiction)

# Where a node pool runs: the country of its datacenter; "" when it cannot be resolved.
pool_country(site, name) := site.datacenters[site.pools[name].datacenter].country if {
	site.datacenters[site.pools[name].datacenter].country
} else := ""

# A set of countries as sorted, comma-separated text for messages ("nowhere" when empty).
places_text(countries) := concat(", ", sort([c | some c in countries])) if {
	count(countries) > 0
} else := "nowhere"

# Lookups over the site under check (input), each computed once per evaluation: within a query
# rules are cached and function calls are not, so the site rules use these in their loops.
# A key that is missing here is a reference that does not resolve: callers default to "" or the
# empty set, which fails the check.
input_storage_country[name] := storage_country(input, name) if some name, _ in input.storage

input_pool_country[name] := pool_country(input, name) if some name, _ in input.pools

input_copies[name] := copies_of(input, name) if some name, _ in input.storage

input_dataset_residency[name] := dataset_residency(input, name) if some name, _ in input.datasets

input_model_residency[name] := model_residency(input, model) if some name, model in input.models

# Ranks of every dataset's and model's classification ("dataset/<name>") and tenant's clearance.
input_resource_rank[id] := classification_rank(record.classification) if {
	some kind, collection in {"dataset": input.datasets, "model": input.models}
	some name, record in collection
	id := concat("/", [kind, name])
}

input_tenant_rank[name] := clearance_rank(tenant.clearance) if some name, tenant in input.tenants

# The one constructor of a violation. Control and severity come from the rule's METADATA.
violation(package_name, rule, resource, msg) := {
	"rule": id,
	"control": meta.controls[0],
	"controls": meta.controls,
	"severity": meta.severity,
	"resource": resource,
	"msg": msg,
} if {
	id := concat(".", [package_name, rule])
	meta := _annotation(id)
}

_annotation(id) := data.aifactory.annotations[id] if {
	data.aifactory.annotations[id].controls[0]
} else := {"controls": ["UNANNOTATED"], "severity": "critical"}
