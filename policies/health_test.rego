package aifactory.health_test

import rego.v1

import data.aifactory.health

# A GPU host that passes every check: each test changes one measurement of it.
_thresholds := {
	"allreduce-busbw": {
		"op": ">=",
		"unit": "",
		"value": 0.005
	},
	"clock-offset": {
		"op": "<=",
		"unit": "",
		"value": 1.0
	},
	"dcgm-diag-failures": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"disk-free": {
		"op": ">=",
		"unit": "",
		"value": 5
	},
	"fabric-unreachable": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"gpu-count": {
		"op": ">=",
		"unit": "",
		"value": 8
	},
	"gpu-ecc-uncorrectable": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"gpu-h2d-bandwidth": {
		"op": ">=",
		"unit": "",
		"value": 40
	},
	"gpu-hw-slowdown": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"gpu-memory-retirement-pending": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"gpu-memory-total": {
		"op": ">=",
		"unit": "",
		"value": 79
	},
	"gpu-model-mismatch": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"gpu-power-limit": {
		"op": ">=",
		"unit": "",
		"value": 700
	},
	"gpu-xid-events": {
		"op": "<=",
		"unit": "",
		"value": 0
	},
	"link-up": {
		"op": ">=",
		"unit": "",
		"value": 1
	},
	"inodes-free": {
		"op": ">=",
		"unit": "",
		"value": 5
	},
	"memory-available": {
		"op": ">=",
		"unit": "",
		"value": 10
	},
	"service-running": {
		"op": ">=",
		"unit": "",
		"value": 1
	},
	"storage-mounted-rw": {
		"op": ">=",
		"unit": "",
		"value": 1
	},
	"storage-read": {
		"op": ">=",
		"unit": "",
		"value": 20
	},
	"storage-write": {
		"op": ">=",
		"unit": "",
		"value": 5
	},
	"tcp-bandwidth": {
		"op": ">=",
		"unit": "",
		"value": 0.1
	}
}

_healthy := [{"check": c, "subject": "host", "value": v, "unit": "", "raw": "", "error": null} | some c, v in {
	"allreduce-busbw": 0.05,
	"clock-offset": 0.01,
	"dcgm-diag-failures": 0,
	"disk-free": 40,
	"fabric-unreachable": 0,
	"gpu-count": 8,
	"gpu-ecc-uncorrectable": 0,
	"gpu-h2d-bandwidth": 52,
	"gpu-hw-slowdown": 0,
	"gpu-memory-retirement-pending": 0,
	"gpu-memory-total": 80,
	"gpu-model-mismatch": 0,
	"gpu-power-limit": 700,
	"gpu-xid-events": 0,
	"inodes-free": 90,
	"link-up": 1,
	"memory-available": 50,
	"service-running": 1,
	"storage-mounted-rw": 1,
	"storage-read": 400,
	"storage-write": 70,
	"tcp-bandwidth": 1.2
}]

_host(measurements) := {
	"host": "n1", "reachable": true, "measurements": measurements, "thresholds": _thresholds,
	"expected": [c | some c, _ in _thresholds],
	"pool": {"bandwidth": [{"host": "n1", "value": 1.2, "threshold": _thresholds["tcp-bandwidth"]}, {"host": "n2", "value": 1.2, "threshold": _thresholds["tcp-bandwidth"]}]},
}

# The healthy measurements with `check` set to `value`.
_with(check, value) := [m | some m0 in _healthy; m := _replace(m0, check, value)]

_replace(m, check, value) := object.union(m, {"value": value}) if m.check == check

_replace(m, check, _) := m if m.check != check

_decide(doc) := d if {
	d := health.decision with input as doc
}

test_healthy_host_admitted if {
	d := _decide(_host(_healthy))
	d == {"host": "n1", "verdict": "admit", "reasons": [], "failures": set()}
}

