"""aifactory's control model: the NIST SP 800-53 rev. 5 controls it implements and how.

- FAMILIES and TITLES: names used in reports (the shipped NIST catalog, aifactory.audit.catalog,
  is the authority; TITLES is the fallback when it cannot be read). An ID missing here is still
  reported, untitled.
- IMPLEMENTATIONS: for each control aifactory implements, how (in words), the roles responsible,
  the site spec settings that set it and the parts of aifactory that implement it. The System
  Security Plan (aifactory.audit.ssp) is written from this and from the policy engine's rules.
- MODERATE_BASELINE: the controls among them that SP 800-53B's moderate baseline selects; the
  shipped profile is generated from it (scripts/oscal_profile.py).

Adding a control: add its title, its Implementation and, if the moderate baseline selects it, its
id to MODERATE_BASELINE; then run scripts/oscal_profile.py (tests/audit/test_catalog.py checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FAMILIES: dict[str, str] = {
    "AC": "Access Control",
    "AT": "Awareness and Training",
    "AU": "Audit and Accountability",
    "CA": "Assessment, Authorization, and Monitoring",
    "CM": "Configuration Management",
    "CP": "Contingency Planning",
    "IA": "Identification and Authentication",
    "IR": "Incident Response",
    "MA": "Maintenance",
    "MP": "Media Protection",
    "PE": "Physical and Environmental Protection",
    "PL": "Planning",
    "PM": "Program Management",
    "PS": "Personnel Security",
    "PT": "PII Processing and Transparency",
    "RA": "Risk Assessment",
    "SA": "System and Services Acquisition",
    "SC": "System and Communications Protection",
    "SI": "System and Information Integrity",
    "SR": "Supply Chain Risk Management",
}

TITLES: dict[str, str] = {
    "AC-2": "Account Management",
    "AC-2(3)": "Account Management | Disable Accounts",
    "AC-3": "Access Enforcement",
    "AC-3(3)": "Access Enforcement | Mandatory Access Control",
    "AC-4": "Information Flow Enforcement",
    "AC-6": "Least Privilege",
    "AC-16": "Security and Privacy Attributes",
    "AC-20": "Use of External Systems",
    "AC-21": "Information Sharing",
    "AU-2": "Event Logging",
    "AU-3": "Content of Audit Records",
    "AU-6": "Audit Record Review, Analysis, and Reporting",
    "AU-9": "Protection of Audit Information",
    "AU-10": "Non-repudiation",
    "AU-11": "Audit Record Retention",
    "AU-12": "Audit Record Generation",
    "CA-2": "Control Assessments",
    "CA-3": "Information Exchange",
    "CA-7": "Continuous Monitoring",
    "CM-2": "Baseline Configuration",
    "CM-3": "Configuration Change Control",
    "CM-6": "Configuration Settings",
    "CM-7": "Least Functionality",
    "CM-8": "System Component Inventory",
    "CM-14": "Signed Components",
    "CP-9": "System Backup",
    "IA-2": "Identification and Authentication (Organizational Users)",
    "IA-5": "Authenticator Management",
    "MP-4": "Media Storage",
    "PL-2": "System Security and Privacy Plans",
    "PE-17": "Alternate Work Site",
    "PE-18": "Location of System Components",
    "SA-9": "External System Services",
    "SA-9(5)": "External System Services | Processing, Storage, and Service Location",
    "SC-7": "Boundary Protection",
    "SC-8": "Transmission Confidentiality and Integrity",
    "SC-12": "Cryptographic Key Establishment and Management",
    "SC-13": "Cryptographic Protection",
    "SC-28": "Protection of Information at Rest",
    "SC-28(1)": "Protection of Information at Rest | Cryptographic Protection",
    "SI-4": "System Monitoring",
    "SI-7": "Software, Firmware, and Information Integrity",
    "SR-4": "Provenance",
    "SR-11": "Component Authenticity",
}

# Who is responsible for what, as the SSP names them (OSCAL role ids).
ROLES: dict[str, str] = {
    "system-owner": "System owner",
    "security-officer": "Information system security officer",
    "site-administrator": "Site administrator (runs aifactory)",
    "data-owner": "Data owner (the tenant that owns a dataset or model)",
    "auditor": "Auditor",
}

# The parts of aifactory that implement controls (the SSP's "this system" components by name).
PARTS: dict[str, str] = {
    "policy": "Policy engine: the site spec's Rego policies, checked before anything is built",
    "bundle": "Offline bundle: signed, hashed packages and artifacts, verified at import and deploy",
    "deploy": "Deploy: Ansible roles that configure every host from the plan and record what they installed",
    "runtime": "Runtime: tenant tokens, mTLS, per-request policy decisions for training and serving",
    "logs": "Hash-chained operator and decision logs, with signed heads",
    "audit": "Audit: the signed report, OSCAL assessment results, SSP and POA&M",
    "health": (
        "Health gate: signed per-host health runs judged by policy, failing hosts drained in Slurm within "
        "a drain budget"
    ),
    "backup": (
        "Backup: the control host's state folder (keys, logs, reports, allocations) in one encrypted, "
        "signed file, restored only after its signature verifies"
    ),
    "lifecycle": (
        "Lifecycle: the versions each host runs, upgrades and rollbacks recorded in the operator log, "
        "and the admin-signed activation record without which no older bundle is imported"
    ),
    "telemetry": (
        "Telemetry: node exporter, Prometheus and Alertmanager with TLS, host power, the signed "
        "operations report"
    ),
}


@dataclass(frozen=True)
class Implementation:
    """How aifactory implements one control: what the SSP says for it."""

    statement: str  # how, in words an assessor can check
    parts: tuple[str, ...]  # PARTS keys
    roles: tuple[str, ...]  # ROLES keys
    settings: tuple[str, ...] = ()  # site spec fields that set it (docs/site-spec.md)


IMPLEMENTATIONS: dict[str, Implementation] = {
    "AU-6": Implementation(
        "The operations report (`aifactory report ops`) puts decisions, latency, energy and cost per "
        "decision, host power, node states and alerts over a window on one signed page for review; "
        "the audit report names the latest one and checks its signature.",
        ("telemetry", "audit"),
        ("security-officer", "auditor"),
    ),
    "AC-2": Implementation(
        "Tenants are declared in the site spec; each gets bearer tokens signed by the site "
        "(`aifactory token issue`), with an expiry, and revoked through a signed revocation list "
        "(`aifactory token revoke`). Nothing but a verified token or client certificate names a tenant.",
        ("runtime",),
        ("security-officer", "site-administrator"),
        ("tenants[]",),
    ),
    "AC-3": Implementation(
        "Access to datasets and models follows the spec's grants: the policy check denies a plan whose "
        "grants break the rules, and the runtime asks the same policy for every job and request, "
        "failing closed when it cannot decide.",
        ("policy", "runtime"),
        ("security-officer", "data-owner"),
        ("access[]", "datasets[].owner", "models[].owner"),
    ),
    "AC-3(3)": Implementation(
        "Mandatory access control by classification: a tenant granted a dataset or model, and its "
        "owner, must hold a clearance at least its classification; the policy check enforces it.",
        ("policy",),
        ("security-officer", "data-owner"),
        ("tenants[].clearance", "datasets[].classification", "models[].classification"),
    ),
    "AC-4": Implementation(
        "Information flow: exports go only to places inside the residency of every dataset a model was "
        "trained on, datasets are stored inside their residency, and egress endpoints lie inside the "
        "jurisdiction; the policy check and the runtime enforce it.",
        ("policy", "runtime"),
        ("security-officer", "data-owner"),
        ("datasets[].residency", "access[].to", "egress.allow[]", "site.jurisdiction"),
    ),
    "AC-16": Implementation(
        "Security attributes: every dataset and model carries a classification and a residency; a "
        "model is classified at least as high as its training data (policy check).",
        ("policy",),
        ("data-owner",),
        ("datasets[].classification", "models[].classification", "models[].trained_on"),
    ),
    "AU-2": Implementation(
        "Events logged: every command that changes the site (operator log) and every runtime "
        "authorization decision (decision log).",
        ("logs", "runtime"),
        ("site-administrator", "auditor"),
    ),
    "AU-3": Implementation(
        "Each decision record holds when, which tenant, which action on which resource, the decision "
        "and its reasons; each operator record holds the command, its arguments and its outcome.",
        ("logs", "runtime"),
        ("auditor",),
    ),
    "AU-9": Implementation(
        "Logs are hash-chained and the decision log's heads are signed; `aifactory audit verify` and "
        "`aifactory audit verify-log` detect any record changed, removed or cut.",
        ("logs", "audit"),
        ("auditor", "security-officer"),
    ),
    "AU-10": Implementation(
        "Non-repudiation: the node signs the decision log's heads with its own key.",
        ("logs", "runtime"),
        ("auditor",),
    ),
    "AU-12": Implementation(
        "The runtime records every decision before anything acts on it; every changing aifactory "
        "command appends to the operator log.",
        ("logs", "runtime"),
        ("site-administrator",),
    ),
    "CA-2": Implementation(
        "`aifactory audit report` assesses the controls from the policy check and the evidence each "
        "stage left, and writes signed, reproducible assessment results.",
        ("audit",),
        ("auditor",),
    ),
    "CA-7": Implementation(
        "`aifactory health` checks every host against a threshold table with the health policy, signs "
        "each run, drains failing compute hosts in Slurm within a drain budget and raises one incident "
        "past it; the audit assesses the signed runs: hosts checked and when, verdicts, drains and their "
        "durations, incidents, and no failing compute host left taking work.",
        ("health", "audit"),
        ("site-administrator", "auditor"),
        ("health",),
    ),
    "CM-2": Implementation(
        "The plan derived from the site spec is the baseline configuration; deploy records what it "
        "installed on each host, and the audit checks that each pool's hosts share one baseline, "
        "deployed from the current plan and from a bundle built for it, and, once the site has been "
        "upgraded or rolled back, that every host runs the site's current bundle version.",
        ("deploy", "bundle", "lifecycle", "audit"),
        ("site-administrator",),
        ("node_pools[]",),
    ),
    "CM-3": Implementation(
        "Every upgrade and rollback is recorded in the hash-chained operator log as it goes (who, when, "
        "from which version to which, each batch, the outcome); going back to an older bundle passes "
        "anti-rollback only with an activation record the administrator signed (SSHSIG) for exactly that "
        "site, version and content, valid 24 hours. The audit checks that every change has its outcome "
        "on record and every rollback cites a valid activation record; model promotions are signed "
        "records as well.",
        ("lifecycle", "bundle", "logs", "audit"),
        ("site-administrator", "auditor"),
    ),
    "CM-8": Implementation(
        "The plan is the component inventory (every host with its pool, datacenter and addresses); "
        "the audit checks that every planned host has a deploy record and no other host does.",
        ("deploy", "audit"),
        ("site-administrator",),
        ("node_pools[].count", "datacenters[]"),
    ),
    "CM-14": Implementation(
        "Signed components: nothing is installed unless the bundle manifest's signature verifies "
        "against a key the site trusts.",
        ("bundle", "deploy"),
        ("site-administrator", "security-officer"),
    ),
    "CP-9": Implementation(
        "`aifactory backup` writes the control host's state folder (keys, operator and decision logs with "
        "their signed heads, reports, health runs, provision state, bundle trust) into one file, encrypted "
        "with AES-256-GCM under a passphrase-derived key and signed (SSHSIG), and records it in the operator "
        "log; `aifactory restore` verifies the signature against a trust file kept off the host before it "
        "decrypts. The audit assesses the records: the latest backup was written, and where its file is "
        "still on the host, it is the one recorded and verifies.",
        ("backup", "logs", "audit"),
        ("site-administrator", "auditor"),
    ),
    "SC-12": Implementation(
        "The site's keys are generated on the control host (0600, never logged): the token key, the site "
        "CA and the certificates it issues. `aifactory rotate` replaces the token key or the CA with an "
        "overlap (both trusted on every host, then the old one refused after --finish) or reissues the "
        "server certificates, rolled out one host at a time, and records each run (who, when, old and new "
        "fingerprints, phases) in the operator log. The audit assesses the records: no rotation was left "
        "between phases, and the key and CA in use are the ones the latest rotations installed.",
        ("runtime", "deploy", "audit"),
        ("site-administrator", "security-officer"),
    ),
    "IA-2": Implementation(
        "Tenants are identified only by a site-signed token or a client certificate from the site CA; "
        "administrators reach hosts over SSH with keys only.",
        ("runtime", "deploy"),
        ("security-officer",),
    ),
    "IA-5": Implementation(
        "Authenticators are short-lived tokens and certificates issued by the site, revocable through "
        "a signed list; private keys stay in the site's state folder, mode 0600.",
        ("runtime",),
        ("security-officer",),
    ),
    "PL-2": Implementation(
        "This System Security Plan is generated from the same site spec and plan that deploy the "
        "system, so it describes what was built.",
        ("audit",),
        ("system-owner",),
    ),
    "SA-9(5)": Implementation(
        "Every datacenter, and so every host and storage system, lies inside the site's jurisdiction "
        "(policy check).",
        ("policy",),
        ("system-owner",),
        ("site.jurisdiction", "datacenters[].country"),
    ),
    "SC-7": Implementation(
        "Boundary protection: an air-gapped site declares no egress endpoint; a connected site keeps "
        "its endpoints inside the jurisdiction (policy check); hosts get hardened network settings.",
        ("policy", "deploy"),
        ("security-officer", "site-administrator"),
        ("site.air_gapped", "egress.allow[]"),
    ),
    "SC-8": Implementation(
        "Transmission: model serving uses TLS with client certificates from the site CA; remote "
        "administration uses a hardened SSH configuration.",
        ("runtime", "deploy"),
        ("site-administrator",),
    ),
    "SC-13": Implementation(
        "Cryptographic protection: Ed25519 signatures (SSHSIG) for bundles, log heads and reports; "
        "SHA-256 for every file digest; TLS for serving.",
        ("bundle", "logs", "runtime", "audit"),
        ("security-officer",),
    ),
    "SC-28": Implementation(
        "Information at rest: storage systems declare encryption at rest, checked by the policy.",
        ("policy",),
        ("site-administrator",),
        ("storage[].encrypted_at_rest",),
    ),
    "SC-28(1)": Implementation(
        "Storage, and every replica, that holds a dataset or model classified confidential or above "
        "is encrypted at rest (policy check).",
        ("policy",),
        ("site-administrator", "data-owner"),
        ("storage[].encrypted_at_rest",),
    ),
    "SI-4": Implementation(
        "Every host runs node exporter; Prometheus on the monitoring host scrapes every host, every "
        "inference server and the hosts' BMC power over TLS from the site CA, and its alert rules "
        "deliver to the operator log (`aifactory monitoring deploy`, `aifactory status`).",
        ("telemetry",),
        ("site-administrator", "security-officer"),
        ("monitoring",),
    ),
    "SI-7": Implementation(
        "Every bundle file is hashed in a signed manifest, verified at import, again on each host at "
        "deploy, and again by the audit.",
        ("bundle", "deploy", "audit"),
        ("site-administrator", "auditor"),
    ),
    "SR-4": Implementation(
        "Provenance: each bundle carries a CycloneDX SBOM of every package and file it holds, with "
        "digests, licenses and the dependency graph.",
        ("bundle",),
        ("site-administrator",),
    ),
}

# SP 800-53B: the controls above that the moderate baseline selects (AC-3(3), AC-16, AU-10, CM-14,
# SA-9(5) and SR-4 are in no moderate baseline; aifactory implements them as well).
MODERATE_BASELINE: frozenset[str] = frozenset(
    {
        "AC-2",
        "AC-3",
        "AC-4",
        "AU-2",
        "AU-3",
        "AU-6",
        "AU-9",
        "AU-12",
        "CA-2",
        "CA-7",
        "CM-2",
        "CM-3",
        "CM-8",
        "CP-9",
        "IA-2",
        "IA-5",
        "PL-2",
        "SC-7",
        "SC-8",
        "SC-12",
        "SC-13",
        "SC-28",
        "SC-28(1)",
        "SI-4",
        "SI-7",
    }
)

_CONTROL_ID = re.compile(r"^([A-Z]{2})-(\d+)(?:\((\d+)\))?$")


def family_of(control_id: str) -> str:
    return control_id.split("-", 1)[0].upper()


def title_of(control_id: str) -> str:
    return TITLES.get(control_id, "")


def family_title(family: str) -> str:
    return FAMILIES.get(family, family)


def oscal_control_id(control_id: str) -> str:
    """ "AC-3" -> "ac-3", "SA-9(5)" -> "sa-9.5" (the ids of the NIST OSCAL catalog)."""
    match = _CONTROL_ID.match(control_id.upper())
    if not match:
        return control_id.lower()
    family, number, enhancement = match.groups()
    return f"{family.lower()}-{number}" + (f".{enhancement}" if enhancement else "")


def sort_key(control_id: str) -> tuple[str, int, int, str]:
    """Order controls as catalogs do: AC-2 before AC-10, SA-9 before SA-9(5)."""
    match = _CONTROL_ID.match(control_id.upper())
    if not match:
        return (control_id, 0, 0, control_id)
    family, number, enhancement = match.groups()
    return (family, int(number), int(enhancement or 0), "")
