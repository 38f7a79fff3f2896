package aifactory.access_test

import rego.v1

import data.aifactory.access
import data.aifactory.fixture_test
import data.aifactory.lib

_v(rule, resource, msg) := lib.violation("access", rule, resource, msg)

_grant(tenant, resource, actions, to) := {
	"tenant": tenant, "resource": resource, "kind": split(resource, "/")[0], "name": split(resource, "/")[1],
	"actions": actions, "expires": null, "to": to, "approved_by": null,
}

test_fixture_is_allowed if {
	count(access.deny) == 0 with input as fixture_test.site
}

test_grant_to_uncleared_tenant_denied if {
	site := fixture_test.with_changes({"access": [_grant("research", "dataset/records", ["read"], null)]})
	access.deny == {_v(
		"grant_uncleared", "access/research/dataset/records",
		"tenant research (clearance internal) is granted read on dataset/records classified confidential",
	)} with input as site
}

test_expired_grant_to_uncleared_tenant_still_denied if {
	grant := object.union(_grant("research", "model/triage", ["infer"], null), {"expires": "2020-01-01"})
	site := fixture_test.with_changes({"access": [grant]})
	access.deny == {_v(
		"grant_uncleared", "access/research/model/triage",
		"tenant research (clearance internal) is granted infer on model/triage classified secret",
	)} with input as site
}

test_grant_to_cleared_tenant_allowed if {
	site := fixture_test.with_changes({"access": [_grant("health", "dataset/weather", ["read", "train"], null)]})
	count(access.deny) == 0 with input as site
}

test_uncleared_owner_denied if {
	site := fixture_test.with_changes({"tenants": {"health": {"clearance": "confidential"}}})
	access.deny == {
		_v("owner_uncleared", "model/triage", "model triage is owned by tenant health (clearance confidential) but classified secret"),
		# health also holds an export grant on its own model: the same gap, as a grant
		_v("grant_uncleared", "access/health/model/triage", "tenant health (clearance confidential) is granted export on model/triage classified secret"),
	} with input as site
}

test_unknown_owner_is_uncleared if {
	site := fixture_test.with_changes({"datasets": {"weather": {"owner": "ghost"}}})
	access.deny == {_v(
		"owner_uncleared", "dataset/weather",
		"dataset weather is owned by tenant ghost (clearance none) but classified public",
	)} with input as site
}

test_export_outside_residency_denied if {
	site := fixture_test.with_changes({"access": [_grant("health", "model/triage", ["export"], "GH")]})
	access.deny == {_v(
		"export_outside_residency", "access/health/model/triage",
		"tenant health may export model/triage to GH, outside the model's residency (NG)",
	)} with input as site
}

test_export_to_bloc_partly_outside_denied if {
	site := fixture_test.with_changes({"access": [_grant("health", "model/triage", ["export"], "NORDIC")]})
	access.deny == {_v(
		"export_outside_residency", "access/health/model/triage",
		"tenant health may export model/triage to DK, FI, IS, NO, SE, outside the model's residency (NG)",
	)} with input as site
}

test_export_inside_residency_allowed if {
	site := fixture_test.with_changes({"access": [_grant("health", "model/forecast", ["export"], "SN")]})
	count(access.deny) == 0 with input as site
}

test_underclassified_model_denied if {
	site := fixture_test.with_changes({"models": {"triage": {"classification": "internal"}}})
	access.deny == {_v(
		"model_underclassified", "model/triage",
		"model triage is classified internal but was trained on dataset records classified confidential",
	)} with input as site
}

test_model_classified_as_its_data_allowed if {
	site := fixture_test.with_changes({"models": {"triage": {"classification": "confidential"}}})
	count(access.deny) == 0 with input as site
}
