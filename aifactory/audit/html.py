"""report.html: one self-contained page (no scripts or assets from anywhere), printable.

It opens with the overall verdict (pass, fail or not fully assessed; the counts; the most serious
finding) and reads as a finished document: every in-page link leads somewhere, evidence is told in
words (labels, yes/no), never as raw keys or Python values. Printed, it is A4 by default (US Letter
from the paper selector or `?paper=letter`), and every page carries its number, the report id and
the classification (CSS page margin boxes); table headers repeat and headings stay with what follows.

Written as a stream of small pieces straight to the file, so a 10,000-host report with thousands of
findings never exists as one string. Findings are grouped by rule; groups start collapsed
(`<details>`) when there are many, and all open for printing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from html import escape
from itertools import groupby
from pathlib import Path
from typing import Any

from aifactory.audit.controls import family_title
from aifactory.audit.model import FAIL, NOT_ASSESSED, PASS, WAIVED, AuditReport, Control, Evidence, Finding

OPEN_FINDINGS_BELOW = 50  # with fewer findings than this, every group starts open
STATUS_WORDS = {PASS: "pass", FAIL: "fail", WAIVED: "waived", NOT_ASSESSED: "not assessed"}
BANNER_COLOURS = {
    "public": "#007a33",
    "internal": "#4b5a6a",
    "confidential": "#0033a0",
    "secret": "#c8102e",
    "top-secret": "#e06500",
}

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
 background:#fff}
main{max-width:1200px;margin:0 auto;padding:0 24px 48px}
.banner{color:#fff;text-align:center;font-weight:700;letter-spacing:.12em;padding:4px 0;
 text-transform:uppercase}
h1{font-size:24px;margin:24px 0 8px}h2{font-size:19px;margin:32px 0 8px;border-bottom:2px solid #d0d7de}
h3{font-size:16px;margin:20px 0 6px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}
dl.facts dt{font-weight:600}dl.facts dd{margin:0;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}
tr.control td:first-child{white-space:nowrap}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.status{display:inline-block;min-width:6.5em;text-align:center;border-radius:3px;padding:0 6px;
 font-weight:600;color:#fff}
.st-pass{background:#1a7f37}.st-fail{background:#cf222e}.st-waived{background:#9a6700}
.st-not-assessed{background:#6e7781}
.totals{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0}
.totals div{border:1px solid #d0d7de;border-radius:4px;padding:6px 14px;min-width:9em}
.totals b{display:block;font-size:22px}
ul.rules{margin:0;padding-left:18px}
details{border:1px solid #d0d7de;border-radius:4px;margin:6px 0;padding:0 8px}
details>summary{cursor:pointer;padding:6px 0;font-weight:600}
.muted{color:#57606a}
.hosts{font:12px ui-monospace,monospace;word-break:break-word}
.verdict{font-size:17px;margin:16px 0 0;padding:10px 14px;border-radius:4px;
 border-left:8px solid #6e7781;background:#f3f5f7}
.verdict.v-fail{border-color:#cf222e}.verdict.v-pass{border-color:#1a7f37}
.verdict.v-incomplete{border-color:#6e7781}
.verdict .word{text-transform:uppercase;letter-spacing:.06em;font-weight:700}
nav.contents{margin:8px 0 0}nav.contents a{margin-right:14px}
.toolbar{text-align:right;margin:8px 0 -8px;font-size:13px}
@media print{
 body{font-size:10pt}main{max-width:none;padding:0}
 .banner,.toolbar{display:none}
 .status,th,.verdict{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 thead{display:table-header-group}tr{break-inside:avoid}
 h1,h2,h3,summary,.verdict{break-after:avoid;break-inside:avoid}
 section,.evidence{break-before:auto}
 details::details-content{content-visibility:visible;display:contents}
 a{color:inherit;text-decoration:none}
}
"""

