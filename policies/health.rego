# METADATA
# scope: package
# title: Health gate
# description: >-
#   Decides, for one host, whether it may take work: admit, drain, or keep-out (a hardware fault
#   that needs an operator), with one reason code per failed check. The input is the host's
#   measurements, its effective thresholds (policies/data/health_thresholds.json, tightened by the
#   spec) and the checks its level expects. A missing or failed measurement is never a pass.
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Fix what each reason names and run aifactory health again; the host is resumed when it passes.
package aifactory.health

import rego.v1

# Checks whose failure is a hardware fault: the host is kept out until an operator acts.
_hardware := {"gpu-count", "gpu-ecc-uncorrectable", "gpu-memory-retirement-pending", "gpu-xid-events", "dcgm-diag-failures", "gpu-memory-total"}

_within(value, threshold) if {
	threshold.op == ">="
	value >= threshold.value
}

_within(value, threshold) if {
	threshold.op == "<="
	value <= threshold.value
}

# A measured value on the wrong side of its threshold.
_crossed(check) if {
	some m in input.measurements
	m.check == check
	m.value != null
	not _within(m.value, input.thresholds[check])
}

# What crossed, for the evidence and the table.
failures contains {"check": m.check, "subject": m.subject, "value": m.value, "unit": m.unit, "threshold": input.thresholds[m.check]} if {
	some m in input.measurements
	m.value != null
	input.thresholds[m.check]
	not _within(m.value, input.thresholds[m.check])
}

failures contains {"check": m.check, "subject": m.subject, "value": null, "unit": m.unit, "error": m.error} if {
	some m in input.measurements
	m.value == null
}

failures contains {"check": check, "subject": "host", "value": null, "unit": "", "error": "not measured"} if {
	some check in input.expected
	not _reported(check)
}

_reported(check) if {
	some m in input.measurements
	m.check == check
}

# Another host of the pool whose own link is slow (or unmeasured) explains a slow collective.
_peer_link_slow if {
	some peer in object.get(input, ["pool", "bandwidth"], [])
	peer.host != input.host
	not _peer_within(peer)
}

_peer_within(peer) if {
	peer.value != null
	_within(peer.value, peer.threshold)
}

# This host's own link is slow: a measurement of it crossed its threshold and neither a peer's link
# down nor a slower peer explains it.
_own_link_slow if {
	some m in input.measurements
	m.check == "tcp-bandwidth"
	m.value != null
	not _within(m.value, input.thresholds["tcp-bandwidth"])
	not _peer_down(m.subject)
	not _peer_slower(m)
}

# The peer measured towards is slow on its own measurement too, and slower than this one: the slow
# link is the peer's. A stream towards a host with a slow link is slowed as well (TCP's
# acknowledgements come back over that link), so of two slow ends the slower one is blamed; a tie
# blames both.
_peer_slower(m) if {
	some peer in object.get(input, ["pool", "bandwidth"], [])
	peer.host == m.subject
	peer.host != input.host
	peer.value != null
	not _peer_within(peer)
	peer.value < m.value
}

# METADATA
# title: Service not running
# description: Every service the host's role runs (munged, slurmd or slurmctld, chronyd under systemd) is running.
# custom:
#   controls: [SI-6, CM-7]
#   severity: medium
#   remediation: Start the service (systemctl start NAME) and read its log.
reasons contains "service-running" if _crossed("service-running")

# METADATA
# title: Clock offset
# description: The host's clock is within the threshold of the control host's (or of chrony's reference).
# custom:
#   controls: [AU-8]
#   severity: medium
#   remediation: Check chronyd and the site's time servers (chronyc tracking, chronyc sources).
reasons contains "clock-offset" if _crossed("clock-offset")

# METADATA
# title: Disk headroom
# description: Free blocks on the host's file systems stay above the threshold.
# custom:
#   controls: [SI-6, SC-5]
#   severity: medium
#   remediation: Free space (logs, checkpoints, caches) or grow the file system.
reasons contains "disk-free" if _crossed("disk-free")

# METADATA
# title: Inode headroom
# description: Free inodes on the host's file systems stay above the threshold.
# custom:
#   controls: [SI-6, SC-5]
#   severity: medium
#   remediation: Remove small files or recreate the file system with more inodes.
reasons contains "inodes-free" if _crossed("inodes-free")