test_service_running_crossed if {
	d := _decide(_host(_with("service-running", 0)))
	d.verdict == "drain"
	d.reasons == ["service-running"]
	d.failures == {{"check": "service-running", "subject": "host", "value": 0, "unit": "", "threshold": _thresholds["service-running"]}}
}

test_service_running_at_threshold_passes if {
	d := _decide(_host(_with("service-running", 1)))
	d.verdict == "admit"
}

test_clock_offset_crossed if {
	d := _decide(_host(_with("clock-offset", 5.0)))
	d.verdict == "drain"
	d.reasons == ["clock-offset"]
	d.failures == {{"check": "clock-offset", "subject": "host", "value": 5.0, "unit": "", "threshold": _thresholds["clock-offset"]}}
}

test_clock_offset_at_threshold_passes if {
	d := _decide(_host(_with("clock-offset", 1.0)))
	d.verdict == "admit"
}

test_disk_free_crossed if {
	d := _decide(_host(_with("disk-free", 2)))
	d.verdict == "drain"
	d.reasons == ["disk-free"]
	d.failures == {{"check": "disk-free", "subject": "host", "value": 2, "unit": "", "threshold": _thresholds["disk-free"]}}
}

test_disk_free_at_threshold_passes if {
	d := _decide(_host(_with("disk-free", 5)))
	d.verdict == "admit"
}

test_inodes_free_crossed if {
	d := _decide(_host(_with("inodes-free", 1)))
	d.verdict == "drain"
	d.reasons == ["inodes-free"]
	d.failures == {{"check": "inodes-free", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["inodes-free"]}}
}

test_inodes_free_at_threshold_passes if {
	d := _decide(_host(_with("inodes-free", 5)))
	d.verdict == "admit"
}

test_memory_available_crossed if {
	d := _decide(_host(_with("memory-available", 3)))
	d.verdict == "drain"
	d.reasons == ["memory-available"]
	d.failures == {{"check": "memory-available", "subject": "host", "value": 3, "unit": "", "threshold": _thresholds["memory-available"]}}
}

test_memory_available_at_threshold_passes if {
	d := _decide(_host(_with("memory-available", 10)))
	d.verdict == "admit"
}

test_storage_mounted_rw_crossed if {
	d := _decide(_host(_with("storage-mounted-rw", 0)))
	d.verdict == "drain"
	d.reasons == ["storage-mounted-rw"]
	d.failures == {{"check": "storage-mounted-rw", "subject": "host", "value": 0, "unit": "", "threshold": _thresholds["storage-mounted-rw"]}}
}

test_storage_mounted_rw_at_threshold_passes if {
	d := _decide(_host(_with("storage-mounted-rw", 1)))
	d.verdict == "admit"
}

test_storage_write_crossed if {
	d := _decide(_host(_with("storage-write", 1)))
	d.verdict == "drain"
	d.reasons == ["storage-write"]
	d.failures == {{"check": "storage-write", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["storage-write"]}}
}

test_storage_write_at_threshold_passes if {
	d := _decide(_host(_with("storage-write", 5)))
	d.verdict == "admit"
}

test_storage_read_crossed if {
	d := _decide(_host(_with("storage-read", 3)))
	d.verdict == "drain"
	d.reasons == ["storage-read"]
	d.failures == {{"check": "storage-read", "subject": "host", "value": 3, "unit": "", "threshold": _thresholds["storage-read"]}}
}

test_storage_read_at_threshold_passes if {
	d := _decide(_host(_with("storage-read", 20)))
	d.verdict == "admit"
}

test_fabric_unreachable_crossed if {
	d := _decide(_host(_with("fabric-unreachable", 1)))
	d.verdict == "drain"
	d.reasons == ["fabric-unreachable"]
	d.failures == {{"check": "fabric-unreachable", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["fabric-unreachable"]}}
}

test_fabric_unreachable_at_threshold_passes if {
	d := _decide(_host(_with("fabric-unreachable", 0)))
	d.verdict == "admit"
}

