"""`aifactory data versions|show|version|erase` over a site spec and a storage root: the CLI is thin
over aifactory.data.versions, so these check what it shows, its exit codes, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aifactory.cli.main import main
from aifactory.data.feedback import FeedbackRequest, Receipt, store_feedback
from aifactory.data.versions import DatasetStore
from aifactory.errors import ExitCode

from .conftest import DATASET_PATH, FIXTURES, RuntimeSite

SPEC = str(FIXTURES / "site.yaml")


@pytest.fixture
def storage(site: RuntimeSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIFACTORY_STATE_HOME", str(tmp_path / "state"))
    root = tmp_path / "storage"
    shutil.copytree(site.dataset_dir, root / DATASET_PATH)
    return root


def give(storage: Path, decision: str, subject: str) -> None:
    store_feedback(
        storage / DATASET_PATH,
        receipt=Receipt(decision, "health", "vitals-mlp", None, "rtlab-cpu-001", "2026-12-01T00:00:00Z"),
        dataset="vitals",
        request=FeedbackRequest("vitals", subject, {"label": 1}),
        feedback_decision="f" * 32,
        host="rtlab-cpu-001",
        country="NG",
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert err == "", err
    return code, out


def test_version_versions_show_and_erase(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--storage-root", str(storage)]
    give(storage, "1" * 32, "patient-a")
    give(storage, "2" * 32, "patient-b")
    code, out = run(
        capsys, "data", "version", SPEC, "vitals", *root, "--reason", "weekly", "--format", "json"
    )
    assert code == 0
    made = json.loads(out)
    assert (made["added"], made["version"]["version"], made["version"]["reason"]) == (2, 1, "weekly")
    code, out = run(
        capsys,
        "data",
        "erase",
        SPEC,
        "vitals",
        *root,
        "--subject",
        "patient-a",
        "--authority",
        "court order 7",
    )
    assert code == 0 and "authority: court order 7" in out and "new version: v2" in out
    code, out = run(capsys, "data", "versions", SPEC, "vitals", *root)
    assert code == 0, out
    assert "v1" in out and "v2" in out and "(1 destroyed)" in out
    assert "erasure 3" in out and "history verified" in out
    code, out = run(capsys, "data", "versions", SPEC, "vitals", *root, "--format", "json")
    listed = json.loads(out)
    assert listed["ok"] is True and [v["version"] for v in listed["versions"]] == [1, 2]
    assert listed["erasures"][0]["authority"] == "court order 7" and "patient-a" not in out
    code, out = run(capsys, "data", "show", SPEC, "vitals@1", *root, "--format", "json")
    shown = json.loads(out)
    assert code == 0 and shown["version"]["classification"] == "confidential"
    assert {f["path"]: f["state"] for f in shown["version"]["files"]}["feedback/records.jsonl"] == "destroyed"
    assert shown["erasure_marks"][0]["erasure"] == 3
    code, out = run(capsys, "data", "show", SPEC, f"vitals@{listed['versions'][1]['digest']}", *root)
    assert code == 0 and "vitals@v2" in out


def test_a_history_that_does_not_verify_exits_1(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--storage-root", str(storage)]
    assert run(capsys, "data", "version", SPEC, "vitals", *root)[0] == 0
    lineage = DatasetStore(storage / DATASET_PATH).lineage
    lineage.write_bytes(lineage.read_bytes().replace(b'"version":1', b'"version":2'))
    code, out = run(capsys, "data", "versions", SPEC, "vitals", *root)
    assert code == ExitCode.INVALID and "does not verify" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["data", "show", SPEC, "../../etc@1"], "usage"),
        (["data", "show", SPEC, "vitals"], "usage"),
        (["data", "show", SPEC, "vitals@../../1"], "dataset-version-not-found"),
        (["data", "versions", SPEC, "weather"], "usage"),
        (["data", "erase", SPEC, "vitals", "--subject", "../x", "--authority", "a"], "usage"),
        (["data", "erase", SPEC, "vitals", "--subject", "p-1", "--authority", " "], "usage"),
    ],
)
def test_refusals_are_one_json_error(
    storage: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out = run(capsys, *argv, "--storage-root", str(storage), "--format", "json")
    error = json.loads(out)["error"]
    assert (error["code"], error["exit_code"]) == (expected, code)
    assert not (storage / DATASET_PATH / "versions" / "lineage.jsonl").exists()