# Opens every collapsed group before printing, so the printout holds everything (optional: the page
# reads fine without scripts).
# The paper selector (and `?paper=letter`) swaps the @page size rule.
PRINT_SCRIPT = (
    "window.addEventListener('beforeprint',function(){"
    "document.querySelectorAll('details').forEach(function(d){d.open=true})});"
    "function aifPaper(v){var s=document.getElementById('paper-size'),p=document.getElementById('paper');"
    "if(v!=='letter')v='a4';s.textContent='@page{size:'+(v==='letter'?'letter':'A4')+'}';if(p)p.value=v}"
    "document.addEventListener('DOMContentLoaded',function(){"
    "var m=/[?&]paper=([a-z0-9]+)/.exec(location.search);aifPaper(m?m[1]:'a4');"
    "var p=document.getElementById('paper');"
    "if(p)p.addEventListener('change',function(){aifPaper(p.value)})});"
)
SOURCE_WORDS = {
    "policy": "policy check",
    "bundle": "offline bundle",
    "deploy": "deploy record",
    "operator-log": "operator log",
    "decision-logs": "decision logs",
    "host-scan": "host scan (OpenSCAP)",
    "models": "signed models",
    "datasets": "dataset versions",
    "changes": "upgrades and rollbacks",
    "ai": "AI models (closed loop)",
}
# Labels for the evidence details' keys; any other key is spelled out the same way (underscores to
# spaces), so no raw key ever reaches the page.
LABELS = {
    "root": "Folder",
    "digest": "Digest",
    "files_checked": "Files checked",
    "built_for_plan": "Built for plan",
    "record": "Deploy record",
    "hosts_planned": "Hosts planned",
    "hosts_reported": "Hosts with a deploy record",
    "missing": "Hosts without a deploy record, by pool",
    "unplanned": "Hosts not in the plan",
    "last_run_not_ok": "Hosts whose last deploy run did not succeed",
    "evaluated_on": "Evaluated as of",
    "denied": "Plan denied",
    "waiver_problems": "Waiver problems",
    "fail": "Failing",
    "waived": "Waived",
    "approved_by": "Approved by",
}


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def label(key: str) -> str:
    """A detail's key as words: "files_checked" -> "Files checked"."""
    if key in LABELS:
        return LABELS[key]
    words = key.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def words(value: Any) -> str:
    """A scalar as a reader says it: yes/no, none, or its text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "none"
    return str(value)


def _css_string(text: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in " -.:()" else f"\\{ord(c):x} " for c in text) + '"'


def page_css(report: AuditReport) -> str:
    """The printed page's margins: classification on top, report id and page number below."""
    colour = BANNER_COLOURS.get(report.classification, "#4b5a6a")
    classification = _css_string(report.classification.replace("-", " ").upper())
    ident = _css_string(f"Report {report.report_id}")
    site = _css_string(f"Audit report: {report.site['name']}, {report.generated}")
    box = (
        "font:600 8pt system-ui,sans-serif;white-space:nowrap;"
        "-webkit-print-color-adjust:exact;print-color-adjust:exact"
    )
    return (
        "@page{margin:20mm 14mm 20mm 14mm;"
        f"@top-center{{content:{classification};color:#fff;background:{colour};{box};letter-spacing:.1em}}"
        f"@bottom-center{{content:{classification};color:#fff;background:{colour};{box};letter-spacing:.1em}}"
        f"@top-left{{content:{site};{box};font-weight:400;color:#57606a}}"
        f"@bottom-left{{content:{ident};{box};font-weight:400;color:#1b1f24}}"
        f'@bottom-right{{content:"Page " counter(page) " of " counter(pages);{box};color:#1b1f24}}'
        "}"
    )


def _status(status: str, extra: str = "") -> str:
    return f'<span class="status st-{status}"{extra}>{STATUS_WORDS.get(status, _e(status))}</span>'


def _table(*headers: str, ident: str = "") -> str:
    """The start of a table with these column headers (the caller closes </tbody></table>)."""
    cells = "".join(f"<th>{_e(h)}</th>" for h in headers)
    attribute = f' id="{ident}"' if ident else ""
    return f"<table{attribute}><thead><tr>{cells}</tr></thead><tbody>"


