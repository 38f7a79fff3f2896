package aifactory.egress_test

import rego.v1

import data.aifactory.egress
import data.aifactory.fixture_test
import data.aifactory.lib

_v(rule, resource, msg) := lib.violation("egress", rule, resource, msg)

_ntp(country) := {"name": "ntp", "endpoint": "ntp.gov.example:123", "country": country}

test_air_gapped_site_without_egress_allowed if {
	count(egress.deny) == 0 with input as fixture_test.site
}

test_connected_site_with_endpoint_inside_allowed if {
	site := fixture_test.with_changes({"air_gapped": false, "egress": [_ntp("GH")]})
	count(egress.deny) == 0 with input as site
}

test_endpoint_on_air_gapped_site_denied if {
	site := fixture_test.with_changes({"egress": [_ntp("NG")]})
	egress.deny == {_v(
		"endpoint_on_air_gapped_site", "egress/ntp",
		"egress endpoint ntp (ntp.gov.example:123) is declared on an air-gapped site",
	)} with input as site
}

test_endpoint_outside_jurisdiction_denied if {
	site := fixture_test.with_changes({"air_gapped": false, "egress": [_ntp("US")]})
	egress.deny == {_v(
		"endpoint_outside_jurisdiction", "egress/ntp",
		"egress endpoint ntp (ntp.gov.example:123) is in US, outside the jurisdiction ECOWAS",
	)} with input as site
}
