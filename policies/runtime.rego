# METADATA
# scope: package
# title: Per-request authorization at run time
# description: >-
#   Decides one request (tenant, action, resource, today, host country) against the site
#   loaded as data.aifactory.site. The request is allowed only when no reason to deny exists;
#   each reason is a stable code that the decision log records.
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Grant the tenant the action, clear the tenant, or run the request inside the residency.
package aifactory.runtime

import rego.v1

import data.aifactory.lib

_site := data.aifactory.site

# contribute: give feedback on a past decision into the dataset (the owner, or a grant for it);
# version: make a new version of the dataset where its data is stored (the owner: the site acts for
# the owner, and no grant names it), host_country being each country a copy of the version lands in.
_actions := {
	"dataset": {"read": true, "train": true, "contribute": true, "version": true},
	"model": {"infer": true, "read": true, "export": true},
}

_resources contains {"id": sprintf("dataset/%s", [name]), "record": record, "residency": lib.dataset_residency(_site, name)} if {
	some name, record in _site.datasets
}

_resources contains {"id": sprintf("model/%s", [name]), "record": record, "residency": lib.model_residency(_site, record)} if {
	some name, record in _site.models
}

# Facts about the site that do not change between requests, as lookup tables. The authorizer
# evaluates this once per site and loads it back as data.aifactory.compiled (the tests do the same
# with `with`), so a request costs a few lookups.
compiled := {
	"owner": {r.id: r.record.owner | some r in _resources},
	"classification_rank": {r.id: lib.classification_rank(r.record.classification) | some r in _resources},
	"residency": {r.id: {c: true | some c in r.residency} | some r in _resources},
	"clearance_rank": {name: lib.clearance_rank(t.clearance) | some name, t in _site.tenants},
	"grants": {key: _grant_facts(tenant, resource, action) |
		some g in _site.access
		some action in g.actions
		tenant := g.tenant
		resource := g.resource
		key := _grant_key(tenant, resource, action)
	},
}

_grant_key(tenant, resource, action) := concat(" ", [tenant, resource, action])

# Every grant of the tenant for the action on the resource: its expiry and destination countries.
_grant_facts(tenant, resource, action) := [{"expires": object.get(g, "expires", null), "to": {c: true | some c in lib.countries_of(object.get(g, "to", ""))}} |
	some g in _site.access
	g.tenant == tenant
	g.resource == resource
	action in g.actions
]

_facts := data.aifactory.compiled

_owner := _facts.owner[input.resource]

_grants := _facts.grants[_grant_key(input.tenant, input.resource, input.action)]

_live_grant contains grant if {
	some grant in _grants
	_unexpired(grant.expires)
}

_unexpired(expires) if expires == null

_unexpired(expires) if expires >= input.today

# Export always needs a live export grant (it names the destination), owners included.
_needs_grant if input.action == "export"

_needs_grant if _owner != input.tenant

_in_residency if _facts.residency[input.resource][input.host_country]

# Where this request may run: inside the residency, and for export inside a live grant's destination.
_permitted if {
	input.action != "export"
	_in_residency
}

_permitted if {
	input.action == "export"
	_in_residency
	some grant in _live_grant
	grant.to[input.host_country]
}

# Without a live export grant there is no destination to check (no-grant or grant-expired says why).
_permitted if {
	input.action == "export"
	count(_live_grant) == 0
}

# METADATA
# title: Unknown tenant
# description: The requesting tenant is declared in the site.
# custom:
#   controls: [IA-2]
#   severity: high
#   remediation: Declare the tenant in the site spec, or fix the token's subject.
reasons contains "unknown-tenant" if not _facts.clearance_rank[input.tenant]

# METADATA
# title: Unknown resource
# description: The resource is a dataset or model declared in the site.
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Name a declared dataset/<name> or model/<name>.
reasons contains "unknown-resource" if not _owner

# METADATA
# title: Action not defined for the resource
# description: Datasets allow read, train, contribute and version; models allow infer, read and export.
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Use an action the resource kind supports.
reasons contains "unknown-action" if not _actions[input.kind][input.action]

# METADATA
# title: No grant
# description: A tenant acts only as the owner or through a grant for that action (export always through a grant).
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Add an access grant for the tenant, resource and action.
reasons contains "no-grant" if {
	_owner
	_needs_grant
	not _grants
}

# METADATA
# title: Grant expired
# description: An expired grant is no grant.
# custom:
#   controls: [AC-2(3)]
#   severity: high
#   remediation: Renew the grant with a new expiry, approved again.
reasons contains "grant-expired" if {
	_needs_grant
	_grants
	count(_live_grant) == 0
}

# METADATA
# title: Clearance below classification
# description: Everyone, owners included, holds a clearance at least the resource's classification.
# custom:
#   controls: [AC-3(3)]
#   severity: high
#   remediation: Raise the tenant's clearance after vetting, or use a less classified resource.
reasons contains "clearance-below-classification" if {
	_facts.clearance_rank[input.tenant] < _facts.classification_rank[input.resource]
}

# METADATA
# title: Host country unknown
# description: A request names the country of the host it runs on; without it residency cannot be proven.
# custom:
#   controls: [AC-4]
#   severity: high
#   remediation: Configure the serving or training host with its country (from the plan).
reasons contains "host-country-unknown" if not is_string(input.host_country)

# METADATA
# title: Outside the residency
# description: >-
#   The request runs in a country inside the resource's residency (for export: inside the grant's
#   destination and the model's residency).
# custom:
#   controls: [AC-4]
#   severity: critical
#   remediation: Run the request on a host inside the residency, or export only to a granted place inside it.
reasons contains "outside-residency" if {
	_owner
	is_string(input.host_country)
	not _permitted
}

_reasons := reasons

allow if count(_reasons) == 0

# The answer: allow, and the set of reasons (serialized as a sorted array).
decision := {"allow": count(_reasons) == 0, "reasons": _reasons}
