"""`aifactory up` end to end on a lab of its own: real namespaces, sshd, Ansible, torch, Slurm.

One lab (site `up<pid>`) is brought up by the first real run and shared by the tests of this module,
which run in order: a policy deny changes nothing; the first run admits the new compute hosts through
its health stage, serves a model, answers one allowed and one denied request, runs one turn of the
model's loop and writes a signed report; then the model it signed and promoted (and the champion after
the loop's turn) is what `aifactory models` shows, every decision names the version that answered
(issue 28), the loop stage's turn promoted or refused with its reasons and the server answers with the
champion after it (issue 30), and Prometheus scrapes every host with TLS; a second run changes nothing
and is fast; a run plans the site once; a host failing its health run stops `up` with exit 4 naming it
and the check, and the next run admits it; a host failing at deploy stops `up` with exit 4 naming it,
and the next run resumes at deploy. After the second run, the control host's state is backed up, lost
and restored (issue 27): `up` then finds every stage as it was and the restored evidence verifies.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rfc8785

from tests.conftest import copy_lab_spec, lab_unavailable

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable())),
]

AIFACTORY = [sys.executable, "-m", "aifactory.cli.main"]
# A limit far below the lab's measured link speed (policies/data/health_thresholds.json, baselines.lab).
TBF = ["tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms"]


@dataclass
class UpSite:
    spec: Path
    name: str
    env: dict[str, str]
    first_seconds: float = 0.0

    def run(self, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AIFACTORY, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stages(self) -> dict[str, dict]:
        path = Path(self.env["AIFACTORY_STATE_HOME"]) / self.name / "up" / "stages.json"
        return json.loads(path.read_text())

    def on_host(self, host: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run("lab", "exec", str(self.spec), "--host", host, "--", *argv, timeout=300)

    def node_states(self) -> dict[str, tuple[str, str]]:
        """Slurm's nodes: state and reason (sinfo's %T and %E), asked on the control host."""
        listed = self.run(
            "lab",
            "exec",
            str(self.spec),
            "--",
            "sinfo",
            "--Node",
            "--noheader",
            "--format=%N|%T|%E",
            timeout=300,
        )
        assert listed.returncode == 0, listed.stderr
        return {n: (s, r) for n, s, r in (line.split("|", 2) for line in listed.stdout.splitlines())}

    def namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in listed.splitlines() if f"aif.{self.name}." in line]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSite]:
    root = tmp_path_factory.mktemp("up")
    name = f"up{os.getpid()}"
    spec = copy_lab_spec(root / "site", name)
    env = {
        **os.environ,
        "AIFACTORY_STATE_HOME": str(root / "state"),
        "AIFACTORY_BUNDLES_HOME": str(root / "bundles"),
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    up_site = UpSite(spec, name, env)
    try:
        yield up_site
    finally:
        up_site.run("down", str(spec), timeout=300)


def test_a_policy_deny_stops_before_any_change(site: UpSite, tmp_path: Path) -> None:
    denied = copy_lab_spec(tmp_path, site.name + "x")
    denied.write_text(denied.read_text().replace("encrypted_at_rest: true", "encrypted_at_rest: false"))
    result = site.run("up", str(denied), "--lab", timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SC-28" in result.stderr and "storage/share" in result.stderr
    assert "policy" in result.stderr and "FAILED" in result.stderr
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"aif.{site.name}x." not in listed, "a denied site must not get a lab"
    records = json.loads(
        (Path(site.env["AIFACTORY_STATE_HOME"]) / (site.name + "x") / "up" / "stages.json").read_text()
    )
    assert records["policy"]["status"] == "failed"
    assert "lab" not in records and "bundle" not in records


def test_first_up_serves_a_model_and_writes_a_signed_report(site: UpSite) -> None:
    began = time.monotonic()
    result = site.run("up", str(site.spec), "--lab")
    site.first_seconds = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    stages = site.stages()
    assert all(record["status"] in ("ok", "skipped") for record in stages.values()), stages
    assert stages["provision"]["status"] == "skipped" and "pulumi" in stages["provision"]["summary"]
    # deploy left both compute nodes drained for admission; the health stage's passing run resumed them
    assert "drained until the health gate admits them" in stages["scheduler"]["summary"]
    assert sorted(stages["health"]["outputs"]["resumed"]) == [f"{site.name}-cpu-001", f"{site.name}-cpu-002"]
    assert site.node_states() == dict.fromkeys(stages["health"]["outputs"]["resumed"], ("idle", "none"))
    serve = stages.get("serve", {}).get("outputs")
    if serve is not None:
        assert serve["allowed"]["status"] == 200 and serve["allowed"]["outputs"], serve
        assert serve["denied"]["status"] == 403 and serve["denied"]["reason"], serve
        assert serve["denied"]["decision_id"]
    report = stages["audit"]["outputs"]["report"]
    trust = stages["audit"]["outputs"]["trust"]
    assert trust == str(Path(site.env["AIFACTORY_STATE_HOME"]) / site.name / "audit" / "allowed_signers")
    verify = site.run("audit", "verify", report, "--trust", trust)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert site.namespaces(), "the lab should be up"


def test_after_up_every_decision_names_the_signed_promoted_champion(site: UpSite, tmp_path: Path) -> None:
    """Issue 28 after `aifactory up`: `aifactory models` lists the version the train stage signed, its
    OpenSSF signature verified, with its promotion to champion (the registry's line, signed by the
    site's key: OpenSSL checks it), and the champion after the loop stage's turn (that version, or the
    challenger the turn promoted); upstream's `model_signing` command on a lab host (no route out)
    accepts the champion with the public key deploy put there; requests sent now to every serving host
    are answered by it; every inference decision in every host's log names the version that answered
    (the train stage's before the turn, the champion after it); the bundle's SBOM lists the package;
    the audit report lists the champion."""
    from aifactory.pipeline.stages import NODE_RUNTIME

    assert site.first_seconds, "needs the first run"
    stages = site.stages()
    trained = stages["train"]["outputs"]
    signed = trained["digest"]  # the version the train stage signed and promoted
    champion = stages["loop"]["outputs"]["turns"][trained["model"]]["champion"]  # after the loop's turn
    plan = json.loads(site.run("plan", str(site.spec), "--format", "json", timeout=300).stdout)
    (planned,) = [m for m in plan["models"] if m["name"] == trained["model"]]
    listed = site.run("models", str(site.spec), planned["name"], "--format", "json", timeout=300)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (model,) = json.loads(listed.stdout)["models"]
    promotion = model["aliases"]["champion"]
    assert promotion["digest"] == champion, model
    (first,) = [v for v in model["versions"] if v["digest"] == signed]
    assert first["signature"] == "verified", first
    assert first["job"]["slurm_job_id"] == trained["slurm_job_id"]
    first_promotion = model["history"][0]  # the registry's first line: the train stage's promotion
    assert first_promotion["digest"] == signed and first_promotion["alias"] == "champion"
    assert first_promotion in first["promotions"]
    assert first_promotion["reason"] == f"trained by aifactory up (Slurm job {trained['slurm_job_id']})"
    public_key = Path(site.env["AIFACTORY_STATE_HOME"]) / site.name / "runtime/model-key/model-signing.pub"
    _check_promotion_signature(first_promotion, public_key, tmp_path)
    (current,) = [v for v in model["versions"] if v["digest"] == champion]
    assert current["signature"] == "verified" and promotion in current["promotions"], current

    serving = [h for h in plan["hosts"] if h["pool"] in planned["serve_on"]]
    files = f"{planned['host_path']}/registry/versions/{champion.removeprefix('sha256:')}"
    node_key = "/var/lib/aifactory/runtime/model-key/model-signing.pub"  # where deploy copies it
    host = serving[0]["name"]
    assert "default" not in site.on_host(host, "ip", "route").stdout  # no route out of the lab host
    assert site.on_host(host, "cat", node_key).stdout == public_key.read_text()
    lines = site.on_host(host, "cat", f"{planned['host_path']}/registry/promotions.jsonl").stdout.splitlines()
    assert [json.loads(line) for line in lines] == model["history"]  # the node reads the same records
    upstream = str(NODE_RUNTIME / "model_signing")  # upstream's command, installed from the bundle
    verify = site.on_host(
        host,
        upstream,
        "verify",
        "key",
        f"{files}/model",
        "--signature",
        f"{files}/model.sig",
        "--public_key",
        node_key,
    )
    assert verify.returncode == 0 and "Verification succeeded" in verify.stdout, verify.stdout + verify.stderr

    answered = [_ask(site, h, planned, champion, plan, tmp_path) for h in serving]
    for answers in answered:
        assert answers["allowed"]["status"] == 200 and answers["allowed"]["digest"] == champion, answers
        assert answers["denied"]["status"] == 403, answers
    asked = {a["allowed"]["decision_id"] for a in answered}
    decisions = [d for h in plan["hosts"] for d in _decisions(site, h["name"])]
    inferences = [d for d in decisions if d.get("component") == "serve" and d.get("action") == "infer"]
    by_id = {d["decision_id"]: d for d in inferences}
    assert asked | {a["denied"]["decision_id"] for a in answered} <= by_id.keys(), inferences
    assert {by_id[i]["request"]["model_digest"] for i in asked} == {champion}
    assert {d["request"]["model_digest"] for d in inferences} <= {signed, champion}, inferences

    bundles = Path(site.env["AIFACTORY_BUNDLES_HOME"]) / site.name  # where the import stage put it
    sbom = json.loads((bundles / stages["bundle"]["outputs"]["version"] / "sbom.cdx.json").read_text())
    names = {re.sub(r"[-_.]+", "-", str(c.get("name")).lower()) for c in sbom["components"]}
    assert {"model-signing", "sigstore", "pyopenssl"} <= names
    report = json.loads((Path(stages["audit"]["outputs"]["report"]) / "report.json").read_text())
    (section,) = [e for e in report["evidence"] if e["name"] == "models"]
    assert section["status"] == "pass", section
    (listed_model,) = section["detail"]["models"]
    assert listed_model["champion"] == champion
    assert listed_model["aliases"]["champion"]["signature"] == "verified"


def test_up_runs_one_loop_turn_and_the_server_answers_with_the_champion_after_it(
    site: UpSite, tmp_path: Path
) -> None:
    """Issue 30's loop stage: the lab spec's loop entry gets one turn from the champion the train stage
    promoted, on a larger draw of the training data, measured on the held-out set `up` made once
    (version 1, never trained on); the turn ends promoted (the challenger is the champion) or refused
    with its reason codes (the train stage's champion keeps serving), the stage's line says which, and
    the serving node answered with the champion after it. `aifactory loop turns`, `aifactory models`
    and `aifactory data versions` say the same."""
    assert site.first_seconds, "needs the first run"
    stages = site.stages()
    loop = stages["loop"]
    assert loop["status"] == "ok", loop
    trained = stages["train"]["outputs"]
    name = trained["model"]
    turn = loop["outputs"]["turns"][name]
    assert turn["status"] in ("promoted", "refused"), turn
    if turn["status"] == "promoted":
        assert turn["champion"] == turn["challenger"] != trained["digest"] and turn["reasons"] == []
        assert f"{name} turn {turn['turn']}: promoted {turn['champion'][:19]}..." in loop["summary"]
    else:
        assert turn["reasons"] and turn["champion"] == trained["digest"], turn
        assert f"{name} turn {turn['turn']}: refused ({', '.join(turn['reasons'])})" in loop["summary"]
    served_on = loop["outputs"]["served"][name]
    assert f"answering on {served_on}" in loop["summary"]

    listed = site.run("loop", "turns", str(site.spec), name, "--format", "json", timeout=300)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    (recorded,) = [t for t in json.loads(listed.stdout)["turns"] if t["turn"] == turn["turn"]]
    steps = recorded["steps"]
    assert recorded["status"] == turn["status"] and steps["train"]["from_champion"] == trained["digest"]
    assert steps["train"]["slurm_job_id"] != steps["evaluate"]["slurm_job_id"]
    report = steps["evaluate"]["report"]
    assert (report["evaluation_set"]["dataset"], report["evaluation_set"]["version"]) == ("vitals-holdout", 1)
    assert report["champion"]["digest"] == trained["digest"]
    assert report["challenger"]["digest"] == steps["register"]["challenger"] == turn["challenger"]
    assert steps["decide"]["reasons"] == turn["reasons"]

    models = json.loads(site.run("models", str(site.spec), name, "--format", "json", timeout=300).stdout)
    assert models["models"][0]["aliases"]["champion"]["digest"] == turn["champion"]
    holdout = site.run("data", "versions", str(site.spec), "vitals-holdout", "--format", "json", timeout=300)
    assert holdout.returncode == 0, holdout.stdout + holdout.stderr
    assert [v["version"] for v in json.loads(holdout.stdout)["versions"]] == [1]  # made once
    data = site.run("data", "versions", str(site.spec), "vitals", "--format", "json", timeout=300)
    (version,) = [v for v in json.loads(data.stdout)["versions"] if v["digest"] == steps["version"]["digest"]]
    assert version["reason"] == f"loop turn {turn['turn']} of model {name}"

    plan = json.loads(site.run("plan", str(site.spec), "--format", "json", timeout=300).stdout)
    (planned,) = [m for m in plan["models"] if m["name"] == name]
    (host,) = [h for h in plan["hosts"] if h["name"] == served_on]
    answers = _ask(site, host, planned, turn["champion"], plan, tmp_path)
    assert answers["allowed"]["status"] == 200 and answers["allowed"]["digest"] == turn["champion"], answers


def _check_promotion_signature(record: dict, public_key: Path, folder: Path) -> None:
    """OpenSSL alone verifies the record's ECDSA signature over its RFC 8785 form without `signature`."""
    body, signature = folder / "promotion.json", folder / "promotion.sig"
    body.write_bytes(rfc8785.dumps({k: v for k, v in record.items() if k != "signature"}))
    signature.write_bytes(base64.b64decode(record["signature"]))
    checked = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(public_key), "-signature", str(signature), str(body)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked.stdout + checked.stderr


def _ask(site: UpSite, host: dict, model: dict, champion: str, plan: dict, folder: Path) -> dict:
    """One request from the model's owner and one from a tenant without access, sent from the control
    host to the host's server (once it serves `champion`); the answers."""
    from aifactory.pipeline.stages import SERVE_PORT

    granted = {
        g["tenant"]
        for g in plan["access"]
        if g["resource"] == f"model/{model['name']}" and "infer" in g["actions"]
    }
    stranger = next(t["name"] for t in plan["tenants"] if t["name"] not in granted | {model["owner"]})
    tokens = []
    for tenant in (model["owner"], stranger):
        issued = site.run(
            "token", "issue", str(site.spec), "--tenant", tenant, "--expires", "1h", "--format", "json"
        )
        assert issued.returncode == 0, issued.stderr
        path = folder / f"{host['name']}-{tenant}.token"
        path.touch(mode=0o600)
        path.write_text(json.loads(issued.stdout)["token"])
        tokens.append(str(path))
    base = f"http://{host['management_address']}:{SERVE_PORT}"
    argv = [sys.executable, "-m", "aifactory.pipeline.serve_probe", base, model["name"], *tokens, "120"]
    probe = site.run("lab", "exec", str(site.spec), "--", *argv, "--digest", champion, timeout=300)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    return json.loads(probe.stdout)


def _decisions(site: UpSite, host: str) -> list[dict]:
    """Every record of the host's decision log, rotated segments (decisions.jsonl.<seq>) included."""
    listed = site.on_host(
        host, "find", "/var/lib/aifactory/runtime", "-maxdepth", "1", "-name", "decisions.*"
    )
    segments = [p for p in listed.stdout.split() if re.fullmatch(r".*/decisions\.jsonl(\.[0-9]+)?", p)]
    records = []
    for path in sorted(segments):
        text = site.on_host(host, "cat", path).stdout
        records += [json.loads(line) for line in text.splitlines()]
    return records


def test_after_up_prometheus_scrapes_every_host_with_tls(site: UpSite) -> None:
    """The monitoring stage: node exporter on every host scraped over its lab address with TLS, up == 1
    in Prometheus' HTTP API as `aifactory status --format json` on the control host lists it."""
    assert site.first_seconds, "needs the first run"
    assert site.stages()["monitoring"]["status"] == "ok", site.stages()["monitoring"]
    spec = str(site.spec)
    done = site.run("lab", "exec", spec, "--", *AIFACTORY, "status", spec, "--format", "json", timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = json.loads(done.stdout)
    planned = json.loads(site.run("plan", spec, "--format", "json").stdout)
    hosts = {h["name"]: h["management_address"] for h in planned["hosts"]}
    assert {h["name"]: h["up"] for h in status["hosts"]} == dict.fromkeys(hosts, True), status["hosts"]
    nodes = {t["host"]: t for t in status["targets"] if t["job"] == "node"}
    assert sorted(nodes) == sorted(hosts), status["targets"]
    for host, target in nodes.items():
        assert target["health"] == "up" and target["url"].startswith(f"https://{hosts[host]}:9100/"), target


def test_second_up_changes_nothing_and_is_fast(site: UpSite) -> None:
    assert site.first_seconds, "needs the first run"
    before = site.stages()
    began = time.monotonic()
    result = site.run("up", str(site.spec), "--lab")
    seconds = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    after = site.stages()
    for stage in ("bundle", "import", "deploy", "train", "loop"):
        if stage in before:
            assert after[stage] == before[stage], f"{stage} ran again"
    assert "unchanged" in result.stdout
    assert any("loop" in line and "unchanged" in line for line in result.stderr.splitlines())
    assert "changed=0" in result.stderr  # deploy re-probed in check mode and found nothing to change
    assert seconds < 0.25 * site.first_seconds, (seconds, site.first_seconds)


def _what_is_in(folder: Path) -> str:
    """The files under `folder` with their times of change, for a failure's message."""
    if not folder.exists():
        return f"\n{folder} does not exist"
    found = sorted(folder.rglob("*"))[:40]
    lines = [
        f"{time.strftime('%H:%M:%S', time.localtime(p.lstat().st_mtime))} {p.relative_to(folder)}"
        for p in found
    ]
    return f"\nin {folder} (now {time.strftime('%H:%M:%S')}):\n" + "\n".join(lines)


def test_a_restored_control_host_state_leaves_up_nothing_to_do(site: UpSite, tmp_path: Path) -> None:
    """Issue 27 on the lab: `aifactory backup`, the state folder lost, `aifactory restore`: the next
    `up` re-verifies every stage and changes nothing (no stage record changes; deploy re-probes with
    changed=0), and `audit verify` (every log the report cites required) and `verify-log` pass on the
    restored evidence. The lab's own folder (the lab hosts' disks, BMCs and processes, which a backup
    leaves out: not the control host's state) is moved back beside the restored state while its hosts
    keep running. The original state goes back in `finally`, whatever happened.

    Uses this module's site rather than the session's deployed lab: only a state `up` has run on has
    stage records to find unchanged, and an `up` on the session lab would build, import and deploy a
    bundle of its own under the tests that share it."""
    assert site.first_seconds, "needs the first run"
    state = Path(site.env["AIFACTORY_STATE_HOME"]) / site.name
    kept = tmp_path / "kept"  # what an admin keeps off the control host
    kept.mkdir()
    passphrase = kept / "passphrase"
    passphrase.write_text("lab backup passphrase\n")
    backup = kept / f"{site.name}.aifbackup"
    made = site.run("backup", str(site.spec), "-o", str(backup), "--passphrase-file", str(passphrase))
    assert made.returncode == 0, made.stdout + made.stderr
    shutil.copy(state / "backup" / "allowed_signers", kept / "backup_signers")
    shutil.copy(state / "audit" / "allowed_signers", kept / "audit_signers")
    before = site.stages()
    lost = state.with_name(f"{site.name}.lost")
    state.rename(lost)
    try:
        restored = site.run(
            "restore",
            str(backup),
            "--trust",
            str(kept / "backup_signers"),
            "--passphrase-file",
            str(passphrase),
        )
        # A refusal names what stood in the emptied folder (CI once met a state there: written by what?).
        assert restored.returncode == 0, restored.stdout + restored.stderr + _what_is_in(state)
        assert not (state / "lab").exists(), "a backup leaves the lab out"
        (lost / "lab").rename(state / "lab")
        report = state / "up" / "report"
        cited = [log["path"] for log in json.loads((report / "report.json").read_text())["logs"]]
        checked = site.run(
            "audit", "verify", str(report), "--trust", str(kept / "audit_signers"), "--require-logs"
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for log in {str(state / "operator.log.jsonl"), *cited}:
            verified = site.run("audit", "verify-log", log)
            assert verified.returncode == 0, verified.stdout + verified.stderr

        result = site.run("up", str(site.spec), "--lab")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        after = site.stages()
        for stage, record in before.items():
            if stage not in ("serve", "audit"):  # these two run every time
                assert after[stage] == record, f"{stage} ran again after the restore"
        assert "changed=0" in result.stderr  # deploy re-probed in check mode and found nothing to change
        again = site.run(
            "audit", "verify", str(report), "--trust", str(kept / "audit_signers"), "--require-logs"
        )
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        if (state / "lab").is_dir() and not (lost / "lab").exists():
            (state / "lab").rename(lost / "lab")
        if state.exists():
            shutil.rmtree(state)  # the restored copy; the original is `lost`
        lost.rename(state)


def test_an_up_plans_the_site_once(site: UpSite, tmp_path: Path) -> None:
    """One `aifactory up` (every stage re-verified: deploy re-reads the hosts, serve and audit run)
    calls the plan builder exactly once: the CLI plans, the stages take that plan, and deploy
    compares it with the bundle's signed plan by digest instead of planning again."""
    assert site.first_seconds, "needs the first run"
    count = tmp_path / "plans"
    counter = Path(__file__).with_name("count_plans.py")
    result = subprocess.run(
        [sys.executable, str(counter), str(count), "up", str(site.spec), "--lab"],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "deploy" in result.stderr and "changed=0" in result.stderr
    assert count.read_text().strip() == "1"


def test_a_host_failing_its_health_run_stops_up_with_exit_4_and_the_next_run_admits_it(site: UpSite) -> None:
    """The health stage (the standard level): with one compute host's link rate-limited (tc tbf; the
    lab's kernel has no netem) that host alone is drained in Slurm with the bandwidth reason and `up`
    stops with exit 4 naming it and the check; once the limit is gone the next `up` resumes the host
    and goes on without training again."""
    from aifactory.plan import plan_site

    assert site.first_seconds, "needs the first run"
    slow = f"{site.name}-cpu-002"
    plan = plan_site(site.spec, write_lock=False).plan
    interface = next(i.name for i in plan.host(slow).interfaces if i.fabric == "compute")
    limited = site.on_host(slow, "tc", "qdisc", "add", "dev", interface, "root", *TBF)
    assert limited.returncode == 0, limited.stderr
    try:
        before = site.stages()
        failed = site.run("up", str(site.spec), "--lab", "--from", "health")
        assert failed.returncode == 4, failed.stdout[-2000:] + failed.stderr[-4000:]
        gate = re.search(
            rf"1 host\(s\) failed the health gate: {slow}: drain for ([a-z-]+(, [a-z-]+)*)", failed.stderr
        )
        assert gate and "tcp-bandwidth" in gate.group(1).split(", "), failed.stderr[-4000:]
        assert "resumes at health" in failed.stderr
        assert site.stages()["health"]["status"] == "failed"
        state, reason = site.node_states()[slow]
        assert (
            state.startswith("drained")
            and reason.startswith("aifactory-health: ")
            and "tcp-bandwidth" in reason
        )
        assert site.node_states()[f"{site.name}-cpu-001"][0] == "idle"
    finally:
        site.on_host(slow, "tc", "qdisc", "del", "dev", interface, "root")
    resumed = site.run("up", str(site.spec), "--lab")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    after = site.stages()
    assert after["health"]["status"] == "ok" and after["health"]["outputs"]["resumed"] == [slow]
    assert after["train"] == before["train"], "the checkpoint was there: no retraining"
    assert site.node_states()[slow] == ("idle", "none")


def _cut_off(site: UpSite, host: str) -> None:
    """Kill the host's sshd, then the control host's SSH control masters to it."""
    status = json.loads(site.run("lab", "status", str(site.spec), "--format", "json").stdout)
    entry = next(h for h in status["hosts"] if h["name"] == host)
    os.kill(entry["sshd"]["pid"], signal.SIGTERM)
    for target in (entry["management_address"], host):
        site.run("lab", "exec", str(site.spec), "--", "ssh", "-F", status["ssh_config"], "-O", "exit", target)


def test_a_failed_deploy_names_the_host_and_the_next_run_resumes_there(site: UpSite) -> None:
    host = f"{site.name}-cpu-002"
    _cut_off(site, host)
    failed = site.run("up", str(site.spec), "--lab", "--from", "deploy")
    assert failed.returncode == 4, failed.stdout[-2000:] + failed.stderr[-4000:]
    assert host in failed.stderr and "resumes at deploy" in failed.stderr
    assert site.stages()["deploy"]["status"] == "failed"
    restored = site.run("lab", "up", str(site.spec))  # heals the lab: restarts the dead sshd
    assert restored.returncode == 0, restored.stderr
    resumed = site.run("up", str(site.spec), "--lab")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    lines = resumed.stderr.splitlines()
    assert any("bundle" in line and "unchanged" in line for line in lines)
    assert any("deploy" in line and " ok " in line for line in lines)
    assert site.stages()["deploy"]["status"] == "ok"


def test_down_removes_the_lab(site: UpSite) -> None:
    result = site.run("down", str(site.spec), timeout=300)
    assert result.returncode == 0, result.stderr
    assert site.namespaces() == []
