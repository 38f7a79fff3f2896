package aifactory.encryption_test

import rego.v1

import data.aifactory.encryption
import data.aifactory.fixture_test
import data.aifactory.lib

_v(rule, resource, msg) := lib.violation("encryption", rule, resource, msg)

test_public_data_on_unencrypted_storage_allowed if {
	count(encryption.deny) == 0 with input as fixture_test.site
}

test_unencrypted_store_with_confidential_data_denied if {
	site := fixture_test.with_changes({"storage": {"lake": {"encrypted_at_rest": false}}})
	encryption.deny == {_v(
		"unencrypted_storage", "storage/lake",
		"storage lake is not encrypted at rest but holds dataset/records, model/triage",
	)} with input as site
}

test_internal_data_needs_no_encryption if {
	site := fixture_test.with_changes({"datasets": {"weather": {"classification": "internal"}}})
	count(encryption.deny) == 0 with input as site
}

test_unencrypted_replica_of_sensitive_store_denied if {
	site := fixture_test.with_changes({"storage": {"lake-dr": {"encrypted_at_rest": false}}})
	encryption.deny == {_v(
		"unencrypted_replica", "storage/lake-dr",
		"storage lake-dr is not encrypted at rest but replicates lake, which holds dataset/records, model/triage",
	)} with input as site
}

test_unencrypted_replica_of_public_store_allowed if {
	site := fixture_test.with_changes({"storage": {"scratch": {"replicas": ["lake-dr"]}, "lake-dr": {"encrypted_at_rest": false}, "lake": {"replicas": []}}})
	count(encryption.deny) == 0 with input as site
}