test_link_up_crossed if {
	d := _decide(_host(_with("link-up", 0)))
	d.verdict == "drain"
	d.reasons == ["link-up"]
}

test_link_up_at_threshold_passes if {
	d := _decide(_host(_with("link-up", 1)))
	d.verdict == "admit"
}

# The unreachable peer's own link is down: its fault, not this host's.
test_fabric_unreachable_excused_by_a_peer_link_down if {
	doc := object.union(_host(_with("fabric-unreachable", 1)), {"fabric": {"links_down": [{"host": "n2", "fabric": "host"}]}})
	d := _decide(doc)
	d.verdict == "admit"
	d.failures == {{"check": "fabric-unreachable", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["fabric-unreachable"]}}
}

# One peer's link down explains one unreachable peer, not two.
test_fabric_unreachable_past_the_peers_links_down if {
	doc := object.union(_host(_with("fabric-unreachable", 2)), {"fabric": {"links_down": [{"host": "n2", "fabric": "host"}]}})
	d := _decide(doc)
	d.reasons == ["fabric-unreachable"]
}

# A link down on another fabric explains nothing here.
test_fabric_unreachable_not_excused_by_another_fabric if {
	doc := object.union(_host(_with("fabric-unreachable", 1)), {"fabric": {"links_down": [{"host": "n2", "fabric": "storage"}]}})
	d := _decide(doc)
	d.reasons == ["fabric-unreachable"]
}

# The host whose own link is down fails both, whoever else is down.
test_fabric_unreachable_with_own_link_down if {
	measurements := [m | some m0 in _with("link-up", 0); m := _replace(m0, "fabric-unreachable", 1)]
	doc := object.union(_host(measurements), {"fabric": {"links_down": [{"host": "n1", "fabric": "host"}, {"host": "n2", "fabric": "host"}]}})
	d := _decide(doc)
	d.verdict == "drain"
	d.reasons == ["fabric-unreachable", "link-up"]
}

# The peer measured towards has its own link down: neither a slow nor a failed measurement is ours.
test_tcp_bandwidth_towards_a_peer_with_its_link_down_excused if {
	slow := [m | some m0 in _with("tcp-bandwidth", 0.001); m := object.union(m0, {"subject": _subject(m0, "n2")})]
	doc := object.union(_host(slow), {"fabric": {"links_down": [{"host": "n2", "fabric": "compute"}]}})
	_decide(doc).verdict == "admit"
	failed := [m | some m0 in _with("tcp-bandwidth", null); m := object.union(m0, {"subject": _subject(m0, "n2")})]
	_decide(object.union(_host(failed), {"fabric": {"links_down": [{"host": "n2", "fabric": "compute"}]}})).verdict == "admit"
	_decide(_host(failed)).reasons == ["measurement-missing"]
}

# Only the peer measured towards excuses it: another host down does not.
test_tcp_bandwidth_not_excused_by_another_host_down if {
	slow := [m | some m0 in _with("tcp-bandwidth", 0.001); m := object.union(m0, {"subject": _subject(m0, "n2")})]
	doc := object.union(_host(slow), {"fabric": {"links_down": [{"host": "n3", "fabric": "compute"}]}})
	_decide(doc).reasons == ["tcp-bandwidth"]
}

# Two slow ends: the slower is blamed. The stream towards a host whose link is limited is slowed by
# its acknowledgements (the lab under load: 0.078 towards a host limited to 20 Mbit/s, which measured 0.018).
test_tcp_bandwidth_towards_a_slower_peer_excused if {
	slow := [m | some m0 in _with("tcp-bandwidth", 0.078); m := object.union(m0, {"subject": _subject(m0, "n2")})]
	pool := {"bandwidth": [{"host": "n1", "value": 0.078, "threshold": _thresholds["tcp-bandwidth"]}, {"host": "n2", "value": 0.018, "threshold": _thresholds["tcp-bandwidth"]}]}
	d := _decide(object.union(_host(slow), {"pool": pool}))
	d.verdict == "admit"
	# still in the evidence: what was measured, and against what
	some f in d.failures
	f.check == "tcp-bandwidth"
	f.value == 0.078
}

