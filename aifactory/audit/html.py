"""report.html: one self-contained page (no scripts or assets from anywhere), printable.

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
@media print{
 body{font-size:10pt}main{max-width:none;padding:0 8mm}
 .banner{position:fixed;left:0;right:0;-webkit-print-color-adjust:exact;print-color-adjust:exact}
 .banner.top{top:0}.banner.bottom{bottom:0}
 .status,th{-webkit-print-color-adjust:exact;print-color-adjust:exact}
 tr,details{break-inside:avoid}h2{break-after:avoid}
 @page{margin:14mm 8mm}
}
"""

# Opens every collapsed group before printing, so the printout holds everything (optional: the page
# reads fine without scripts).
PRINT_SCRIPT = (
    "window.addEventListener('beforeprint',function(){"
    "document.querySelectorAll('details').forEach(function(d){d.open=true})});"
)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


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


def _control_row(control: Control) -> str:
    waivers = "".join(
        f'<div class="waiver">waived by {_e(w.approved_by)}, expires {_e(w.expires)}: {_e(w.reason)}</div>'
        for w in control.waivers
    )
    rules = "".join(
        f'<li>{_status(r.status)} <a href="#{_anchor("rule-", r.id)}"><code>{_e(r.id)}</code></a> '
        f'{_e(r.title)} <span class="muted">({_e(r.source)}{"; " + _e(r.note) if r.note else ""})</span></li>'
        for r in control.rules
    )
    counts = ", ".join(f"{n} {s}" for s, n in control.findings.items() if n) or "none"
    return (
        f'<tr class="control" id="{_anchor("control-", control.id)}" data-status="{control.status}">'
        f"<td><b>{_e(control.id)}</b></td><td>{_e(control.title)}</td>"
        f'<td>{_status(control.status)}{waivers}</td><td><ul class="rules">{rules}</ul></td>'
        f"<td>{counts}</td></tr>"
    )


def _controls(report: AuditReport) -> Iterator[str]:
    yield '<section id="controls"><h2>Controls</h2>'
    for family, controls in groupby(report.controls, key=lambda c: c.family):
        yield f'<h3 id="{_anchor("family-", family)}">{_e(family)} {_e(family_title(family))}</h3>'
        yield _table("Control", "Title", "Status", "Rules", "Findings")
        for control in controls:
            yield _control_row(control)
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
            f"{_e(', '.join(first.controls))}; severity {_e(first.severity)}</summary>"
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
            + "".join(f"<dt>{_e(k)}</dt><dd>{_value(v)}</dd>" for k, v in value.items())
            + "</dl>"
        )
    if isinstance(value, list):
        if not value:
            return '<span class="muted">none</span>'
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    return _e(value)


def _pairs(headers: tuple[str, str], pairs: dict[str, Any]) -> Iterator[str]:
    yield _table(*headers)
    for key, value in pairs.items():
        yield f"<tr><td><code>{_e(key)}</code></td><td><code>{_e(value)}</code></td></tr>"
    yield "</tbody></table>"


def _baseline(index: int, baseline: dict[str, Any]) -> Iterator[str]:
    hosts = baseline.get("hosts") or []
    yield (
        f"<details><summary>Baseline {index}: {len(hosts)} host(s) in pool(s) "
        f"{_e(', '.join(baseline.get('pools') or []))} <code>{_e(baseline.get('fingerprint'))}</code>"
        "</summary>"
    )
    yield from _pairs(("Package", "Version"), baseline.get("packages") or {})
    yield from _pairs(("Config file", "Digest"), baseline.get("configs") or {})
    yield '<p class="hosts">'
    for start in range(0, len(hosts), 500):
        yield _e(", ".join(hosts[start : start + 500])) + ("," if start + 500 < len(hosts) else "")
    yield "</p></details>"


def _evidence_detail(section: Evidence) -> Iterator[str]:
    detail = dict(section.detail)
    baselines = detail.pop("baselines", None) if section.name == "deploy" else None
    logs = detail.pop("logs", None)
    if detail:
        yield _value(detail)
    for index, baseline in enumerate(baselines or [], start=1):
        yield from _baseline(index, baseline)
    if logs:
        yield _table("Log", "Records", "Head", "Chain", "Problems")
        for log in logs:
            head = log.get("head") or {}
            yield (
                f"<tr><td><code>{_e(log.get('path'))}</code></td><td>{_e(log.get('records'))}</td>"
                f"<td>seq {_e(head.get('seq'))} <code>{_e(head.get('hash'))}</code></td>"
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
            f"<tr><td>{_e(item['kind'])}</td><td>{_e(item['name'])}</td><td>{_e(item.get('owner'))}</td>"
            f"<td>{_e(item.get('classification'))}</td><td>{_e(item.get('storage'))}</td></tr>"
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
        "</footer>\n"
    )


def render_html(report: AuditReport) -> Iterator[str]:
    """The page, piece by piece."""
    title = f"Audit report: {report.site['name']} ({report.generated})"
    yield (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style><script>{PRINT_SCRIPT}</script></head><body>\n"
    )
    yield _banner(report, "top")
    yield "<main>\n"
    sections: Iterable[Callable[[AuditReport], Iterator[str]]] = (
        _header,
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
