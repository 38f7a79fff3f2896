"""report.html in a real browser (Debian's headless Chromium, no network): the classification
banner, the verdict line, the summary and every control are visible on the page; every in-page link
leads somewhere; the text has no raw keys and no Python values. Printed to PDF (Chromium's own
print, read back with poppler's pdfinfo and pdftotext): A4 by default, US Letter on request, and
every page carries its number, the report id and the classification. Screenshots are kept."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from auditfixtures import artifacts_dir

from aifactory.audit import WrittenReport
from aifactory.audit.html import OPEN_FINDINGS_BELOW, write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POPPLER = shutil.which("pdftotext") and shutil.which("pdfinfo") and shutil.which("pdftoppm")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"
)
needs_poppler = pytest.mark.skipif(
    not POPPLER, reason="needs poppler-utils (apt-get install -y poppler-utils)"
)

# Runs inside the page after layout: what a reader would see, measured by the browser itself.
PROBE = """<script>
(function () {
  function seen(el) {
    if (!el) return false;
    var r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'
      && el.getClientRects().length > 0;
  }
  var banner = document.getElementById('classification-banner');
  var out = {
    banner: {visible: seen(banner), text: banner ? banner.innerText.trim() : null},
    summary: {visible: seen(document.getElementById('summary')),
              families: Array.prototype.map.call(
                document.querySelectorAll('#summary-by-family tbody tr'),
                function (tr) { return {visible: seen(tr), family: tr.cells[0].innerText.split(' ')[0]}; })},
    controls: Array.prototype.map.call(document.querySelectorAll('tr.control'), function (tr) {
      return {id: tr.cells[0].innerText.trim(), status: tr.dataset.status, visible: seen(tr)};
    }),
    external: Array.prototype.filter.call(document.querySelectorAll('[src],[href]'), function (el) {
      var u = el.getAttribute('src') || el.getAttribute('href'); return !/^#/.test(u);
    }).length,
    links: Array.prototype.map.call(document.querySelectorAll('a[href^="#"]'), function (a) {
      var id = decodeURIComponent(a.getAttribute('href').slice(1));
      return {href: a.getAttribute('href'), resolves: !!document.getElementById(id)};
    }),
    verdict: (function (v) {
      var header = document.getElementById('report-header');
      return {visible: seen(v), text: v ? v.innerText.trim() : null,
              before_header: !!(v && header && (v.compareDocumentPosition(header) & 4))};
    })(document.getElementById('verdict')),
    headings: Array.prototype.map.call(document.querySelectorAll('h1,h2,h3'), function (h) {
      return h.innerText.trim();
    }),
    text: document.body.innerText
  };
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _probe(report: WrittenReport, folder: Path) -> dict[str, Any]:
    html = (report.folder / "report.html").read_text()
    probed = folder / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    done = _chromium(folder / "profile", "--window-size=1280,1600", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"chromium gave no page (rc {done.returncode}): {done.stderr[-2000:]}"
    probe: dict[str, Any] = json.loads(
        match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    return probe


@pytest.fixture(scope="module")
def page(failing_report: WrittenReport, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _probe(failing_report, tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def lab_page(lab_report: WrittenReport, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _probe(lab_report, tmp_path_factory.mktemp("browser-lab"))


def test_banner_shows_the_highest_classification(page: dict, failing_report: WrittenReport) -> None:
    assert page["banner"]["visible"]
    assert page["banner"]["text"] == failing_report.report.classification.replace("-", " ").upper()
    assert page["banner"]["text"] == "CONFIDENTIAL"  # the lab's dataset and model are confidential


def test_summary_is_visible_with_every_family(page: dict, failing_report: WrittenReport) -> None:
    assert page["summary"]["visible"]
    families = [row["family"] for row in failing_report.report.summary()]
    assert [row["family"] for row in page["summary"]["families"]] == families
    assert all(row["visible"] for row in page["summary"]["families"])


def test_every_control_is_visible_with_its_status(page: dict, failing_report: WrittenReport) -> None:
    expected = {c.id: c.status for c in failing_report.report.controls}
    shown = {c["id"]: c["status"] for c in page["controls"]}
    assert shown == expected
    assert all(c["visible"] for c in page["controls"])
    assert {"fail", "waived", "not-assessed", "pass"} <= set(shown.values())


def test_page_loads_nothing_from_anywhere(page: dict[str, Any]) -> None:
    assert page["external"] == 0


def test_screenshot_is_kept(failing_report: WrittenReport, tmp_path: Path) -> None:
    target = artifacts_dir() / "report.png"
    target.unlink(missing_ok=True)
    done = _chromium(
        tmp_path / "profile",
        "--window-size=1280,2000",
        "--hide-scrollbars",
        f"--screenshot={target}",
        (failing_report.folder / "report.html").as_uri(),
    )
    assert target.exists(), done.stderr[-2000:]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 20_000  # a rendered page, not a blank one


def _detail_keys(node: object) -> set[str]:
    """Every key of the evidence details report.json holds, at any depth."""
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            keys.add(str(key))
            keys |= _detail_keys(value)
    elif isinstance(node, list):
        for item in node:
            keys |= _detail_keys(item)
    return keys


@pytest.mark.parametrize("which", ["page", "lab_page"])
def test_every_in_page_link_resolves(which: str, request: pytest.FixtureRequest) -> None:
    probe = request.getfixturevalue(which)
    assert len(probe["links"]) >= 6  # at least the contents
    assert [link["href"] for link in probe["links"] if not link["resolves"]] == []


def test_the_verdict_line_comes_first(page: dict[str, Any], failing_report: WrittenReport) -> None:
    report = failing_report.report
    totals = report.totals()
    verdict = page["verdict"]
    assert verdict["visible"] and verdict["before_header"]
    assert verdict["text"].startswith("FAIL: ")
    assert f"{totals['fail']} of {len(report.controls)} controls fail" in verdict["text"]
    worst = report.findings[0]
    assert worst.status == "fail" and worst.severity == "critical"
    assert f"Most serious finding: {worst.title} on {worst.resource}" in verdict["text"]


def test_a_site_with_missing_evidence_is_not_called_a_pass(lab_page: dict[str, Any]) -> None:
    assert lab_page["verdict"]["text"].startswith("NOT FULLY ASSESSED: ")


@pytest.mark.parametrize("which", ["page", "lab_page"])
def test_evidence_reads_as_words(which: str, request: pytest.FixtureRequest) -> None:
    probe = request.getfixturevalue(which)
    report = request.getfixturevalue("failing_report" if which == "page" else "lab_report")
    details = json.loads((report.folder / "report.json").read_text())["evidence"]
    raw = {k for k in _detail_keys([e["detail"] for e in details]) if "_" in k}
    assert raw, "the fixture's evidence has snake_case keys to hide"
    text = probe["text"]
    assert sorted(k for k in raw if k in text) == []
    assert re.findall(r"\b(?:True|False|None)\b", text) == []


def _pdf(report: WrittenReport, folder: Path, query: str = "") -> Path:
    target = folder / "report.pdf"
    done = _chromium(
        folder / "profile",
        "--no-pdf-header-footer",
        f"--print-to-pdf={target}",
        (report.folder / "report.html").as_uri() + query,
    )
    assert target.exists(), done.stderr[-2000:]
    return target


def _pdfinfo(pdf: Path) -> dict[str, str]:
    done = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in done.stdout.splitlines())}


def _page_text(pdf: Path, number: int) -> str:
    done = subprocess.run(
        ["pdftotext", "-layout", "-f", str(number), "-l", str(number), str(pdf), "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def printed(failing_report: WrittenReport, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not POPPLER:
        pytest.skip("needs poppler-utils (apt-get install -y poppler-utils)")
    return _pdf(failing_report, tmp_path_factory.mktemp("print"))


@needs_poppler
def test_printed_on_a4_every_page_has_its_number_the_report_id_and_the_classification(
    printed: Path, failing_report: WrittenReport
) -> None:
    info = _pdfinfo(printed)
    assert "(A4)" in info["Page size"], info["Page size"]
    pages = int(info["Pages"])
    assert pages >= 3
    report = failing_report.report
    for number in range(1, pages + 1):
        text = _page_text(printed, number)
        assert f"Page {number} of {pages}" in text, number
        assert report.report_id in text, number
        assert report.classification.upper() in text, number


@needs_poppler
def test_no_page_ends_with_a_heading(printed: Path, page: dict[str, Any]) -> None:
    headings = set(page["headings"])
    pages = int(_pdfinfo(printed)["Pages"])
    for number in range(1, pages + 1):
        body = [line.strip() for line in _page_text(printed, number).splitlines() if line.strip()]
        last = next(line for line in reversed(body) if "Report " not in line and "Page " not in line)
        assert last not in headings, f"page {number} ends with the heading {last!r}"


@needs_poppler
def test_a_table_continued_on_a_new_page_repeats_its_header(
    failing_report: WrittenReport, tmp_path: Path
) -> None:
    """A control row never opens a page: a controls table that goes on to the next page starts it
    with its header row again. The report is given each of its controls four times, each family's
    together, so that a family's controls table runs over a page whatever else the report holds (the
    list repeated as a whole made short tables of one family after another, each of which could start
    a page of its own and never be continued)."""
    report = failing_report.report
    grouped = sorted(list(report.controls) * 4, key=lambda control: control.family)
    longer = dataclasses.replace(report, controls=type(report.controls)(grouped))
    html = tmp_path / "long.html"
    write_html(longer, html)
    printed = tmp_path / "long.pdf"
    _chromium(tmp_path / "profile", "--no-pdf-header-footer", f"--print-to-pdf={printed}", html.as_uri())
    pages = int(_pdfinfo(printed)["Pages"])
    continued = 0
    for number in range(2, pages + 1):
        body = [line for line in _page_text(printed, number).splitlines() if line.strip()][1:]
        assert not re.match(r"\s*[A-Z]{2}-\d+(\(\d+\))?\s", body[0]), f"page {number}: {body[0]!r}"
        continued += bool(re.match(r"\s*Control\s+Title\s+Status\s+Rules\s+Findings", body[0]))
    assert continued >= 1, "a family's controls table (four times its rows) should run over a page"


@needs_poppler
def test_collapsed_finding_groups_print_in_full(failing_report: WrittenReport, tmp_path: Path) -> None:
    """With 50 findings or more the groups start collapsed on screen; the printout holds them all."""
    report = failing_report.report
    template = report.findings[0]
    findings = tuple(
        dataclasses.replace(
            template, rule=f"{template.rule}_{i % 7}", message=f"{template.message} (copy {i})"
        )
        for i in range(OPEN_FINDINGS_BELOW + 10)
    )
    many = dataclasses.replace(report, findings=findings)
    html = tmp_path / "many.html"
    write_html(many, html)
    assert '<details class="finding-group" id=' in html.read_text() and " open>" not in html.read_text()
    target = tmp_path / "many.pdf"
    _chromium(tmp_path / "profile", "--no-pdf-header-footer", f"--print-to-pdf={target}", html.as_uri())
    text = subprocess.run(["pdftotext", str(target), "-"], capture_output=True, text=True, check=True).stdout
    assert sorted(set(re.findall(r"\(copy (\d+)\)", text)), key=int) == [str(i) for i in range(len(findings))]


@needs_poppler
def test_letter_paper_on_request(failing_report: WrittenReport, tmp_path: Path) -> None:
    info = _pdfinfo(_pdf(failing_report, tmp_path, "?paper=letter"))
    assert "(letter)" in info["Page size"], info["Page size"]


@needs_poppler
def test_printed_page_picture_is_kept(printed: Path) -> None:
    prefix = artifacts_dir() / "report-print"
    subprocess.run(
        ["pdftoppm", "-f", "1", "-l", "1", "-r", "80", "-png", str(printed), str(prefix)], check=True
    )
    picture = next(artifacts_dir().glob("report-print-*1.png"))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
