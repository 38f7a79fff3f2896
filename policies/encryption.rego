# METADATA
# scope: package
# title: Encryption at rest
# description: >-
#   Storage that holds a dataset or model classified at or above the encryption threshold
#   (data.aifactory.encryption_required_from, confidential), and every replica of such storage,
#   is encrypted at rest.
# custom:
#   controls: [SC-28]
#   severity: high
#   remediation: Set encrypted_at_rest on the storage and its replicas (and encrypt the media).
package aifactory.encryption

import rego.v1

import data.aifactory.lib

_violation(rule, resource, msg) := lib.violation("encryption", rule, resource, msg)

# Missing from the data, the threshold falls to the lowest classification: encrypt everything.
_threshold := lib.classification_rank(data.aifactory.encryption_required_from) if {
	data.aifactory.encryption_required_from
} else := 0

# Each dataset and model classified at or above the threshold, with the storage that holds it.
_sensitive contains {"store": record.storage, "id": id} if {
	some kind, collection in {"dataset": input.datasets, "model": input.models}
	some name, record in collection
	id := concat("/", [kind, name])
	lib.input_resource_rank[id] >= _threshold
}

# Storage name -> the sorted names of the sensitive datasets and models it holds.
_sensitive_on[store] := held if {
	some store, _ in input.storage
	held := sort([item.id | some item in _sensitive; item.store == store])
	count(held) > 0
}

_unencrypted(store) if object.get(input.storage, [store, "encrypted_at_rest"], false) != true

# METADATA
# title: Unencrypted storage holds sensitive data
# description: Storage holding a dataset or model classified confidential or above is encrypted at rest.
# custom:
#   controls: [SC-28(1)]
#   severity: high
#   remediation: Set encrypted_at_rest to true on the storage and enable encryption on it.
deny contains result if {
	some store, held in _sensitive_on
	_unencrypted(store)
	msg := sprintf("storage %s is not encrypted at rest but holds %s", [store, concat(", ", held)])
	result := _violation("unencrypted_storage", sprintf("storage/%s", [store]), msg)
}

# METADATA
# title: Unencrypted replica of sensitive storage
# description: Every replica of storage holding data classified confidential or above is encrypted at rest.
# custom:
#   controls: [SC-28(1)]
#   severity: high
#   remediation: Set encrypted_at_rest to true on the replica, or stop replicating to it.
deny contains result if {
	some store, held in _sensitive_on
	some replica in object.get(input.storage, [store, "replicas"], [])
	_unencrypted(replica)
	msg := sprintf("storage %s is not encrypted at rest but replicates %s, which holds %s", [replica, store, concat(", ", held)])
	result := _violation("unencrypted_replica", sprintf("storage/%s", [replica]), msg)
}
