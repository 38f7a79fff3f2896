"""OpenSCAP evidence: the ARF digest, the NIST mapping, the waivers and how they weigh together.

Real parts: Debian's `oscap` (openscap-scanner) evaluates a few rules of the Debian 12 datastream
that setup installed (Debian 13's ssg-debian 0.1.76) on this machine, read-only; the digest is
compared with what oscap itself prints for each rule. The waiver and assessment tests use the
digested data types directly (no scan needed to weigh a waiver).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aifactory.audit import scap
from aifactory.audit.catalog import load_catalog
from aifactory.errors import AuditError

needs_oscap = pytest.mark.skipif(
    shutil.which("oscap") is None or not Path(scap.DATASTREAM).is_file(),
    reason="needs openscap-scanner and ssg-debian 0.1.76 (scripts/setup.sh installs both)",
)

RULES = (
    "file_permissions_etc_shadow",
    "file_owner_etc_passwd",
    "package_telnetd_removed",
    "sshd_disable_root_login",
    "package_aide_installed",
    "sysctl_kernel_dmesg_restrict",
)


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A real oscap run of a few rules; (ARF, oscap's own printed result per rule)."""
    arf = tmp_path_factory.mktemp("scap") / "arf.xml"
    argv = ["oscap", "xccdf", "eval", "--profile", scap.PROFILE_PREFIX + "anssi_bp28_high"]
    for rule in RULES:
        argv += ["--rule", scap.RULE_PREFIX + rule]
    done = subprocess.run(
        [*argv, "--results-arf", str(arf), scap.DATASTREAM], capture_output=True, text=True, check=False
    )
    assert done.returncode in (0, 2), done.stderr
    printed = dict(
        re.findall(rf"^Rule\s+{scap.RULE_PREFIX}(\S+)\s*\nResult\s+(\S+)", done.stdout, re.MULTILINE)
    )
    return arf, printed


@needs_oscap
def test_profiles_are_the_contents() -> None:
    done = subprocess.run(
        ["oscap", "info", "--profiles", scap.DATASTREAM], capture_output=True, text=True, check=True
    )
    found = sorted(
        line.split(":", 1)[0].removeprefix(scap.PROFILE_PREFIX) for line in done.stdout.splitlines()
    )
    assert found == sorted(scap.PROFILES)


@needs_oscap
def test_digest_agrees_with_oscap_and_maps_rules_to_catalog_controls(
    small_scan: tuple[Path, dict[str, str]],
) -> None:
    arf, printed = small_scan
    scan = scap.digest_arf(arf, host="here")
    assert scan.profile == "anssi_bp28_high"
    assert scan.content_version == "0.1.76"
    assert "openscap" in scan.scanner
    evaluated = {r.rule: r.result for r in scan.rules if r.result != "notselected"}
    assert evaluated == printed
    assert set(printed) == set(RULES)
    catalog = load_catalog()
    by_rule = {r.rule: r for r in scan.rules}
    # /etc/shadow's mode is an access-control setting in the content's own references.
    assert any(c.startswith(("AC-", "CM-")) for c in by_rule["file_permissions_etc_shadow"].controls)
    for rule in scan.rules:
        for control in rule.controls:
            assert catalog.get(control) is not None, (rule.rule, control)


@needs_oscap
def test_digest_round_trips_through_json(small_scan: tuple[Path, dict[str, str]]) -> None:
    scan = scap.digest_arf(small_scan[0], host="here")
    assert scap.HostScan.from_json(scan.as_json()) == scan


def test_unreadable_arf_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "arf.xml"
    bad.write_text("<not-arf/>")
    with pytest.raises(AuditError, match="not exactly one TestResult"):
        scap.digest_arf(bad, host="h")
    bad.write_text("<unclosed")
    with pytest.raises(AuditError, match="not a readable ARF"):
        scap.digest_arf(bad, host="h")


@pytest.mark.parametrize(
    ("reference", "ids"),
    [
        ("AC-6(1),CM-6(a)", ["ac-6.1", "cm-6"]),
        ("AU-2(d), AU-12(c)", ["au-12", "au-2"]),
        ("CM-7(a),CM-7(b),CM-6(a)", ["cm-6", "cm-7"]),
        ("not a control", []),
    ],
)
def test_control_ids_from_content_references(reference: str, ids: list[str]) -> None:
    assert scap.control_ids(reference) == ids