def _anchor(prefix: str, text: str) -> str:
    return prefix + "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _banner(report: AuditReport, where: str) -> str:
    colour = BANNER_COLOURS.get(report.classification, "#4b5a6a")
    ident = ' id="classification-banner"' if where == "top" else ""
    return (
        f'<div class="banner {where}"{ident} role="note" aria-label="classification" '
        f'style="background:{colour}">{_e(report.classification.replace("-", " "))}</div>\n'
    )


def _header(report: AuditReport) -> Iterator[str]:
    site = report.site
    facts = [
        ("Site", f"{site['name']}" + (f" — {site['description']}" if site.get("description") else "")),
        ("Jurisdiction", site.get("jurisdiction")),
        ("Air-gapped", "yes" if site.get("air_gapped") else "no"),
        ("Date", report.generated),
        ("Hosts", site.get("hosts")),
        ("Bundle digest", report.bundle_digest or "no bundle imported"),
        ("Spec digest", site.get("spec_digest")),
        ("Plan digest", site.get("plan_digest")),
        ("Classification", report.classification),
        ("Signed by", f"{report.signer.get('identity')} ({report.signer.get('fingerprint')})"),
        ("Tool", f"aifactory {report.tool_version}"),
    ]
    yield f'<header id="report-header"><h1>Audit report: {_e(site["name"])}</h1><dl class="facts">'
    for name, value in facts:
        yield f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>"
    yield "</dl></header>\n"


def verdict(report: AuditReport) -> tuple[str, str]:
    """(fail | pass | incomplete, the verdict line as text)."""
    totals = report.totals()
    total = len(report.controls)
    counts = (
        f"{totals[FAIL]} of {total} controls fail, {totals[WAIVED]} waived, "
        f"{totals[NOT_ASSESSED]} not assessed, {totals[PASS]} pass"
    )
    if totals[FAIL]:
        return FAIL, f"Fail: {counts}."
    if totals[NOT_ASSESSED] or not total:
        return "incomplete", f"Not fully assessed: {counts}; missing evidence is never a pass."
    return PASS, f"Pass: {counts}."


def most_serious(report: AuditReport) -> Finding | None:
    """The report's findings are ordered failing first, then by severity: the first one."""
    return report.findings[0] if report.findings else None


def _verdict(report: AuditReport) -> Iterator[str]:
    kind, line = verdict(report)
    word, _, rest = line.partition(":")
    yield (
        f'<p id="verdict" class="verdict v-{kind}" role="status"><span class="word">{_e(word)}</span>:'
        f"{_e(rest)}"
    )
    finding = most_serious(report)
    if finding is None:
        yield " No findings.</p>\n"
        return
    what = "Most serious finding" if finding.status == FAIL else "Most serious finding (waived)"
    yield (
        f' {what}: <a href="#{_anchor("finding-", finding.id)}">{_e(finding.title or finding.rule)}</a>'
        f" on <code>{_e(finding.resource)}</code> (severity {_e(finding.severity)}; "
        f"{_e(', '.join(finding.controls))}).</p>\n"
    )


CONTENTS = (
    ("summary", "Summary"),
    ("controls", "Controls"),
    ("findings", "Findings"),
    ("evidence", "Evidence"),
    ("data", "Data and models"),
    ("verification", "Checking this report"),
)


def _contents(report: AuditReport) -> Iterator[str]:
    entries = list(CONTENTS)
    if any(section.name == "ai" for section in report.evidence):  # only a site with a loop has one
        entries.insert(entries.index(("evidence", "Evidence")) + 1, ("evidence-ai", "AI models"))
    links = "".join(f'<a href="#{ident}">{_e(title)}</a>' for ident, title in entries)
    yield f'<nav class="contents" aria-label="contents">{links}</nav>\n'


def _toolbar(report: AuditReport) -> Iterator[str]:
    yield (
        '<div class="toolbar"><label for="paper">Paper for printing </label><select id="paper">'
        '<option value="a4">A4</option><option value="letter">US Letter</option></select></div>\n'
    )


