package aifactory.locality_test

import rego.v1

import data.aifactory.fixture_test
import data.aifactory.lib
import data.aifactory.locality

_v(rule, resource, msg) := lib.violation("locality", rule, resource, msg)

test_fixture_is_allowed if {
	count(locality.deny) == 0 with input as fixture_test.site
}

test_datacenter_abroad_denied if {
	site := fixture_test.with_changes({
		"datacenters": {"dc3": {"country": "FR", "region": null}},
		"hosts": {"t-far-001": "dc3"},
	})
	locality.deny == {_v(
		"datacenter_outside_jurisdiction", "datacenter/dc3",
		"datacenter dc3 is in FR, outside the jurisdiction ECOWAS (1 hosts)",
	)} with input as site
}

test_datacenter_in_bloc_member_allowed if {
	site := fixture_test.with_changes({"datacenters": {"dc3": {"country": "SN", "region": null}}})
	count(locality.deny) == 0 with input as site
}

test_dataset_on_foreign_storage_denied if {
	site := fixture_test.with_changes({"datasets": {"records": {"storage": "scratch"}}})
	locality.deny == {
		_v("dataset_outside_residency", "dataset/records", "dataset records is stored on scratch in GH, outside its residency NG"),
		# the model trained on it is unaffected: it lives on lake
	} with input as site
}

test_dataset_replica_abroad_denied if {
	site := fixture_test.with_changes({"storage": {"lake-dr": {"datacenter": "dc2"}}})
	locality.deny == {
		_v("dataset_replica_outside_residency", "dataset/records", "dataset records is replicated to lake-dr in GH, outside its residency NG"),
		_v("model_stored_outside_residency", "model/triage", "model triage is stored on lake-dr in GH, outside its residency (NG)"),
	} with input as site
}

test_replica_inside_bloc_residency_allowed if {
	site := fixture_test.with_changes({"datasets": {"records": {"residency": "ECOWAS"}}, "storage": {"lake-dr": {"datacenter": "dc2"}}})
	count(locality.deny) == 0 with input as site
}

test_model_stored_outside_residency_denied if {
	site := fixture_test.with_changes({"models": {"triage": {"storage": "scratch"}}})
	locality.deny == {_v(
		"model_stored_outside_residency", "model/triage",
		"model triage is stored on scratch in GH, outside its residency (NG)",
	)} with input as site
}

test_model_with_disjoint_training_data_may_be_stored_nowhere if {
	site := fixture_test.with_changes({
		"datasets": {"weather": {"residency": "GH"}},
		"models": {"triage": {"trained_on": ["records", "weather"], "storage": "lake"}},
	})
	locality.deny == {
		_v("model_stored_outside_residency", "model/triage", "model triage is stored on lake in NG, outside its residency (nowhere)"),
		_v("model_stored_outside_residency", "model/triage", "model triage is stored on lake-dr in NG, outside its residency (nowhere)"),
		_v("model_served_outside_residency", "model/triage", "model triage is served on pool gpu in NG, outside its residency (nowhere)"),
		# forecast, trained on weather alone, now lives in GH only
		_v("model_served_outside_residency", "model/forecast", "model forecast is served on pool gpu in NG, outside its residency (GH)"),
	} with input as site
}

test_model_served_outside_residency_denied if {
	site := fixture_test.with_changes({"models": {"triage": {"serve_on": ["gpu", "edge"]}}})
	locality.deny == {_v(
		"model_served_outside_residency", "model/triage",
		"model triage is served on pool edge in GH, outside its residency (NG)",
	)} with input as site
}

test_model_served_inside_bloc_residency_allowed if {
	count(locality.deny) == 0 with input as fixture_test.with_changes({"models": {"forecast": {"serve_on": ["edge"]}}})
}