# The slower end itself: its peer's measurement, slow but faster, excuses nothing of its own.
test_tcp_bandwidth_the_slower_end_is_drained if {
	slow := [m | some m0 in _with("tcp-bandwidth", 0.018); m := object.union(m0, {"subject": _subject(m0, "n2")})]
	pool := {"bandwidth": [{"host": "n1", "value": 0.018, "threshold": _thresholds["tcp-bandwidth"]}, {"host": "n2", "value": 0.078, "threshold": _thresholds["tcp-bandwidth"]}]}
	d := _decide(object.union(_host(slow), {"pool": pool}))
	d.reasons == ["tcp-bandwidth"]
}

# Only a slow and slower peer excuses: a healthy peer, an unmeasured one, a tie, or a slower host
# that is not the one measured towards does not.
test_tcp_bandwidth_not_excused_by_a_peer_that_is_not_slower if {
	slow := [m | some m0 in _with("tcp-bandwidth", 0.05); m := object.union(m0, {"subject": _subject(m0, "n2")})]
	every peers in [
		[{"host": "n2", "value": 1.2}],
		[{"host": "n2", "value": null}],
		[{"host": "n2", "value": 0.05}],
		[{"host": "n2", "value": 0.06}, {"host": "n3", "value": 0.01}],
	] {
		pool := {"bandwidth": [object.union(p, {"threshold": _thresholds["tcp-bandwidth"]}) | some p in peers]}
		_decide(object.union(_host(slow), {"pool": pool})).reasons == ["tcp-bandwidth"]
	}
}

# A host excused for its slow stream is not "own link slow": its slow collective is excused too.
test_slow_collective_and_stream_towards_the_slower_peer_both_excused if {
	ms := [m | some m0 in _with("allreduce-busbw", 0.001); m := object.union(_replace(m0, "tcp-bandwidth", 0.078), {"subject": _subject(m0, "n2")})]
	pool := {"bandwidth": [{"host": "n1", "value": 0.078, "threshold": _thresholds["tcp-bandwidth"]}, {"host": "n2", "value": 0.018, "threshold": _thresholds["tcp-bandwidth"]}]}
	_decide(object.union(_host(ms), {"pool": pool})).verdict == "admit"
}

_subject(m, peer) := peer if m.check == "tcp-bandwidth"

_subject(m, _) := m.subject if m.check != "tcp-bandwidth"

test_tcp_bandwidth_crossed if {
	d := _decide(_host(_with("tcp-bandwidth", 0.018)))
	d.verdict == "drain"
	d.reasons == ["tcp-bandwidth"]
	d.failures == {{"check": "tcp-bandwidth", "subject": "host", "value": 0.018, "unit": "", "threshold": _thresholds["tcp-bandwidth"]}}
}

test_tcp_bandwidth_at_threshold_passes if {
	d := _decide(_host(_with("tcp-bandwidth", 0.1)))
	d.verdict == "admit"
}

test_allreduce_busbw_crossed if {
	d := _decide(_host(_with("allreduce-busbw", 0.001)))
	d.verdict == "drain"
	d.reasons == ["allreduce-busbw"]
	d.failures == {{"check": "allreduce-busbw", "subject": "host", "value": 0.001, "unit": "", "threshold": _thresholds["allreduce-busbw"]}}
}

test_allreduce_busbw_at_threshold_passes if {
	d := _decide(_host(_with("allreduce-busbw", 0.005)))
	d.verdict == "admit"
}

test_gpu_count_crossed if {
	d := _decide(_host(_with("gpu-count", 7)))
	d.verdict == "keep-out"
	d.reasons == ["gpu-count"]
	d.failures == {{"check": "gpu-count", "subject": "host", "value": 7, "unit": "", "threshold": _thresholds["gpu-count"]}}
}

