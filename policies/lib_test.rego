package aifactory.lib_test

import rego.v1

import data.aifactory.fixture_test.site
import data.aifactory.lib

test_countries_of_country_bloc_and_unknown if {
	lib.countries_of("NG") == {"NG"}
	lib.countries_of("NORDIC") == {"DK", "FI", "IS", "NO", "SE"}
	lib.countries_of("XX") == set()
}

test_unknown_labels_rank_fail_safe if {
	lib.classification_rank("secret") == 3
	lib.classification_rank("unheard-of") == 5
	lib.clearance_rank("unheard-of") == -1
}

test_model_residency_is_intersection if {
	lib.model_residency(site, site.models.triage) == {"NG"}
	both := {"trained_on": ["records", "weather"]}
	lib.model_residency(site, both) == {"NG"}
	lib.model_residency(site, {"trained_on": []}) == lib.countries_of("ECOWAS")
	lib.model_residency(site, {"trained_on": ["missing"]}) == set()
}

test_storage_and_pool_countries if {
	lib.storage_country(site, "scratch") == "GH"
	lib.storage_country(site, "missing") == ""
	lib.pool_country(site, "edge") == "GH"
	lib.copies_of(site, "lake") == {"lake", "lake-dr"}
}

test_violation_takes_control_and_severity_from_annotations if {
	lib.violation("locality", "datacenter_outside_jurisdiction", "datacenter/x", "m") == {
		"rule": "locality.datacenter_outside_jurisdiction",
		"control": data.aifactory.annotations["locality.datacenter_outside_jurisdiction"].controls[0],
		"controls": data.aifactory.annotations["locality.datacenter_outside_jurisdiction"].controls,
		"severity": "critical",
		"resource": "datacenter/x",
		"msg": "m",
	}
}

test_unannotated_rule_is_loud if {
	v := lib.violation("locality", "no_such_rule", "x/y", "m")
	v.control == "UNANNOTATED"
	v.severity == "critical"
}
