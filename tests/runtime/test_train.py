"""Training: 2-process torchrun (Gloo, CPU) with falling loss; kill -9 mid-run and mid-checkpoint;
resumed weights equal an uninterrupted run's; a tenant without a grant is refused before any data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import scaled, wait_for

from .conftest import DATASET_PATH, RuntimeSite, write_job

torch = pytest.importorskip("torch")

from aifactory.runtime import checkpoint  # noqa: E402
from aifactory.runtime.metrics import read_jsonl  # noqa: E402

MODEL_PATH = "srv/share/models/vitals-mlp"
STEPS, EVERY = 60, 20
pytestmark = pytest.mark.slow


def _job(site: RuntimeSite, folder: Path, tenant: str = "health") -> Path:
    train = {
        "steps": STEPS,
        "global_batch": 64,
        "learning_rate": 0.01,
        "seed": 1234,
        "checkpoint_every": EVERY,
    }
    return write_job(site, folder, tenant=tenant, train=train)


def _train(job: Path, **fault: str) -> subprocess.Popen[str]:
    env = {**os.environ, **fault}
    env.pop("AIFACTORY_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "aifactory.runtime.train_cli", str(job), "--host", "rtlab-cpu-001"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    STARTED.append(process)
    return process


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test() -> Iterator[None]:
    """A failed test must not leave a (stalled) job behind: its workers die with the launcher's group."""
    before = len(STARTED)
    yield
    for process in STARTED[before:]:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=scaled(240))
    assert process.returncode == 0, output
    return output


def _checkpoints(job: Path) -> Path:
    return job.parent / "storage" / MODEL_PATH / "checkpoints"


def _kill_job(process: subprocess.Popen[str], job: Path) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    def no_workers_left() -> bool:  # workers die with torchrun (PR_SET_PDEATHSIG)
        for entry in Path("/proc").iterdir():
            try:
                if str(job).encode() in (entry / "cmdline").read_bytes():
                    return False
            except OSError:
                continue
        return True

    wait_for(no_workers_left, what="the workers to die with their launcher", timeout=20)


def _metrics(job: Path) -> list[dict[str, object]]:
    path = job.parent / "storage" / MODEL_PATH / "runs" / "vitals-train" / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def _final_weights(job: Path) -> dict[str, object]:
    found = checkpoint.latest_complete(_checkpoints(job))
    assert found is not None and found.step == STEPS
    return found.model_state


