"""Host hardening evidence: OpenSCAP results (ARF) digested, mapped to NIST SP 800-53 and weighed
against the reviewed waivers.

Every host is scanned by `oscap xccdf eval` with the SCAP content the bundle carries (Debian 13's
`ssg-debian` 0.1.76, which ships the Debian 12 datastream; aifactory/bundle/apt.py) against the
profile the spec names (`platform.scap_profile`). The ARF a scan writes (about 14 MB: the whole
datastream rides along) is kept on the control host; the evidence is its digest: per rule, the
result, severity, title and the NIST SP 800-53 controls the content's own references name.

Counting (docs/audit.md): a rule is *applicable* when its result is pass, fixed, fail, error or
unknown; `notapplicable`, `notselected`, `notchecked` (no automated check) and `informational` are
not counted. A waived rule is a failing one: waivers explain failures, they never turn them into
passes. A waiver for a rule that passes on every host that evaluates it, or one past its expiry,
is itself a finding (`stale`, `expired`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml

from aifactory.audit.catalog import load_catalog
from aifactory.errors import AuditError, Location
from aifactory.spec import grammar
from aifactory.spec.model import ScapProfile

DATASTREAM = "/usr/share/xml/scap/ssg/content/ssg-debian12-ds.xml"
PROFILE_PREFIX = "xccdf_org.ssgproject.content_profile_"
RULE_PREFIX = "xccdf_org.ssgproject.content_rule_"
VALUE_PREFIX = "xccdf_org.ssgproject.content_value_"
# The site's tailoring (`oscap --tailoring-file`): one profile per content profile, extending it and
# setting only the content's values the site decides (its security contact), selecting nothing else.
TAILORING_ID = "xccdf_aifactory_tailoring_site"
TAILORED_PROFILE_PREFIX = "xccdf_aifactory_profile_"
ROOT_MAIL_ALIAS = "var_postfix_root_mail_alias"  # postfix_client_configure_mail_alias reads it
PROFILES: tuple[str, ...] = get_args(ScapProfile)
NIST_800_53 = "http://nvlpubs.nist.gov/nistpubs/SpecialPublications/NIST.SP.800-53r4.pdf"
APPLICABLE = frozenset({"pass", "fixed", "fail", "error", "unknown"})
PASSED = frozenset({"pass", "fixed"})

_XCCDF = "{http://checklists.nist.gov/xccdf/1.2}"
_RULE_ID = re.compile(r"^[a-z0-9_]{1,120}$")
# SP 800-53 rev4 references as the content writes them: "AC-6(1)", "CM-6(a)", "AU-2(d)"; the
# catalog is rev5 in OSCAL ids: "ac-6.1", "cm-6".
_CONTROL = re.compile(r"^([A-Z]{2})-(\d+)(?:\((\d+)\))?(?:\([a-z]\))*$")


@dataclass(frozen=True)
class RuleResult:
    rule: str  # the short id, without the content's prefix
    result: str
    severity: str
    title: str
    controls: tuple[str, ...]  # SP 800-53 controls as the catalog labels them, e.g. ("AC-6(1)", "CM-6")

    @property
    def applicable(self) -> bool:
        return self.result in APPLICABLE

    @property
    def passed(self) -> bool:
        return self.result in PASSED


@dataclass(frozen=True)
class HostScan:
    host: str
    profile: str
    content_version: str
    scanner: str
    started: str
    finished: str
    arf_sha256: str
    rules: tuple[RuleResult, ...]

    def applicable(self) -> list[RuleResult]:
        return [r for r in self.rules if r.applicable]

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "profile": self.profile,
            "content_version": self.content_version,
            "scanner": self.scanner,
            "started": self.started,
            "finished": self.finished,
            "arf_sha256": self.arf_sha256,
            "rules": [
                {
                    "rule": r.rule,
                    "result": r.result,
                    "severity": r.severity,
                    "title": r.title,
                    "controls": list(r.controls),
                }
                for r in self.rules
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostScan:
        rules = tuple(
            RuleResult(r["rule"], r["result"], r["severity"], r["title"], tuple(r["controls"]))
            for r in data["rules"]
        )
        return cls(
            data["host"],
            data["profile"],
            data["content_version"],
            data["scanner"],
            data["started"],
            data["finished"],
            data["arf_sha256"],
            rules,
        )


def control_ids(reference: str) -> list[str]:
    """'AC-6(1),CM-6(a)' -> ['ac-6.1', 'cm-6']: enhancements kept, sub-items dropped."""
    found = []
    for part in reference.split(","):
        match = _CONTROL.match(part.strip())
        if match:
            family, number, enhancement = match.groups()
            found.append(f"{family.lower()}-{number}" + (f".{enhancement}" if enhancement else ""))
    return sorted(set(found))


def _short(rule_id: str) -> str:
    return rule_id.removeprefix(RULE_PREFIX)


def _text(element: Any, tag: str) -> str:
    child = element.find(f"{_XCCDF}{tag}")
    return "".join(child.itertext()).strip() if child is not None else ""


def digest_arf(arf: Path, *, host: str) -> HostScan:
    """The evidence of one ARF file: the TestResult's rule results with the rules' titles and controls."""
    from defusedxml import ElementTree  # the control extra: ARF files come from the hosts

    try:
        tree = ElementTree.parse(arf)
    except (OSError, ElementTree.ParseError) as exc:
        raise AuditError(
            f"{arf} is not a readable ARF file: {exc}",
            code="scap-arf-unreadable",
            location=Location(str(arf)),
        ) from None
    root = tree.getroot()
    benchmark = root.find(f".//{_XCCDF}Benchmark")
    results = root.findall(f".//{_XCCDF}TestResult")
    if benchmark is None or len(results) != 1:
        raise AuditError(
            f"{arf} has no benchmark or not exactly one TestResult",
            code="scap-arf-unreadable",
            location=Location(str(arf)),
        )
    test = results[0]
    catalog = load_catalog()  # rev4 ids the rev5 catalog lacks are left out
    rules: dict[str, tuple[str, tuple[str, ...]]] = {}
    for rule in benchmark.iter(f"{_XCCDF}Rule"):
        refs = [
            ref.text or "" for ref in rule.findall(f"{_XCCDF}reference") if ref.get("href") == NIST_800_53
        ]
        known = (catalog.get(c) for ref in refs for c in control_ids(ref))
        controls = tuple(sorted({c.label for c in known if c is not None}))
        rules[rule.get("id", "")] = (_text(rule, "title"), controls)
    profile = test.find(f"{_XCCDF}profile")
    scanner = test.get("test-system", "")
    found = []
    for item in test.findall(f"{_XCCDF}rule-result"):
        rule_id = item.get("idref", "")
        title, controls = rules.get(rule_id, ("", ()))
        found.append(
            RuleResult(
                _short(rule_id), _text(item, "result"), item.get("severity", "unknown"), title, controls
            )
        )
    profile_id = profile.get("idref", "") if profile is not None else ""
    return HostScan(
        host=host,
        # The content's profile, whether the scan ran it as it is or as the site's tailoring of it.
        profile=profile_id.removeprefix(PROFILE_PREFIX).removeprefix(TAILORED_PROFILE_PREFIX),
        content_version=test.get("version", ""),
        scanner=scanner,
        started=test.get("start-time", ""),
        finished=test.get("end-time", ""),
        arf_sha256=hashlib.sha256(arf.read_bytes()).hexdigest(),
        rules=tuple(sorted(found, key=lambda r: r.rule)),
    )


def site_values(*, security_contact: str | None) -> dict[str, str]:
    """The content's values a site sets through its tailoring (short value ids): its security contact
    is root's mail alias."""
    return {ROOT_MAIL_ALIAS: security_contact} if security_contact else {}