# METADATA
# title: Memory available
# description: Memory available for new work (MemAvailable) stays above the threshold.
# custom:
#   controls: [SI-6, SC-5]
#   severity: medium
#   remediation: Find what holds the memory (stray jobs, leaks) and stop it.
reasons contains "memory-available" if _crossed("memory-available")

# METADATA
# title: Site storage not mounted read-write
# description: Each site storage the host mounts is mounted, read-write.
# custom:
#   controls: [SI-6, CP-9]
#   severity: high
#   remediation: Mount the storage (mount PATH) and check the storage servers.
reasons contains "storage-mounted-rw" if _crossed("storage-mounted-rw")

# METADATA
# title: Storage write throughput
# description: Sequential write throughput to the site storage (fio) is above the threshold.
# custom:
#   controls: [SI-6]
#   severity: medium
#   remediation: Check the storage servers, the mount options and the storage fabric.
reasons contains "storage-write" if _crossed("storage-write")

# METADATA
# title: Storage read throughput
# description: Sequential read throughput from the site storage (fio) is above the threshold.
# custom:
#   controls: [SI-6]
#   severity: medium
#   remediation: Check the storage servers, the mount options and the storage fabric.
reasons contains "storage-read" if _crossed("storage-read")

# METADATA
# title: Fabric peer unreachable
# description: The host reaches every peer on every fabric it shares with it.
# custom:
#   controls: [SI-6, SC-7]
#   severity: high
#   remediation: Check the host's links, cabling and switch ports on that fabric; when a peer's own link is down, that peer is the one to fix.
reasons contains "fabric-unreachable" if {
	some m in input.measurements
	m.check == "fabric-unreachable"
	m.value != null
	not _within(m.value, input.thresholds["fabric-unreachable"])
	not _explained_by_peer_links(m)
}

# Peers whose own link on the fabric is down (input.fabric.links_down, from their own link-up
# checks) explain as many unreachable peers there, while this host's own link on it is up: the
# fault is theirs, and draining every host that cannot reach them would drain the whole fabric.
_explained_by_peer_links(m) if {
	not _own_link_down(m.subject)
	down := {link.host |
		some link in object.get(input, ["fabric", "links_down"], [])
		link.fabric == m.subject
		link.host != input.host
	}
	count(down) >= m.value
}

_own_link_down(fabric) if {
	some m in input.measurements
	m.check == "link-up"
	m.subject == fabric
	not _link_is_up(m)
}

_link_is_up(m) if {
	m.value != null
	_within(m.value, input.thresholds["link-up"])
}

# METADATA
# title: Link down
# description: Every interface the plan gives the host is administratively up and operational.
# custom:
#   controls: [SI-6, SC-7]
#   severity: high
#   remediation: Bring the interface up (ip link set dev IF up) and check its cable, transceiver and switch port.
reasons contains "link-up" if _crossed("link-up")

# METADATA
# title: Link bandwidth
# description: TCP bandwidth from the host to a peer on the compute fabric (iperf3) is above the threshold; a slow measurement towards a peer whose link is down, or whose own measurement is slower, is the peer's.
# custom:
#   controls: [SI-6, SC-5]
#   severity: high
#   remediation: Check the host's compute link (speed, errors, traffic shaping, cable) and its switch port.
reasons contains "tcp-bandwidth" if _own_link_slow

# A peer whose own link is down, or which did not answer at all (input.fabric.links_down): a
# measurement towards it that is slow or could not be made is its fault, not this host's.
_peer_down(host) if {
	some link in object.get(input, ["fabric", "links_down"], [])
	link.host == host
	host != input.host
}

# METADATA
# title: Collective bandwidth
# description: The pool's all-reduce bus bandwidth (nccl-tests formula) is above the threshold; when another host's own link is slow, the collective's slowness is that host's.
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Find the slow link (tcp-bandwidth per host) or the slow GPU; rerun at the standard level.
reasons contains "allreduce-busbw" if {
	_crossed("allreduce-busbw")
	not _excused_collective
}

_excused_collective if {
	_peer_link_slow
	not _own_link_slow
}

# METADATA
# title: GPU count
# description: The host shows as many GPUs as the plan gives it.
# custom:
#   controls: [SI-6, CM-8]
#   severity: critical
#   remediation: Reseat or replace the missing GPU; check nvidia-smi and the kernel log.
reasons contains "gpu-count" if _crossed("gpu-count")

