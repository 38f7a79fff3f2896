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

_actions := {"dataset": {"read": true, "train": true}, "model": {"infer": true, "read": true, "export": true}}

# The caller splits "model/<name>" into kind and name; the collection is looked up, not scanned.
_collections := {"dataset": "datasets", "model": "models"}

_kind := input.kind

_record := _site[_collections[_kind]][input.name]

_owner if _record.owner == input.tenant

# Grants of this tenant for this action on this resource, whether expired or not.
_grants contains grant if {
	some grant in _site.access
	grant.tenant == input.tenant
	grant.resource == input.resource
	input.action in grant.actions
}

_live(grant) if not grant.expires

_live(grant) if grant.expires >= input.today

_live_grants contains grant if {
	some grant in _grants
	_live(grant)
}

# Export always needs a live export grant (it names the destination), owners included.
_needs_grant if input.action == "export"

_needs_grant if not _owner

_residency := lib.model_residency(_site, _record) if _kind == "model"

_residency := lib.dataset_residency(_site, input.name) if _kind == "dataset"

# Where an export may go: inside a live export grant's destination and the model's residency.
_export_places := {c | some grant in _live_grants; some c in lib.countries_of(grant.to)} & _residency

# METADATA
# title: Unknown tenant
# description: The requesting tenant is declared in the site.
# custom:
#   controls: [IA-2]
#   severity: high
#   remediation: Declare the tenant in the site spec, or fix the token's subject.
reasons contains "unknown-tenant" if not _site.tenants[input.tenant]

# METADATA
# title: Unknown resource
# description: The resource is a dataset or model declared in the site.
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Name a declared dataset/<name> or model/<name>.
reasons contains "unknown-resource" if not _record

# METADATA
# title: Action not defined for the resource
# description: Datasets allow read and train; models allow infer, read and export.
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Use an action the resource kind supports.
reasons contains "unknown-action" if not _actions[_kind][input.action]

# METADATA
# title: No grant
# description: A tenant acts only as the owner or through a grant for that action (export always through a grant).
# custom:
#   controls: [AC-3]
#   severity: high
#   remediation: Add an access grant for the tenant, resource and action.
reasons contains "no-grant" if {
	_record
	_needs_grant
	count(_grants) == 0
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
	count(_grants) > 0
	count(_live_grants) == 0
}

# METADATA
# title: Clearance below classification
# description: Everyone, owners included, holds a clearance at least the resource's classification.
# custom:
#   controls: [AC-3(3)]
#   severity: high
#   remediation: Raise the tenant's clearance after vetting, or use a less classified resource.
reasons contains "clearance-below-classification" if {
	lib.clearance_rank(object.get(_site.tenants, [input.tenant, "clearance"], "none")) < lib.classification_rank(_record.classification)
}

# Where this request may run: the residency, or for export the grant's destination within it.
_permitted_countries := _export_places if input.action == "export"

else := _residency

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
	_record
	is_string(input.host_country)
	not input.host_country in _permitted_countries
}

allow if count(reasons) == 0

decision := {"allow": allow, "reasons": sort([r | some r in reasons])} if allow

else := {"allow": false, "reasons": sort([r | some r in reasons])}