def _summary(report: AuditReport) -> Iterator[str]:
    totals = report.totals()
    yield '<section id="summary"><h2>Summary</h2><div class="totals">'
    yield f"<div><b>{len(report.controls)}</b>controls</div>"
    for status in (PASS, FAIL, WAIVED, NOT_ASSESSED):
        yield f'<div id="total-{status}"><b>{totals[status]}</b>{_status(status)}</div>'
    failing = sum(f.status == FAIL for f in report.findings)
    yield f"<div><b>{failing}</b>failing findings</div></div>"
    yield _table("Family", "Controls", "Pass", "Fail", "Waived", "Not assessed", ident="summary-by-family")
    for row in report.summary():
        yield (
            f"<tr><td>{_e(row['family'])} {_e(row['title'])}</td><td>{row['controls']}</td>"
            f"<td>{row[PASS]}</td><td>{row[FAIL]}</td><td>{row[WAIVED]}</td><td>{row[NOT_ASSESSED]}</td></tr>"
        )
    yield "</tbody></table></section>\n"


def _rule_ref(rule: str, with_findings: frozenset[str]) -> str:
    code = f"<code>{_e(rule)}</code>"
    return f'<a href="#{_anchor("rule-", rule)}">{code}</a>' if rule in with_findings else code


def _control_row(control: Control, with_findings: frozenset[str] = frozenset()) -> str:
    waivers = "".join(
        f'<div class="waiver">waived by {_e(w.approved_by)}, expires {_e(w.expires)}: {_e(w.reason)}</div>'
        for w in control.waivers
    )
    rules = "".join(
        f"<li>{_status(r.status)} {_rule_ref(r.id, with_findings)} {_e(r.title)} "
        f'<span class="muted">({_e(SOURCE_WORDS.get(r.source, r.source))}'
        f"{'; ' + _e(r.note) if r.note else ''})</span></li>"
        for r in control.rules
    )
    counts = ", ".join(f"{n} {STATUS_WORDS.get(s, s)}" for s, n in control.findings.items() if n) or "none"
    return (
        f'<tr class="control" id="{_anchor("control-", control.id)}" data-status="{control.status}">'
        f"<td><b>{_e(control.id)}</b></td><td>{_e(control.title)}</td>"
        f'<td>{_status(control.status)}{waivers}</td><td><ul class="rules">{rules}</ul></td>'
        f"<td>{counts}</td></tr>"
    )


def _controls(report: AuditReport) -> Iterator[str]:
    yield '<section id="controls"><h2>Controls</h2>'
    with_findings = frozenset(f.rule for f in report.findings)
    for family, controls in groupby(report.controls, key=lambda c: c.family):
        yield f'<h3 id="{_anchor("family-", family)}">{_e(family)} {_e(family_title(family))}</h3>'
        yield _table("Control", "Title", "Status", "Rules", "Findings")
        for control in controls:
            yield _control_row(control, with_findings)
        yield "</tbody></table>"
    yield "</section>\n"


def _finding_row(finding: Finding) -> str:
    status = _status(finding.status)
    if finding.waiver:
        status += (
            f'<div class="waiver">approved by {_e(finding.waiver.approved_by)}, expires '
            f"{_e(finding.waiver.expires)}: {_e(finding.waiver.reason)}</div>"
        )
    return (
        f'<tr id="{_anchor("finding-", finding.id)}"><td><code>{_e(finding.resource)}</code></td>'
        f"<td>{_e(finding.message)}</td><td>{_e(finding.remediation)}</td><td>{status}</td></tr>"
    )


def _control_links(controls: Iterable[str], known: frozenset[str]) -> str:
    return ", ".join(
        f'<a href="#{_anchor("control-", c)}">{_e(c)}</a>' if c in known else _e(c) for c in controls
    )