test_gpu_count_at_threshold_passes if {
	d := _decide(_host(_with("gpu-count", 8)))
	d.verdict == "admit"
}

test_gpu_model_mismatch_crossed if {
	d := _decide(_host(_with("gpu-model-mismatch", 1)))
	d.verdict == "drain"
	d.reasons == ["gpu-model-mismatch"]
	d.failures == {{"check": "gpu-model-mismatch", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["gpu-model-mismatch"]}}
}

test_gpu_model_mismatch_at_threshold_passes if {
	d := _decide(_host(_with("gpu-model-mismatch", 0)))
	d.verdict == "admit"
}

test_gpu_ecc_uncorrectable_crossed if {
	d := _decide(_host(_with("gpu-ecc-uncorrectable", 2)))
	d.verdict == "keep-out"
	d.reasons == ["gpu-ecc-uncorrectable"]
	d.failures == {{"check": "gpu-ecc-uncorrectable", "subject": "host", "value": 2, "unit": "", "threshold": _thresholds["gpu-ecc-uncorrectable"]}}
}

test_gpu_ecc_uncorrectable_at_threshold_passes if {
	d := _decide(_host(_with("gpu-ecc-uncorrectable", 0)))
	d.verdict == "admit"
}

test_gpu_memory_retirement_pending_crossed if {
	d := _decide(_host(_with("gpu-memory-retirement-pending", 1)))
	d.verdict == "keep-out"
	d.reasons == ["gpu-memory-retirement-pending"]
	d.failures == {{"check": "gpu-memory-retirement-pending", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["gpu-memory-retirement-pending"]}}
}

test_gpu_memory_retirement_pending_at_threshold_passes if {
	d := _decide(_host(_with("gpu-memory-retirement-pending", 0)))
	d.verdict == "admit"
}

test_gpu_xid_events_crossed if {
	d := _decide(_host(_with("gpu-xid-events", 3)))
	d.verdict == "keep-out"
	d.reasons == ["gpu-xid-events"]
	d.failures == {{"check": "gpu-xid-events", "subject": "host", "value": 3, "unit": "", "threshold": _thresholds["gpu-xid-events"]}}
}

test_gpu_xid_events_at_threshold_passes if {
	d := _decide(_host(_with("gpu-xid-events", 0)))
	d.verdict == "admit"
}

test_gpu_hw_slowdown_crossed if {
	d := _decide(_host(_with("gpu-hw-slowdown", 1)))
	d.verdict == "drain"
	d.reasons == ["gpu-hw-slowdown"]
	d.failures == {{"check": "gpu-hw-slowdown", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["gpu-hw-slowdown"]}}
}

test_gpu_hw_slowdown_at_threshold_passes if {
	d := _decide(_host(_with("gpu-hw-slowdown", 0)))
	d.verdict == "admit"
}

test_gpu_power_limit_crossed if {
	d := _decide(_host(_with("gpu-power-limit", 500)))
	d.verdict == "drain"
	d.reasons == ["gpu-power-limit"]
	d.failures == {{"check": "gpu-power-limit", "subject": "host", "value": 500, "unit": "", "threshold": _thresholds["gpu-power-limit"]}}
}

test_gpu_power_limit_at_threshold_passes if {
	d := _decide(_host(_with("gpu-power-limit", 700)))
	d.verdict == "admit"
}

test_gpu_memory_total_crossed if {
	d := _decide(_host(_with("gpu-memory-total", 60)))
	d.verdict == "keep-out"
	d.reasons == ["gpu-memory-total"]
	d.failures == {{"check": "gpu-memory-total", "subject": "host", "value": 60, "unit": "", "threshold": _thresholds["gpu-memory-total"]}}
}

test_gpu_memory_total_at_threshold_passes if {
	d := _decide(_host(_with("gpu-memory-total", 79)))
	d.verdict == "admit"
}