def tailored_profile_id(profile: str) -> str:
    return TAILORED_PROFILE_PREFIX + profile


def tailoring_xml(profiles: Iterable[str], values: Mapping[str, str], *, time: dt.datetime) -> bytes:
    """An XCCDF 1.2 tailoring file: for each content profile, a profile that extends it and sets
    `values` (short value id -> value); `oscap xccdf eval --tailoring-file` with
    `--profile tailored_profile_id(profile)` evaluates it. Every string is escaped by the XML writer;
    a profile or value id outside the content's grammar, or a value with a control character, is
    refused."""
    from xml.etree import ElementTree  # writing only: nothing untrusted is parsed

    for profile in profiles:
        if profile not in PROFILES:
            raise AuditError(f"{profile!r} is not a profile of the content", code="scap-tailoring-invalid")
    for name, value in values.items():
        if not _RULE_ID.fullmatch(name) or not value.isprintable() or len(value) > 1024:
            raise AuditError(
                f"the tailored value {name!r} is not a plain value of the content",
                code="scap-tailoring-invalid",
            )
    ns = "http://checklists.nist.gov/xccdf/1.2"
    ElementTree.register_namespace("xccdf", ns)
    root = ElementTree.Element(f"{{{ns}}}Tailoring", {"id": TAILORING_ID})
    ElementTree.SubElement(root, f"{{{ns}}}benchmark", {"href": DATASTREAM})
    version = ElementTree.SubElement(root, f"{{{ns}}}version", {"time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    version.text = "1"
    for profile in sorted(set(profiles)):
        tailored = ElementTree.SubElement(
            root,
            f"{{{ns}}}Profile",
            {"id": tailored_profile_id(profile), "extends": PROFILE_PREFIX + profile},
        )
        title = ElementTree.SubElement(tailored, f"{{{ns}}}title")
        title.text = f"{profile} with the site's values"
        for name, value in sorted(values.items()):
            item = ElementTree.SubElement(tailored, f"{{{ns}}}set-value", {"idref": VALUE_PREFIX + name})
            item.text = value
    ElementTree.indent(root)
    text: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


@dataclass(frozen=True)
class Waiver:
    rule: str
    reason: str
    approved_by: str
    expires: dt.date
    line: int

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "reason": self.reason,
            "approved_by": self.approved_by,
            "expires": self.expires.isoformat(),
            "line": self.line,
        }


def waivers_path_for(spec_path: Path) -> Path:
    """The reviewed SCAP waivers beside the spec: `<spec stem>.scap-waivers.yaml`."""
    return spec_path.with_name(f"{spec_path.stem}.scap-waivers.yaml")


def load_waivers(path: Path) -> list[Waiver]:
    """The reviewed waivers file: a list under `waivers:` of rule, reason, approved_by, expires."""
    where = Location(str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AuditError(
            f"cannot read the waivers file {path}: {exc}", code="scap-waivers", location=where
        ) from None
    if not isinstance(data, dict) or set(data) != {"waivers"} or not isinstance(data["waivers"], list):
        raise AuditError(
            f"{path}: expected one key `waivers` holding a list", code="scap-waivers", location=where
        )
    lines = _item_lines(path.read_text())
    waivers: list[Waiver] = []
    seen: set[str] = set()
    for index, item in enumerate(data["waivers"]):
        line = lines[index] if index < len(lines) else 0
        waiver = _waiver(item, path, line)
        if waiver.rule in seen:
            raise AuditError(
                f"rule {waiver.rule} is waived twice", code="scap-waivers", location=Location(str(path), line)
            )
        seen.add(waiver.rule)
        waivers.append(waiver)
    return waivers


def _item_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), start=1) if re.match(r"^\s*- ", line)]