def _findings(report: AuditReport) -> Iterator[str]:
    findings = report.findings
    failing = sum(f.status == FAIL for f in findings)
    yield (
        f'<section id="findings"><h2>Findings</h2><p>{len(findings)} findings: {failing} failing, '
        f"{len(findings) - failing} waived. Grouped by rule; open a group to see each resource.</p>"
    )
    if not findings:
        yield '<p class="muted">No findings.</p>'
    opened = " open" if len(findings) < OPEN_FINDINGS_BELOW else ""
    known = frozenset(c.id for c in report.controls)
    groups: dict[str, list[Finding]] = {}  # references only: the findings stay where they are
    for finding in findings:
        groups.setdefault(finding.rule, []).append(finding)
    for rule in sorted(groups):
        items = groups.pop(rule)  # in report order: failing first, then by severity and resource
        first = items[0]
        failing = sum(f.status == FAIL for f in items)
        yield (
            f'<details class="finding-group" id="{_anchor("rule-", rule)}"{opened}><summary>'
            f"<code>{_e(rule)}</code> {_e(first.title)} — {len(items)} finding(s), {failing} failing; "
            f"{_control_links(first.controls, known)}; severity {_e(first.severity)}</summary>"
            + _table("Resource", "Finding", "Remediation", "Status")
        )
        for finding in items:
            yield _finding_row(finding)
        yield "</tbody></table></details>"
    yield "</section>\n"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return '<span class="muted">none</span>'
        return (
            '<dl class="facts">'
            + "".join(f"<dt>{_e(label(str(k)))}</dt><dd>{_value(v)}</dd>" for k, v in value.items())
            + "</dl>"
        )
    if isinstance(value, list):
        if not value:
            return '<span class="muted">none</span>'
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    return _e(words(value))


def _pairs(headers: tuple[str, str], pairs: dict[str, Any]) -> Iterator[str]:
    yield _table(*headers)
    for key, value in pairs.items():
        yield f"<tr><td><code>{_e(key)}</code></td><td><code>{_e(value)}</code></td></tr>"
    yield "</tbody></table>"


def _baseline(index: int, baseline: dict[str, Any]) -> Iterator[str]:
    hosts = baseline.get("hosts") or []
    yield (
        f'<details id="baseline-{index}"><summary>Baseline {index}: {len(hosts)} host(s) in pool(s) '
        f"{_e(', '.join(baseline.get('pools') or []))} <code>{_e(baseline.get('fingerprint'))}</code>"
        "</summary>"
    )
    yield from _pairs(("Package", "Version"), baseline.get("packages") or {})
    yield from _pairs(("Config file", "Digest"), baseline.get("configs") or {})
    yield '<p class="hosts">'
    for start in range(0, len(hosts), 500):
        yield _e(", ".join(hosts[start : start + 500])) + ("," if start + 500 < len(hosts) else "")
    yield "</p></details>"


def _record_keeping(mapping: dict[str, Any]) -> Iterator[str]:
    """The AI section's table: each decision-record field and what it serves (audit.record_keeping)."""
    yield (
        '<h4 id="record-keeping">Decision records: EU AI Act Art. 12 and NIST AI RMF</h4>'
        f'<p class="muted">{_e(mapping.get("disclaimer"))}</p>'
    )
    yield _table("Field", "Written on", "What it records", "EU AI Act", "NIST AI RMF")
    for row in mapping.get("fields") or []:
        yield (
            f"<tr><td><code>{_e(row.get('field'))}</code></td><td>{_e(row.get('written'))}</td>"
            f"<td>{_e(row.get('meaning'))}</td><td>{_e(row.get('eu_ai_act'))}</td>"
            f"<td>{_e(row.get('nist_ai_rmf'))}</td></tr>"
        )
    yield "</tbody></table>"


def _evidence_detail(section: Evidence) -> Iterator[str]:
    detail = dict(section.detail)
    baselines = detail.pop("baselines", None) if section.name == "deploy" else None
    mapping = detail.pop("record_keeping", None) if section.name == "ai" else None
    logs = detail.pop("logs", None)
    if detail:
        yield _value(detail)
    if mapping:
        yield from _record_keeping(mapping)
    for index, baseline in enumerate(baselines or [], start=1):
        yield from _baseline(index, baseline)
    if logs:
        yield _table("Log", "Records", "Head", "Chain", "Problems")
        for log in logs:
            head = log.get("head") or {}
            yield (
                f"<tr><td><code>{_e(log.get('path'))}</code></td><td>{_e(words(log.get('records')))}</td>"
                f"<td>record {_e(words(head.get('seq')))} <code>{_e(words(head.get('hash')))}</code></td>"
                f"<td>{_status(PASS if log.get('ok') else FAIL)}</td>"
                f"<td>{_value(log.get('problems') or [])}</td></tr>"
            )
        yield "</tbody></table>"