# METADATA
# title: GPU model
# description: Every GPU is the model the plan names.
# custom:
#   controls: [CM-8]
#   severity: high
#   remediation: Fix the plan or the hardware.
reasons contains "gpu-model-mismatch" if _crossed("gpu-model-mismatch")

# METADATA
# title: Uncorrectable ECC errors
# description: No volatile uncorrectable ECC error since the GPU's last reset.
# custom:
#   controls: [SI-6]
#   severity: critical
#   remediation: Reset the GPU; if errors return, replace it.
reasons contains "gpu-ecc-uncorrectable" if _crossed("gpu-ecc-uncorrectable")

# METADATA
# title: Memory retirement pending
# description: No pending page retirement or row remap, and no remap failure.
# custom:
#   controls: [SI-6]
#   severity: critical
#   remediation: Reset the GPU to apply the remap; a remap failure means replacement (RMA).
reasons contains "gpu-memory-retirement-pending" if _crossed("gpu-memory-retirement-pending")

# METADATA
# title: Xid events
# description: The driver reported no Xid error since boot.
# custom:
#   controls: [SI-6, AU-6]
#   severity: high
#   remediation: Read the Xid codes in the evidence, act per NVIDIA's Xid table, reboot to clear.
reasons contains "gpu-xid-events" if _crossed("gpu-xid-events")

# METADATA
# title: Hardware slowdown
# description: No GPU is held in hardware slowdown (thermal or power brake).
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Check cooling and power delivery of the host.
reasons contains "gpu-hw-slowdown" if _crossed("gpu-hw-slowdown")

# METADATA
# title: GPU power limit
# description: Each GPU's power limit is at least the model's rated TDP.
# custom:
#   controls: [CM-6]
#   severity: medium
#   remediation: Reset the power limit (nvidia-smi -pl) to the rated value.
reasons contains "gpu-power-limit" if _crossed("gpu-power-limit")

# METADATA
# title: GPU memory
# description: Each GPU reports the model's full memory.
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Replace the GPU.
reasons contains "gpu-memory-total" if _crossed("gpu-memory-total")

# METADATA
# title: Host-to-device bandwidth
# description: Pinned host-to-device copy bandwidth is above the threshold (PCIe link width and generation).
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Check the PCIe link width and speed (LnkSta in lspci -vv) and reseat the GPU.
reasons contains "gpu-h2d-bandwidth" if _crossed("gpu-h2d-bandwidth")

# METADATA
# title: DCGM diagnostics
# description: Every DCGM diagnostic test of the level passes.
# custom:
#   controls: [SI-6]
#   severity: critical
#   remediation: Read the failing test in the evidence and follow DCGM's guidance.
reasons contains "dcgm-diag-failures" if _crossed("dcgm-diag-failures")

# METADATA
# title: Host unreachable
# description: The host answered the health run (a host that cannot be checked is not healthy).
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Check the host's management link and sshd; run aifactory health again.
reasons contains "host-unreachable" if not input.reachable

# METADATA
# title: Measurement missing
# description: Every check the level expects has a measured value; a missing or failed measurement never passes.
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Install the tool the check names (the evidence says why it failed) and run again.
reasons contains "measurement-missing" if {
	input.reachable
	some check in input.expected
	not _measured(check)
	not _unmeasured_for_a_peer(check)
}

# The bandwidth towards a peer that is down could not be measured: not this host's failure.
_unmeasured_for_a_peer(check) if {
	check == "tcp-bandwidth"
	some m in input.measurements
	m.check == check
	_peer_down(m.subject)
}

_measured(check) if {
	some m in input.measurements
	m.check == check
	m.value != null
}

# METADATA
# title: Threshold missing
# description: Every measured check the level expects has a threshold; a value nothing judges is not a pass.
# custom:
#   controls: [SI-6]
#   severity: high
#   remediation: Add the check's threshold to the table (policies/data/health_thresholds.json) or the spec's health section.
reasons contains "threshold-missing" if {
	some check in input.expected
	not input.thresholds[check]
}

verdict := "admit" if count(reasons) == 0

verdict := "keep-out" if {
	some reason in reasons
	_hardware[reason]
}

verdict := "drain" if {
	count(reasons) > 0
	not _hardware_fault
}

_hardware_fault if {
	some reason in reasons
	_hardware[reason]
}

decision := {"host": input.host, "verdict": verdict, "reasons": sort(reasons), "failures": failures}
