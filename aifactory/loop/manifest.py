"""The training manifest: the exact files one training job read, tied to the signed dataset versions
they belong to, signed by the site (docs/loop.md).

    training job (node)           runs/<job>/data-read.json: each file it read, SHA-256 checked as read
    control host (this module)    each read file must be a file of the version the loop made for the
                                  job (same path, same SHA-256), then the manifest is signed with the
                                  site's model-signing key and kept in the model version's provenance
                                  (so the model signature covers it too)

    {"format": "aifactory.training-manifest/v1", "model", "job": {"name", "slurm_job_id",
     "decision_id"}, "datasets": [{"dataset", "version", "digest", "files": [{"path", "sha256",
     "size"}]}], "key", "signature"}

The job holds no key, so what it writes is a claim; the signature says the control host checked the
claim against a version whose own signature and file digests verified. The evaluation set's files are
checked against the training data twice: against the version before the job is submitted
(`check_not_trained_on`), and against the signed manifest when promoting (the promotion policy's
`eval-set-in-training`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifactory.data.holdout import DatasetVersionFiles, TrainingManifest, VersionFile, evaluation_overlap
from aifactory.data.versions import Version, read_history, record_signed, sign_record
from aifactory.errors import DatasetVersionError, LoopError, ModelRefused
from aifactory.runtime.job import DATA_READ_FORMAT
from aifactory.trust.issuing.models import ModelKey
from aifactory.trust.models import ModelTrust

TRAINING_MANIFEST_FORMAT = "aifactory.training-manifest/v1"
MAX_DATA_READ_BYTES = 16 << 20  # a manifest line per shard: far below this


@dataclass(frozen=True)
class JobRef:
    """The training job a manifest is about."""

    name: str
    slurm_job_id: str
    decision_id: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "slurm_job_id": self.slurm_job_id, "decision_id": self.decision_id}


def read_data_read(path: Path) -> dict[str, Any]:
    """The job's `data-read.json`, checked for shape (it comes from a node: untrusted)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_DATA_READ_BYTES + 1)
        document = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise LoopError(
            f"cannot read what the training job read ({path}): {exc}", code="training-manifest-missing"
        ) from None
    files = document.get("files") if isinstance(document, dict) else None
    if (
        len(raw) > MAX_DATA_READ_BYTES
        or document.get("format") != DATA_READ_FORMAT
        or not isinstance(files, list)
        or not all(isinstance(f, dict) and {"path", "sha256", "size"} <= set(f) for f in files)
    ):
        raise LoopError(f"{path} is not an {DATA_READ_FORMAT} document", code="training-manifest-invalid")
    return dict(document)


def sign_training_manifest(
    *, model: str, job: JobRef, data_read: Mapping[str, Any], version: Version, key: ModelKey
) -> dict[str, Any]:
    """The signed manifest of a job that read `data_read` out of `version` (verified by read_history);
    LoopError when it read anything that is not a file of that version."""
    listed = {str(f["path"]): str(f["sha256"]) for f in version.files if f.get("state") == "present"}
    if data_read.get("dataset") != version.manifest.get("dataset"):
        raise LoopError(
            f"training job {job.name} read dataset {str(data_read.get('dataset'))[:80]!r}, not "
            f"{version.manifest.get('dataset')}",
            code="training-data-not-in-version",
        )
    files = []
    for item in data_read["files"]:
        path, sha = str(item["path"]), str(item["sha256"])
        if listed.get(path) != sha:
            raise LoopError(
                f"training job {job.name} read {path[:200]} (sha256 {sha[:16]}...), which is not that "
                f"file of version {version.number} of dataset {version.manifest.get('dataset')}",
                code="training-data-not-in-version",
                hint="the dataset's folder changed after the loop made the version; run the turn again",
            )
        files.append({"path": path, "sha256": sha, "size": int(item["size"])})
    return sign_record(
        {
            "format": TRAINING_MANIFEST_FORMAT,
            "model": model,
            "job": job.as_dict(),
            "datasets": [
                {
                    "dataset": str(version.manifest["dataset"]),
                    "version": version.number,
                    "digest": version.digest,
                    "files": sorted(files, key=lambda f: str(f["path"])),
                }
            ],
        },
        key,
    )


def verify_training_manifest(
    manifest: Mapping[str, Any], *, trust: ModelTrust, dataset_dirs: Mapping[str, Path]
) -> TrainingManifest:
    """The manifest's datasets as the promotion policy takes them, after checking its signature and
    that every file it names is that file of a dataset version that verifies; LoopError naming the
    first link that does not."""
    try:
        public = trust.load()
    except ModelRefused as refused:
        raise LoopError(f"no site key to verify the training manifest: {refused.message}") from None
    if manifest.get("format") != TRAINING_MANIFEST_FORMAT or not record_signed(dict(manifest), public):
        raise LoopError(
            "the training manifest's signature does not verify against the site's key",
            code="training-manifest-unverified",
        )
    found = []
    for entry in manifest.get("datasets", []):
        name = str(entry["dataset"])
        if name not in dataset_dirs:
            raise LoopError(f"the training manifest names dataset {name[:80]!r}, which the site has not")
        history = read_history(dataset_dirs[name], trust, dataset=name)
        try:
            version = history.find(str(entry["version"]))
        except DatasetVersionError as exc:
            raise LoopError(exc.message, code="training-manifest-unverified") from None
        if version.digest != entry["digest"]:
            raise LoopError(
                f"dataset {name} version {entry['version']} is not the one the training manifest names "
                f"({version.digest} != {entry['digest']})",
                code="training-manifest-unverified",
            )
        listed = {str(f["path"]): str(f["sha256"]) for f in version.files}
        files = tuple(
            VersionFile(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in entry.get("files", [])
        )
        stray = next((f for f in files if listed.get(f.path) != f.sha256), None)
        if stray is not None:
            raise LoopError(
                f"the training manifest names {stray.path[:200]}, which is not that file of dataset "
                f"{name} version {version.number}",
                code="training-manifest-unverified",
            )
        found.append(DatasetVersionFiles(name, version.number, version.digest, files))
    return TrainingManifest(tuple(found))


def check_not_trained_on(training: DatasetVersionFiles, evaluation: DatasetVersionFiles) -> None:
    """Before a job is submitted: no file of the version it will read is an evaluation file."""
    overlap = evaluation_overlap(TrainingManifest((training,)), evaluation)
    if training.dataset == evaluation.dataset or overlap:
        first = overlap[0].as_dict() if overlap else {"path": "(the whole dataset)"}
        raise LoopError(
            f"version {training.version} of dataset {training.dataset} holds files of the evaluation set "
            f"{evaluation.dataset} v{evaluation.version} ({len(overlap)} file(s), first {first['path']}): "
            "nothing was trained",
            code="eval-set-in-training",
            hint="take the evaluation set's files out of the training data and run the turn again",
        )