def _evidence(report: AuditReport) -> Iterator[str]:
    yield '<section id="evidence"><h2>Evidence</h2>'
    for section in report.evidence:
        yield (
            f'<div class="evidence" id="{_anchor("evidence-", section.name)}"><h3>{_e(section.title)} '
            f"{_status(section.status)}</h3><p>{_e(section.summary)}</p>"
        )
        yield from _evidence_detail(section)
        yield "</div>"
    yield "</section>\n"


def _data(report: AuditReport) -> Iterator[str]:
    yield (
        '<section id="data"><h2>Data and models named in this report</h2>'
        + _table("Kind", "Name", "Owner", "Classification", "Storage")
    )
    for item in report.data:
        yield (
            f"<tr><td>{_e(item['kind'])}</td><td>{_e(item['name'])}</td><td>{_e(words(item.get('owner')))}</td>"
            f"<td>{_e(words(item.get('classification')))}</td><td>{_e(words(item.get('storage')))}</td></tr>"
        )
    yield "</tbody></table></section>\n"


def _footer(report: AuditReport) -> Iterator[str]:
    yield (
        '<footer id="verification"><h2>Checking this report</h2><p>The files of this report are listed '
        "with their SHA-256 digests in <code>SHA256SUMS</code>, signed in <code>SHA256SUMS.sig</code> "
        "(SSHSIG, namespace <code>aifactory-audit</code>). Check them with "
        "<code>aifactory audit verify DIR</code>, or without aifactory: <code>ssh-keygen -Y verify -f "
        f"allowed_signers -I {_e(report.signer.get('identity'))} -n aifactory-audit -s SHA256SUMS.sig "
        "&lt; SHA256SUMS</code> then "
        f"<code>sha256sum -c SHA256SUMS</code>. Report id <code>{_e(report.report_id)}</code>.</p>"
        "<p>Filed with it, in the same folder and signed with it (OSCAL 1.2.1): <code>ssp.json</code>, the "
        "System Security Plan generated from the site spec; <code>assessment-plan.json</code>, what this "
        "audit assesses and how; <code>assessment-results.json</code>, this report's results; "
        "<code>poam.json</code>, the plan of action for every failing and waived control; "
        "<code>profile.json</code>, the NIST SP 800-53 rev 5 moderate baseline controls aifactory "
        "implements, which resolves every control id against NIST's catalog.</p>"
        "</footer>\n"
    )


def render_html(report: AuditReport) -> Iterator[str]:
    """The page, piece by piece."""
    title = f"Audit report: {report.site['name']} ({report.generated})"
    yield (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style><style>{page_css(report)}</style>"
        '<style id="paper-size">@page{size:A4}</style>'
        f"<script>{PRINT_SCRIPT}</script></head><body>\n"
    )
    yield _banner(report, "top")
    yield "<main>\n"
    sections: Iterable[Callable[[AuditReport], Iterator[str]]] = (
        _toolbar,
        _verdict,
        _header,
        _contents,
        _summary,
        _controls,
        _findings,
        _evidence,
        _data,
        _footer,
    )
    for section in sections:
        yield from section(report)
    yield "</main>\n"
    yield _banner(report, "bottom")
    yield "</body></html>\n"


def write_html(report: AuditReport, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        buffer: list[str] = []
        size = 0
        for piece in render_html(report):
            buffer.append(piece)
            size += len(piece)
            if size > 1 << 14:
                handle.write("".join(buffer))
                buffer, size = [], 0
        handle.write("".join(buffer))
