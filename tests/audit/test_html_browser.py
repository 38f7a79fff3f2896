"""report.html in a real browser (Debian's headless Chromium, no network): the classification
banner, the summary and every control are visible on the page; a screenshot is kept as an artifact."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from auditfixtures import artifacts_dir

from aifactory.audit import WrittenReport

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"
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
    }).length
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


@pytest.fixture(scope="module")
def page(failing_report: WrittenReport, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("browser")
    html = (failing_report.folder / "report.html").read_text()
    probed = folder / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    done = _chromium(folder / "profile", "--window-size=1280,1600", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"chromium gave no page (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(
        match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )


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


def test_page_loads_nothing_from_anywhere(page: dict) -> None:
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