TMP_REASON = "lab hosts share the machine's disks; production hosts get a /tmp partition at install"
WAIVERS = f"""waivers:
  - rule: partition_for_tmp
    reason: {TMP_REASON}
    approved_by: ciso@site.example
    expires: 2027-06-30
  - rule: package_aide_installed
    reason: integrity checking is done by the bundle's signed manifest until AIDE is rolled out
    approved_by: ciso@site.example
    expires: 2026-01-31
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "waivers.yaml"
    path.write_text(text)
    return path


def test_waivers_load_with_their_lines(tmp_path: Path) -> None:
    waivers = scap.load_waivers(_write(tmp_path, WAIVERS))
    assert [(w.rule, w.line, w.expires) for w in waivers] == [
        ("partition_for_tmp", 2, dt.date(2027, 6, 30)),
        ("package_aide_installed", 6, dt.date(2026, 1, 31)),
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            (
                "    approved_by: ciso@site.example\n    expires: 2027-06-30\n",
                "    expires: 2027-06-30\n",
            ),
            "exactly rule, reason, approved_by and expires",
        ),
        (("ciso@site.example", "ciso"), "approved_by: an email address"),
        (("2027-06-30", "soon"), "expires: a date"),
        (("rule: partition_for_tmp", "rule: Partition For Tmp"), "rule: a rule id"),
        (("rule: partition_for_tmp", "rule: package_aide_installed"), "waived twice"),
        (
            (
                f"reason: {TMP_REASON}",
                "reason: because",
            ),
            "reason: a sentence",
        ),
    ],
)
def test_bad_waivers_are_refused_with_file_and_line(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path, WAIVERS.replace(*edit, 1))
    with pytest.raises(AuditError, match=re.escape(message)) as raised:
        scap.load_waivers(path)
    assert raised.value.location is not None and raised.value.location.file == str(path)
    assert raised.value.location.line in (2, 6)


def _scan(host: str, results: dict[str, str]) -> scap.HostScan:
    rules = tuple(scap.RuleResult(r, res, "medium", r, ("cm-6",)) for r, res in sorted(results.items()))
    return scap.HostScan(host, "anssi_bp28_high", "0.1.76", "oscap", "", "", "0" * 64, rules)


def _waiver(rule: str, expires: dt.date) -> scap.Waiver:
    return scap.Waiver(rule, "a reason long enough to read", "ciso@site.example", expires, 1)


TODAY = dt.date(2026, 12, 1)
LATER = dt.date(2027, 1, 1)


def test_waived_failures_count_as_not_passed() -> None:
    scans = [_scan("h1", {"a": "pass", "b": "fail", "c": "notapplicable", "d": "notchecked", "e": "error"})]
    outcome = scap.assess(scans, [_waiver("b", LATER), _waiver("e", LATER)], today=TODAY)
    (host,) = outcome.hosts
    assert (host.applicable, host.passed) == (3, 1)
    assert host.waived == ("b", "e") and host.unwaived == ()
    assert outcome.ok
    assert outcome.controls == {"b": ("cm-6",), "e": ("cm-6",)}


def test_an_unwaived_failure_fails_the_assessment() -> None:
    outcome = scap.assess([_scan("h1", {"a": "fail"}), _scan("h2", {"a": "pass"})], [], today=TODAY)
    assert not outcome.ok
    assert [h.unwaived for h in outcome.hosts] == [("a",), ()]


def test_a_waiver_for_a_rule_that_passes_everywhere_is_stale() -> None:
    outcome = scap.assess(
        [_scan("h1", {"a": "pass", "b": "fail"})], [_waiver("a", LATER), _waiver("b", LATER)], today=TODAY
    )
    assert [w.rule for w in outcome.stale] == ["a"]
    assert not outcome.ok


def test_an_expired_waiver_fails_and_no_longer_explains_its_failure() -> None:
    outcome = scap.assess([_scan("h1", {"b": "fail"})], [_waiver("b", dt.date(2026, 11, 30))], today=TODAY)
    assert [w.rule for w in outcome.expired] == ["b"]
    assert outcome.hosts[0].unwaived == ("b",)
    assert not outcome.ok


# --- the site's tailoring (`oscap --tailoring-file`): its security contact as root's mail alias ---
WHEN = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)


def test_the_site_values_are_its_security_contact_as_root_mail_alias() -> None:
    assert scap.site_values(security_contact="soc@lab.example") == {
        "var_postfix_root_mail_alias": "soc@lab.example"
    }
    assert scap.site_values(security_contact=None) == {}


def test_tailoring_extends_each_profile_and_sets_only_the_site_values() -> None:
    from defusedxml import ElementTree

    text = scap.tailoring_xml(
        ["standard", "anssi_bp28_intermediary", "standard"],
        {"var_postfix_root_mail_alias": "soc@lab.example"},
        time=WHEN,
    )
    ns = "{http://checklists.nist.gov/xccdf/1.2}"
    root = ElementTree.fromstring(text)
    assert root.tag == f"{ns}Tailoring" and root.get("id") == "xccdf_aifactory_tailoring_site"
    assert root.find(f"{ns}benchmark").get("href") == scap.DATASTREAM
    assert root.find(f"{ns}version").get("time") == "2026-12-02T06:00:00"
    profiles = root.findall(f"{ns}Profile")
    assert [(p.get("id"), p.get("extends")) for p in profiles] == [
        (
            "xccdf_aifactory_profile_anssi_bp28_intermediary",
            "xccdf_org.ssgproject.content_profile_anssi_bp28_intermediary",
        ),
        ("xccdf_aifactory_profile_standard", "xccdf_org.ssgproject.content_profile_standard"),
    ]
    for profile in profiles:
        # Nothing selected or unselected: only the value is set.
        assert [child.tag.removeprefix(ns) for child in profile] == ["title", "set-value"]
        (value,) = profile.findall(f"{ns}set-value")
        assert value.get("idref") == "xccdf_org.ssgproject.content_value_var_postfix_root_mail_alias"
        assert value.text == "soc@lab.example"


def test_tailoring_escapes_markup_and_refuses_what_is_not_a_value() -> None:
    from defusedxml import ElementTree

    hostile = "a&b<c>\"d'@x{{ e }}"
    text = scap.tailoring_xml(["standard"], {"var_postfix_root_mail_alias": hostile}, time=WHEN)
    assert b"<c>" not in text and b"&amp;b&lt;c&gt;" in text
    ns = "{http://checklists.nist.gov/xccdf/1.2}"
    assert ElementTree.fromstring(text).find(f"{ns}Profile/{ns}set-value").text == hostile
    for profile, values in [
        (["standard"], {"var_postfix_root_mail_alias": "soc@lab.example\nroot: x@evil.example"}),
        (["standard"], {"var_postfix_root_mail_alias": "soc@lab.example\x00"}),
        (["standard"], {'var"><x': "soc@lab.example"}),
        (["not_a_profile"], {"var_postfix_root_mail_alias": "soc@lab.example"}),
    ]:
        with pytest.raises(AuditError, match="not a"):
            scap.tailoring_xml(profile, values, time=WHEN)


@needs_oscap
def test_oscap_evaluates_the_tailored_profile_with_the_site_value(tmp_path: Path) -> None:
    """Real oscap: the tailored profile runs, the ARF records the site's value for the rule's check,
    and the digest names the content's profile."""
    tailoring = tmp_path / "tailoring.xml"
    values = scap.site_values(security_contact="soc@lab.example")
    tailoring.write_bytes(scap.tailoring_xml(["anssi_bp28_intermediary"], values, time=WHEN))
    arf = tmp_path / "arf.xml"
    argv = ["oscap", "xccdf", "eval", "--tailoring-file", str(tailoring)]
    argv += ["--profile", scap.tailored_profile_id("anssi_bp28_intermediary")]
    argv += ["--rule", scap.RULE_PREFIX + "postfix_client_configure_mail_alias"]
    done = subprocess.run(
        [*argv, "--results-arf", str(arf), scap.DATASTREAM], capture_output=True, text=True, check=False
    )
    assert done.returncode in (0, 2), done.stderr
    recorded = re.findall(
        r'<set-value idref="xccdf_org\.ssgproject\.content_value_var_postfix_root_mail_alias">([^<]*)<',
        arf.read_text(),
    )
    assert recorded == ["soc@lab.example"]
    scan = scap.digest_arf(arf, host="here")
    assert scan.profile == "anssi_bp28_intermediary"
    evaluated = {r.rule: r.result for r in scan.rules if r.result != "notselected"}
    assert list(evaluated) == ["postfix_client_configure_mail_alias"]
