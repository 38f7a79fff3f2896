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
