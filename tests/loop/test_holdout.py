"""The evaluation set is never trained on (docs/loop.md): the files of the dataset versions a training
job read are checked against the evaluation set's version, by path and by content, on real signed
versions made by aifactory.data.versions."""

from __future__ import annotations

import json
from pathlib import Path

from aifactory.data.holdout import DatasetVersionFiles, Overlap, TrainingManifest, evaluation_overlap

from .conftest import MakeVersion

# Two small datasets of distinct samples, as files: what makes them interesting is only which bytes
# and which paths they share.
TRAINING = {"shards/0.bin": b"train samples 0-99", "shards/1.bin": b"train samples 100-199"}
HOLDOUT = {"shards/0.bin": b"held-out samples 0-49", "labels.txt": b"held-out labels"}


def test_disjoint_data_has_no_overlap_even_at_the_same_paths(make_version: MakeVersion) -> None:
    training = make_version("vitals", TRAINING)
    holdout = make_version("vitals-holdout", HOLDOUT)
    assert {f.path for f in training.files} & {f.path for f in holdout.files} == {"shards/0.bin"}
    assert evaluation_overlap(TrainingManifest((training,)), holdout) == ()


def test_an_evaluation_file_copied_into_the_training_data_is_caught_by_its_content(
    make_version: MakeVersion,
) -> None:
    holdout = make_version("vitals-holdout", HOLDOUT)
    training = make_version("vitals", TRAINING | {"extra/borrowed.bin": HOLDOUT["labels.txt"]})
    found = evaluation_overlap(TrainingManifest((training,)), holdout)
    copied = next(f for f in holdout.files if f.path == "labels.txt")
    assert found == (
        Overlap("vitals", training.version, "extra/borrowed.bin", copied.sha256, "labels.txt", "content"),
    )


def test_training_on_the_evaluation_set_itself_is_caught_file_by_file(make_version: MakeVersion) -> None:
    """A later version of the evaluation dataset, one file changed: every file is the set's by path."""
    holdout = make_version("vitals-holdout", HOLDOUT)
    later = make_version("vitals-holdout", HOLDOUT | {"labels.txt": b"held-out labels, corrected"})
    training = make_version("vitals", TRAINING)
    found = evaluation_overlap(TrainingManifest((training, later)), holdout)
    assert [(o.dataset, o.version, o.path, o.evaluation_path, o.match) for o in found] == [
        ("vitals-holdout", 2, "labels.txt", "labels.txt", "path"),
        ("vitals-holdout", 2, "shards/0.bin", "shards/0.bin", "path"),
    ]


def test_empty_files_are_no_overlap(make_version: MakeVersion) -> None:
    """Every empty file has one digest and holds no sample."""
    holdout = make_version("vitals-holdout", HOLDOUT | {"README": b""})
    training = make_version("vitals", TRAINING | {"notes/empty": b""})
    assert evaluation_overlap(TrainingManifest((training,)), holdout) == ()


def test_a_manifest_read_from_the_storage_is_the_version_read_through_its_history(
    make_version: MakeVersion, tmp_path: Path
) -> None:
    made = make_version("vitals-holdout", HOLDOUT)
    manifest = json.loads((tmp_path / "storage" / "vitals-holdout" / "versions" / "v000001.json").read_text())
    assert DatasetVersionFiles.from_manifest(manifest) == made
    assert made.identity() == {"dataset": "vitals-holdout", "version": 1, "digest": made.digest}
