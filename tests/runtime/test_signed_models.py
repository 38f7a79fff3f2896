"""Signed models: the server loads only the registry's champion (signed by the site, promoted); anything
else put in the model's folder is refused, logged, counted and listed, and the champion keeps serving.
Signatures are OpenSSF model signatures that upstream's own `model_signing` command verifies offline."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for

from aifactory.trust.issuing.models import ensure_model_key, promote, register
from aifactory.trust.models import Inspector, ModelTrust, Registry, read_promotions

from .conftest import RuntimeSite
from .serving import BODY, MODEL_PATH, PATH, records, save_checkpoint, start_server, write_checkpoint

pytest.importorskip("torch")


def test_the_model_key_is_an_ecdsa_pair_made_here_with_tight_modes(tmp_path: Path) -> None:
    key = ensure_model_key(tmp_path / "runtime")
    assert stat.S_IMODE(key.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600
    text = subprocess.run(
        ["openssl", "pkey", "-in", str(key.private_key), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "NIST CURVE: P-256" in text
    before = key.private_key.read_bytes()
    assert ensure_model_key(tmp_path / "runtime").private_key.read_bytes() == before  # made once


def test_upstreams_verify_command_accepts_an_aifactory_signed_model_with_no_network(
    site: RuntimeSite, tmp_path: Path
) -> None:
    """`model_signing verify key` (the package's own command) in a network namespace of its own: no
    interface is up, so any network call would fail; key mode needs none."""
    version = write_checkpoint(site, tmp_path / "storage", promote=None)
    public = site.runtime_dir / "model-key" / "model-signing.pub"
    upstream = str(Path(sys.executable).with_name("model_signing"))  # the package's console script
    command = [upstream, "verify", "key", str(version / "model"), "--signature"]
    verify = [*command, str(version / "model.sig"), "--public_key", str(public)]
    done = subprocess.run(["unshare", "--net", *verify], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stdout + done.stderr
    (version / "model" / "checkpoint.json").write_text("{}\n")  # one byte changed: upstream says no
    tampered = subprocess.run(["unshare", "--net", *verify], capture_output=True, text=True, timeout=120)
    assert tampered.returncode != 0


def test_a_tampered_promotion_record_is_refused_and_the_alias_keeps_its_last_valid_version(
    site: RuntimeSite, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    first = write_checkpoint(site, storage, step=10)
    second = write_checkpoint(site, storage, step=20, hidden=8)
    registry = Registry(storage / MODEL_PATH)
    trust = ModelTrust.in_runtime_dir(site.runtime_dir)
    lines = registry.promotions.read_bytes().splitlines()
    assert [json.loads(line)["digest"].removeprefix("sha256:") for line in lines] == [first.name, second.name]
    record = json.loads(lines[1])
    record["reason"] = "edited after signing"
    registry.promotions.write_bytes(lines[0] + b"\n" + json.dumps(record).encode() + b"\n")
    log = read_promotions(registry, trust)
    assert [p.digest for p in log.records] == [f"sha256:{first.name}"]
    assert [(r.reason, r.path) for r in log.refused] == [("bad-promotion", "registry/promotions.jsonl:2")]
    inspection = Inspector(storage / MODEL_PATH, trust).inspect()
    assert inspection.champion is not None and inspection.champion.digest == f"sha256:{first.name}"


def test_unsigned_badly_signed_and_unpromoted_models_are_refused_while_the_champion_serves(
    site: RuntimeSite, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    model_dir = storage / MODEL_PATH
    champion = write_checkpoint(site, storage, step=10)
    digest = f"sha256:{champion.name}"
    server = start_server(site, storage, tmp_path / "node-runtime")
    try:

        def health() -> dict:
            return server.call("GET", "/healthz", token=site.tokens["health"])[1]

        wait_for(lambda: health()["models"]["vitals-mlp"], what="the champion to load", timeout=30)
        assert health()["models"]["vitals-mlp"]["digest"] == digest
        # Put five things in the model's folder, each of which the former server would have served.
        unpromoted = write_checkpoint(site, storage, step=60, hidden=8, promote=None)
        foreign = ensure_model_key(tmp_path / "another-site")
        stranger = register(
            model_dir=model_dir,
            checkpoint=save_checkpoint(storage, step=70, seed=11),
            key=foreign,
            job={"name": "elsewhere"},
            dataset={"name": "vitals"},
        )
        tampered = write_checkpoint(site, storage, step=80, hidden=12, promote=None)
        with (tampered / "model" / "model.safetensors").open("r+b") as weights:
            weights.seek(-4, 2)
            weights.write(b"\x00\x01\x02\x03")
        unsigned_version = model_dir / "registry" / "versions" / ("0" * 64) / "model"
        shutil.copytree(unpromoted / "model", unsigned_version)  # a version folder with no signature
        save_checkpoint(storage, step=90, seed=9)  # training output, `latest` now names it: unsigned
        expected = {
            "checkpoints/step-00000090": "unsigned",
            f"registry/versions/{unpromoted.name}": "not-promoted",
            f"registry/versions/{stranger.digest.removeprefix('sha256:')}": "bad-signature",
            f"registry/versions/{tampered.name}": "bad-signature",
            f"registry/versions/{'0' * 64}": "unsigned",
        }

        def refused() -> dict[str, str] | None:
            found = {r["path"]: r["reason"] for r in health()["refused"]["vitals-mlp"]}
            return found if expected.items() <= found.items() else None

        found = wait_for(refused, what="every refusal in /healthz", timeout=60, detail=lambda: str(health()))
        assert found == {**expected, **{p: "unsigned" for p in found if p.startswith("checkpoints/")}}
        # The server logs each refusal before /healthz shows it; its output may still be on the way.
        lines = [f"refused to load vitals-mlp/{path}: {reason}" for path, reason in expected.items()]
        server.wait_logged(lines, what="a log line for every refusal", timeout=30)
        metrics = server.call("GET", "/metrics")[1]["text"]
        assert 'aifactory_serve_models_refused{model="vitals-mlp",reason="bad-signature"} 2.0' in metrics
        assert 'aifactory_serve_models_refused{model="vitals-mlp",reason="not-promoted"} 1.0' in metrics
        assert f'aifactory_serve_model_info{{alias="champion",digest="{digest}",model="vitals-mlp"}} 1.0' in (
            metrics
        )
        # The champion keeps serving, and every decision names the version that answered.
        status, answer = server.call("POST", PATH, BODY, token=site.tokens["health"])
        assert (status, answer["digest"], answer["step"]) == (200, digest, 10)
        denied = server.call("POST", PATH, BODY, token=site.tokens["research"])[1]
        for decision_id in (answer["decision_id"], denied["decision_id"]):
            assert records(server)[decision_id]["request"]["model_digest"] == digest
        # Promoting the signed version makes it the champion: it is served, and named in decisions.
        promote(
            model_dir=model_dir,
            digest=f"sha256:{unpromoted.name}",
            alias="champion",
            key=ensure_model_key(site.runtime_dir),
            reason="better",
        )
        wait_for(
            lambda: health()["models"]["vitals-mlp"]["digest"] == f"sha256:{unpromoted.name}",
            what="the new champion to load",
            timeout=30,
        )
        answer = server.call("POST", PATH, BODY, token=site.tokens["health"])[1]
        assert (
            records(server)[answer["decision_id"]]["request"]["model_digest"] == f"sha256:{unpromoted.name}"
        )
    finally:
        assert server.stop() == 0


def test_the_listing_shows_versions_signatures_provenance_aliases_and_history(
    site: RuntimeSite, tmp_path: Path
) -> None:
    """What `aifactory models` prints as JSON for one model's folder (the lab resolves the folder)."""
    from aifactory.pipeline.models import describe_model

    storage = tmp_path / "storage"
    first = write_checkpoint(site, storage, step=10)
    second = write_checkpoint(site, storage, step=20, hidden=8, promote="challenger")
    unsigned = model_dir_of(storage) / "registry" / "versions" / ("1" * 64) / "model"
    shutil.copytree(first / "model", unsigned)
    listed = describe_model(
        model_dir_of(storage), ModelTrust.in_runtime_dir(site.runtime_dir), name="vitals-mlp"
    )
    assert listed["aliases"]["champion"]["digest"] == f"sha256:{first.name}"
    assert listed["aliases"]["challenger"]["digest"] == f"sha256:{second.name}"
    by_digest = {v["digest"]: v for v in listed["versions"]}
    assert by_digest[f"sha256:{first.name}"] | {"promotions": []} == {
        "digest": f"sha256:{first.name}",
        "signature": "verified",
        "signature_file": str(first / "model.sig"),
        "step": 10,
        "job": {"name": "test"},
        "dataset": {"name": "vitals"},
        "key": ModelTrust.in_runtime_dir(site.runtime_dir).key_id(),
        "alias": "champion",
        "promotions": [],
    }
    assert [p["alias"] for p in by_digest[f"sha256:{second.name}"]["promotions"]] == ["challenger"]
    assert by_digest[f"sha256:{'1' * 64}"]["reason"] == "unsigned"
    assert [(h["seq"], h["alias"]) for h in listed["history"]] == [(1, "champion"), (2, "challenger")]


def model_dir_of(storage: Path) -> Path:
    return storage / MODEL_PATH