test_gpu_h2d_bandwidth_crossed if {
	d := _decide(_host(_with("gpu-h2d-bandwidth", 20)))
	d.verdict == "drain"
	d.reasons == ["gpu-h2d-bandwidth"]
	d.failures == {{"check": "gpu-h2d-bandwidth", "subject": "host", "value": 20, "unit": "", "threshold": _thresholds["gpu-h2d-bandwidth"]}}
}

test_gpu_h2d_bandwidth_at_threshold_passes if {
	d := _decide(_host(_with("gpu-h2d-bandwidth", 40)))
	d.verdict == "admit"
}

test_dcgm_diag_failures_crossed if {
	d := _decide(_host(_with("dcgm-diag-failures", 1)))
	d.verdict == "keep-out"
	d.reasons == ["dcgm-diag-failures"]
	d.failures == {{"check": "dcgm-diag-failures", "subject": "host", "value": 1, "unit": "", "threshold": _thresholds["dcgm-diag-failures"]}}
}

test_dcgm_diag_failures_at_threshold_passes if {
	d := _decide(_host(_with("dcgm-diag-failures", 0)))
	d.verdict == "admit"
}

test_host_unreachable if {
	doc := object.union(_host([]), {"reachable": false})
	d := _decide(doc)
	d.verdict == "drain"
	d.reasons == ["host-unreachable"]
}

test_measurement_missing_when_value_null if {
	d := _decide(_host(_with("clock-offset", null)))
	d.verdict == "drain"
	d.reasons == ["measurement-missing"]
	d.failures == {{"check": "clock-offset", "subject": "host", "value": null, "unit": "", "error": null}}
}

test_measurement_missing_when_not_reported if {
	measurements := [m | some m in _healthy; m.check != "disk-free"]
	d := _decide(_host(measurements))
	d.verdict == "drain"
	d.reasons == ["measurement-missing"]
	d.failures == {{"check": "disk-free", "subject": "host", "value": null, "unit": "", "error": "not measured"}}
}

test_threshold_missing if {
	doc := object.union(_host(_healthy), {"expected": ["disk-free", "made-up-check"], "measurements": array.concat(_healthy, [{"check": "made-up-check", "subject": "host", "value": 1, "unit": "", "raw": "", "error": null}])})
	d := _decide(doc)
	d.reasons == ["threshold-missing"]
	d.verdict == "drain"
}

test_slow_collective_blamed_on_the_slow_link_not_its_peer if {
	slow_peer := {"bandwidth": [{"host": "n1", "value": 1.2, "threshold": _thresholds["tcp-bandwidth"]}, {"host": "n2", "value": 0.018, "threshold": _thresholds["tcp-bandwidth"]}]}
	d := _decide(object.union(_host(_with("allreduce-busbw", 0.001)), {"pool": slow_peer}))
	d.verdict == "admit"
}

test_slow_collective_and_own_slow_link_both_reasons if {
	own := {"bandwidth": [{"host": "n1", "value": 0.018, "threshold": _thresholds["tcp-bandwidth"]}, {"host": "n2", "value": 1.2, "threshold": _thresholds["tcp-bandwidth"]}]}
	ms := [m | some m0 in _with("allreduce-busbw", 0.001); m := _replace(m0, "tcp-bandwidth", 0.018)]
	d := _decide(object.union(_host(ms), {"pool": own}))
	d.reasons == ["allreduce-busbw", "tcp-bandwidth"]
	d.verdict == "drain"
}

test_unmeasured_peer_link_excuses_nothing_of_its_own if {
	unmeasured := {"bandwidth": [{"host": "n2", "value": null, "threshold": _thresholds["tcp-bandwidth"]}]}
	d := _decide(object.union(_host(_healthy), {"pool": unmeasured}))
	d.verdict == "admit"
}

test_hardware_and_link_fault_keep_out if {
	ms := [m | some m0 in _with("gpu-xid-events", 2); m := _replace(m0, "disk-free", 1)]
	d := _decide(_host(ms))
	d.verdict == "keep-out"
	d.reasons == ["disk-free", "gpu-xid-events"]
}
