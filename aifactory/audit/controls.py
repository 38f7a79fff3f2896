"""NIST SP 800-53 rev. 5 names used in reports: control families and the titles of the controls
aifactory's policies and evidence checks name. An ID missing here is still reported, untitled."""

from __future__ import annotations

import re

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
    "AU-9": "Protection of Audit Information",
    "AU-10": "Non-repudiation",
    "AU-12": "Audit Record Generation",
    "CA-2": "Control Assessments",
    "CA-3": "Information Exchange",
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
    "SA-9(5)": "Processing, Storage, and Service Location",
    "SC-7": "Boundary Protection",
    "SC-8": "Transmission Confidentiality and Integrity",
    "SC-12": "Cryptographic Key Establishment and Management",
    "SC-13": "Cryptographic Protection",
    "SC-28": "Protection of Information at Rest",
    "SC-28(1)": "Protection of Information at Rest | Cryptographic Protection",
    "SI-7": "Software, Firmware, and Information Integrity",
    "SR-4": "Provenance",
    "SR-11": "Component Authenticity",
}

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