@pytest.fixture(scope="module")
def uninterrupted(site: RuntimeSite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    job = _job(site, tmp_path_factory.mktemp("uninterrupted"))
    _finish(_train(job))
    return job


def test_two_processes_train_and_the_loss_falls(uninterrupted: Path) -> None:
    metrics = _metrics(uninterrupted)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert {m["world_size"] for m in metrics} == {2}
    first, last = metrics[0]["loss"], metrics[-1]["loss"]
    assert last < 0.5 * first, (first, last)  # type: ignore[operator]
    prometheus = (
        uninterrupted.parent / "storage" / MODEL_PATH / "runs" / "vitals-train" / "metrics.prom"
    ).read_text()
    assert f'aifactory_train_step{{job="vitals-train"}} {STEPS}' in prometheus
    assert sorted(p.name for p in _checkpoints(uninterrupted).iterdir()) == [
        "latest",
        "step-00000020",
        "step-00000040",
        "step-00000060",
    ]


def _assert_same_weights(resumed: Path, uninterrupted: Path) -> None:
    mine, reference = _final_weights(resumed), _final_weights(uninterrupted)
    assert mine.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(mine[name], reference[name], rtol=1e-5, atol=1e-6), name


def test_kill_mid_run_resumes_from_the_last_checkpoint(
    site: RuntimeSite, tmp_path: Path, uninterrupted: Path
) -> None:
    job = _job(site, tmp_path)
    process = _train(job, AIFACTORY_FAULT_STALL_AT_STEP="30")  # rank 0 hangs after step 30
    wait_for(lambda: any(m["step"] == 30 for m in _metrics(job)), what="step 30", timeout=120)
    _kill_job(process, job)
    assert (_checkpoints(job) / "latest").read_text().strip() == "step-00000020"
    output = _finish(_train(job))
    assert "resumed from step 20" in output
    assert [m["resumed_from"] for m in _metrics(job)][-1] == 20
    _assert_same_weights(job, uninterrupted)


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(
    site: RuntimeSite, tmp_path: Path, uninterrupted: Path
) -> None:
    job = _job(site, tmp_path)
    process = _train(job, AIFACTORY_FAULT_STALL_IN_CHECKPOINT="40")  # stalls after writing the weights
    wait_for(
        lambda: any((s / "model.safetensors").exists() for s in _checkpoints(job).glob(".step-00000040.*")),
        what="the step-40 checkpoint to be half written",
        timeout=120,
    )
    _kill_job(process, job)
    assert (_checkpoints(job) / "latest").read_text().strip() == "step-00000020"
    assert not (_checkpoints(job) / "step-00000040").exists()
    output = _finish(_train(job))
    assert "resumed from step 20" in output
    assert not list(_checkpoints(job).glob(".step-*"))  # the half-written one was cleaned up
    _assert_same_weights(job, uninterrupted)


def test_a_tenant_without_a_grant_is_refused_before_any_data_is_read(
    site: RuntimeSite, tmp_path: Path
) -> None:
    job = _job(site, tmp_path, tenant="research")
    dataset = str(job.parent / "storage" / DATASET_PATH)
    probe = (
        "import json, sys\n"
        "seen = []\n"
        f"def hook(event, args):\n"
        f"    if event == 'open' and str(args[0]).startswith({dataset!r}): seen.append(str(args[0]))\n"
        f"    if event == 'subprocess.Popen': seen.append('spawn ' + str(args[0]))\n"
        "sys.addaudithook(hook)\n"
        "from aifactory.runtime.train_cli import main\n"
        f"code = main([{str(job)!r}, '--host', 'rtlab-cpu-001'])\n"
        "print(json.dumps({'code': code, 'seen': seen}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "AIFACTORY_TOKEN"},
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 1, "seen": []}, result.stderr
    assert "train-denied" in result.stderr and "decision" in result.stderr
    assert "confidential" not in result.stderr  # the reason codes never reveal the classification
    last = json.loads((site.runtime_dir / "decisions.jsonl").read_text().splitlines()[-1])
    assert (last["tenant"], last["action"], last["resource"], last["allow"]) == (
        "research",
        "train",
        "dataset/vitals",
        False,
    )
    assert last["decision_id"] in result.stderr


def test_the_launcher_passes_the_jobs_rendezvous_waits_to_torchrun(site: RuntimeSite, tmp_path: Path) -> None:
    job = write_job(site, tmp_path, timeouts={"rendezvous_s": 77, "collective_s": 99})
    planned = subprocess.run(
        [
            sys.executable,
            "-m",
            "aifactory.runtime.train_cli",
            str(job),
            "--host",
            "rtlab-cpu-001",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={k: v for k, v in os.environ.items() if k != "AIFACTORY_TOKEN"},
    )
    assert planned.returncode == 0, planned.stderr
    argv = json.loads(planned.stdout)["argv"]
    assert "--rdzv-conf=is_host=true,join_timeout=77,read_timeout=77" in argv, argv


def test_a_collective_waiting_on_a_hung_peer_fails_after_the_jobs_collective_timeout(
    site: RuntimeSite, tmp_path: Path
) -> None:
    job = write_job(
        site,
        tmp_path,
        timeouts={"rendezvous_s": round(scaled(60)), "collective_s": 3},
        train={"steps": STEPS, "global_batch": 64, "learning_rate": 0.01, "checkpoint_every": EVERY},
    )
    process = _train(job, AIFACTORY_FAULT_STALL_AT_STEP="5")  # rank 0 hangs; rank 1 waits in all_reduce
    output, _ = process.communicate(timeout=scaled(120))  # the stall alone would last an hour
    assert process.returncode == 4, output
    assert "error[train-failed]" in output
    assert [m["step"] for m in _metrics(job)][-1] == 5
    assert "Timed out waiting 3000ms" in output  # Gloo's own words: the job's collective_s reached it
