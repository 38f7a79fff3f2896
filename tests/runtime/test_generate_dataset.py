"""The dataset generator's draws as `aifactory up`'s loop stage asks for them on a node: a held-out set
past the training samples (`--offset`), and a larger draw replacing a smaller one (`--extend`), through
the real `aifactory-train --generate-dataset` on a planned site's storage folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from aifactory.errors import DatasetError
from aifactory.runtime import dataset as datasets

from .conftest import RuntimeSite, write_job


def test_a_draw_at_an_offset_holds_those_samples_of_the_same_teacher(tmp_path: Path) -> None:
    made = datasets.generate(tmp_path / "holdout", name="holdout", samples=64, seed=3, offset=128)
    x, y = datasets.teacher_samples(samples=192, features=16, classes=4, seed=3)
    held = datasets.load(tmp_path / "holdout")
    assert made["offset"] == 128 and made["samples"] == 64
    assert np.array_equal(held.x, x[128:]) and np.array_equal(held.y, y[128:])
    first = datasets.generate(tmp_path / "train", name="train", samples=128, seed=3)
    assert "offset" not in first  # a draw from the start keeps the bytes it had before offsets existed
    assert not {s["sha256"] for s in first["shards"]} & {s["sha256"] for s in made["shards"]}


def test_extend_replaces_a_smaller_draw_of_the_same_seed_and_keeps_its_versions(tmp_path: Path) -> None:
    folder = tmp_path / "vitals"
    datasets.generate(folder, name="vitals", samples=64, seed=5)
    small = datasets.load(folder)
    (folder / "versions").mkdir()
    (folder / "versions" / "kept").write_text("a signed version lives here")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        datasets.generate(folder, name="vitals", samples=256, seed=5)  # not without extend
    grown = datasets.generate(folder, name="vitals", samples=256, seed=5, extend=True)
    large = datasets.load(folder)
    assert grown["samples"] == 256 and np.array_equal(large.x[:64], small.x)
    assert (folder / "versions" / "kept").read_text() == "a signed version lives here"
    for samples, seed in ((128, 5), (512, 6)):  # not a larger draw, or another seed's: refused
        with pytest.raises(DatasetError, match="refusing to overwrite"):
            datasets.generate(folder, name="vitals", samples=samples, seed=seed, extend=True)
    assert datasets.read_manifest(folder) == grown


def _generate(job: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "aifactory.runtime.train_cli", str(job), "--host", "rtlab-cpu-001"]
    return subprocess.run([*argv, "--generate-dataset", *flags], capture_output=True, text=True, check=False)


def test_the_node_command_grows_the_training_draw_once_and_refuses_a_negative_offset(
    site: RuntimeSite, tmp_path: Path
) -> None:
    job = write_job(site, tmp_path, train={"seed": 7})  # the site's dataset: 2048 samples of seed 7
    dataset = tmp_path / "storage" / "srv/share/datasets/vitals"
    before = datasets.load(dataset)
    grown = _generate(job, "--samples", "4096", "--extend")
    assert grown.returncode == 0, grown.stderr
    after = datasets.load(dataset)
    assert len(after) == 4096 and np.array_equal(after.x[:2048], before.x)
    manifest = (dataset / "manifest.json").read_bytes()
    again = _generate(job, "--samples", "4096", "--extend")
    assert again.returncode == 0 and "already at" in again.stderr and "4096 samples" in again.stderr
    assert (dataset / "manifest.json").read_bytes() == manifest
    plain = _generate(job, "--samples", "8192")  # without --extend an existing dataset stays
    assert plain.returncode == 0 and json.loads(manifest)["samples"] == 4096
    assert (dataset / "manifest.json").read_bytes() == manifest
    refused = _generate(job, "--samples", "10", "--offset", "-1")
    assert refused.returncode == 2 and "use 0 or more samples" in refused.stderr
    assert yaml.safe_load(job.read_text())["dataset"] == "vitals"
