package aifactory.runtime_test

import rego.v1

import data.aifactory.fixture_test
import data.aifactory.runtime

# The decision the authorizer gives: facts compiled from the site once, then one request.
_decide(site, tenant, action, resource, country) := d if {
	facts := runtime.compiled with data.aifactory.site as site
	request := {
		"tenant": tenant, "action": action, "resource": resource,
		"kind": split(resource, "/")[0], "name": split(resource, "/")[1],
		"host_country": country, "today": "2026-01-15",
	}
	d := runtime.decision with data.aifactory.site as site with data.aifactory.compiled as facts with input as request
}

_allow := {"allow": true, "reasons": set()}

_deny(reasons) := {"allow": false, "reasons": reasons}

test_owner_infers_inside_residency_allowed if {
	_decide(fixture_test.site, "health", "infer", "model/triage", "NG") == _allow
}

test_grantee_infers_allowed if {
	_decide(fixture_test.site, "health", "infer", "model/forecast", "GH") == _allow
}

test_unknown_tenant_denied if {
	_decide(fixture_test.site, "ghost", "read", "dataset/weather", "GH") == _deny({"unknown-tenant", "no-grant"})
}

test_unknown_resource_denied if {
	_decide(fixture_test.site, "health", "read", "dataset/nothing", "NG") == _deny({"unknown-resource"})
}

test_unknown_action_denied if {
	_decide(fixture_test.site, "health", "train", "model/triage", "NG") == _deny({"unknown-action"})
}

test_no_grant_denied if {
	# health may read weather (a grant) but not train on it
	_decide(fixture_test.site, "health", "train", "dataset/weather", "GH") == _deny({"no-grant"})
}

test_grant_expired_denied if {
	# health's read grant on weather expired on 2026-06-30; ask on 2026-07-01
	facts := runtime.compiled with data.aifactory.site as fixture_test.site
	request := {
		"tenant": "health", "action": "read", "resource": "dataset/weather", "kind": "dataset",
		"name": "weather", "host_country": "GH", "today": "2026-07-01",
	}
	d := runtime.decision with data.aifactory.site as fixture_test.site with data.aifactory.compiled as facts with input as request
	d == _deny({"grant-expired"})
}

test_live_grant_allowed if {
	_decide(fixture_test.site, "health", "read", "dataset/weather", "SN") == _allow
}

test_owner_below_classification_denied if {
	site := fixture_test.with_changes({"tenants": {"health": {"clearance": "internal"}}})
	_decide(site, "health", "read", "dataset/records", "NG") == _deny({"clearance-below-classification"})
}

test_outside_residency_denied if {
	_decide(fixture_test.site, "health", "infer", "model/triage", "GH") == _deny({"outside-residency"})
}

test_host_country_unknown_denied if {
	_decide(fixture_test.site, "health", "infer", "model/triage", null) == _deny({"host-country-unknown"})
}

test_export_needs_grant_even_for_owner if {
	site := fixture_test.with_changes({"access": []})
	_decide(site, "health", "export", "model/triage", "NG") == _deny({"no-grant"})
}

test_export_to_granted_destination_allowed if {
	_decide(fixture_test.site, "health", "export", "model/triage", "NG") == _allow
}

test_export_outside_granted_destination_denied if {
	# forecast may live anywhere in ECOWAS, but the export grant names GH only
	_decide(fixture_test.site, "health", "export", "model/forecast", "SN") == _deny({"outside-residency"})
}

# Feedback (issue 29): contributing to a dataset is decided like reading it: owner or grant, clearance,
# residency of the host that stores it.
test_owner_contributes_inside_residency_allowed if {
	_decide(fixture_test.site, "health", "contribute", "dataset/records", "NG") == _allow
}

test_grantee_contributes_allowed if {
	site := fixture_test.with_changes({"access": [_dataset_grant("health", "weather", ["contribute"])]})
	_decide(site, "health", "contribute", "dataset/weather", "GH") == _allow
}

test_read_grant_does_not_let_contribute if {
	# health may read weather (a live grant on 2026-01-15), not add to it
	_decide(fixture_test.site, "health", "contribute", "dataset/weather", "GH") == _deny({"no-grant"})
}

test_contribute_below_classification_denied if {
	site := fixture_test.with_changes({"access": [_dataset_grant("research", "records", ["contribute"])]})
	_decide(site, "research", "contribute", "dataset/records", "NG") == _deny({"clearance-below-classification"})
}

test_contribute_outside_residency_denied if {
	_decide(fixture_test.site, "health", "contribute", "dataset/records", "GH") == _deny({"outside-residency"})
}

# A new version is made for the owner, once per country a copy of it lands in.
test_version_inside_residency_allowed if {
	_decide(fixture_test.site, "health", "version", "dataset/records", "NG") == _allow
}

test_version_outside_residency_denied if {
	_decide(fixture_test.site, "health", "version", "dataset/records", "GH") == _deny({"outside-residency"})
}

test_version_by_another_tenant_denied if {
	_decide(fixture_test.site, "research", "version", "dataset/weather", "GH") == _allow
	_decide(fixture_test.site, "health", "version", "dataset/weather", "GH") == _deny({"no-grant"})
}

test_version_not_an_action_on_models if {
	_decide(fixture_test.site, "health", "version", "model/triage", "NG") == _deny({"unknown-action"})
}

_dataset_grant(tenant, name, actions) := {
	"tenant": tenant, "resource": concat("/", ["dataset", name]), "kind": "dataset", "name": name,
	"actions": actions, "expires": null, "to": null, "approved_by": null,
}