def _waiver(item: object, path: Path, line: int) -> Waiver:
    keys = {"rule", "reason", "approved_by", "expires"}
    if not isinstance(item, dict) or set(item) != keys:
        raise AuditError(
            "a waiver has exactly rule, reason, approved_by and expires",
            code="scap-waivers",
            location=Location(str(path), line),
        )
    rule, reason, approver, expires = item["rule"], item["reason"], item["approved_by"], item["expires"]
    problems = []
    if not isinstance(rule, str) or not _RULE_ID.match(rule):
        problems.append("rule: a rule id of the content such as sshd_disable_root_login")
    if not isinstance(reason, str) or not 20 <= len(reason.strip()) <= 1000:
        problems.append("reason: a sentence of 20 to 1000 characters")
    if not isinstance(approver, str) or not grammar.matches(grammar.EMAIL, approver):
        problems.append("approved_by: " + grammar.EMAIL.text)
    if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
        problems.append("expires: a date, YYYY-MM-DD")
    if problems:
        raise AuditError("; ".join(problems), code="scap-waivers", location=Location(str(path), line))
    return Waiver(rule, " ".join(reason.split()), approver, expires, line)


@dataclass(frozen=True)
class HostOutcome:
    host: str
    profile: str
    applicable: int
    passed: int
    waived: tuple[str, ...]  # failing rules a current waiver explains
    unwaived: tuple[str, ...]  # failing rules nothing explains

    @property
    def pass_ratio(self) -> float:
        return self.passed / self.applicable if self.applicable else 0.0


@dataclass(frozen=True)
class Assessment:
    """Scans weighed against the waivers on a given day."""

    hosts: tuple[HostOutcome, ...]
    stale: tuple[Waiver, ...]  # waivers for rules that pass wherever they are evaluated
    expired: tuple[Waiver, ...]
    controls: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # failing rule -> controls

    @property
    def ok(self) -> bool:
        return not self.stale and not self.expired and not any(h.unwaived for h in self.hosts)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "hosts": [
                {
                    "host": h.host,
                    "profile": h.profile,
                    "applicable": h.applicable,
                    "passed": h.passed,
                    "waived": list(h.waived),
                    "unwaived": list(h.unwaived),
                }
                for h in self.hosts
            ],
            "stale_waivers": [w.as_json() for w in self.stale],
            "expired_waivers": [w.as_json() for w in self.expired],
            "failing_controls": {rule: list(ids) for rule, ids in self.controls.items()},
        }


def assess(scans: Sequence[HostScan], waivers: Iterable[Waiver], *, today: dt.date) -> Assessment:
    current = {w.rule: w for w in waivers}
    expired = tuple(w for w in current.values() if w.expires < today)
    valid = {rule for rule, w in current.items() if w.expires >= today}
    failing: dict[str, tuple[str, ...]] = {}
    outcomes = []
    for scan in sorted(scans, key=lambda s: s.host):
        applicable = scan.applicable()
        fails = [r for r in applicable if not r.passed]
        for r in fails:
            failing[r.rule] = r.controls
        outcomes.append(
            HostOutcome(
                scan.host,
                scan.profile,
                len(applicable),
                len(applicable) - len(fails),
                tuple(r.rule for r in fails if r.rule in valid),
                tuple(r.rule for r in fails if r.rule not in valid),
            )
        )
    stale = tuple(w for w in current.values() if w.rule not in failing)
    return Assessment(tuple(outcomes), stale, expired, dict(sorted(failing.items())))
