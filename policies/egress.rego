# METADATA
# scope: package
# title: Egress
# description: >-
#   Which endpoints outside the site may be reached. An air-gapped site reaches none; a connected
#   site reaches only endpoints inside its jurisdiction.
# custom:
#   controls: [SC-7]
#   severity: high
#   remediation: Remove the egress endpoint, or declare the site connected and keep endpoints in the jurisdiction.
package aifactory.egress

import rego.v1

import data.aifactory.lib

_violation(rule, resource, msg) := lib.violation("egress", rule, resource, msg)

# METADATA
# title: Egress endpoint on an air-gapped site
# description: An air-gapped site declares no egress endpoint at all.
# custom:
#   controls: [SC-7]
#   severity: critical
#   remediation: Remove the endpoint from egress.allow, or set site.air_gapped to false if the site is connected.
deny contains result if {
	input.air_gapped != false
	some endpoint in input.egress
	msg := sprintf("egress endpoint %s (%s) is declared on an air-gapped site", [endpoint.name, endpoint.endpoint])
	result := _violation("endpoint_on_air_gapped_site", sprintf("egress/%s", [endpoint.name]), msg)
}

# METADATA
# title: Egress endpoint outside the jurisdiction
# description: Every egress endpoint lies inside the site's jurisdiction.
# custom:
#   controls: [SC-7, AC-4]
#   severity: high
#   remediation: Use an endpoint inside the jurisdiction (for example a national NTP or mirror service).
deny contains result if {
	some endpoint in input.egress
	not endpoint.country in lib.countries_of(input.jurisdiction)
	msg := sprintf("egress endpoint %s (%s) is in %s, outside the jurisdiction %s", [endpoint.name, endpoint.endpoint, endpoint.country, input.jurisdiction])
	result := _violation("endpoint_outside_jurisdiction", sprintf("egress/%s", [endpoint.name]), msg)
}
