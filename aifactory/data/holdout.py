"""The evaluation set is never trained on (docs/loop.md): the files of the dataset versions a training
job read, checked against the files of the evaluation set's version, by path and by content.

A dataset version lists every file it holds with its path below the dataset's folder and its SHA-256
(aifactory.data.versions). Two checks, both on those manifests, so neither reads a byte of data:

- **by path**: a training file at the path of an evaluation file in the same dataset is that file
  (the site spec refuses two datasets at one path or one inside another, so a dataset's name and a
  path below it name one place on the storage);
- **by content**: a training file with the SHA-256 of an evaluation file holds the same bytes,
  wherever it was copied to. Empty files are left out: every empty file has the same digest and
  carries no sample.

What this cannot see: a sample copied into a file with other samples (the file's digest changes).
Checking sample by sample needs the data's own format; it is not built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aifactory.data.versions import VERSION_FORMAT, Version, manifest_digest
from aifactory.errors import DatasetVersionError


@dataclass(frozen=True)
class VersionFile:
    path: str  # below the dataset's folder
    sha256: str  # hex
    size: int


@dataclass(frozen=True)
class DatasetVersionFiles:
    """One dataset version as the loop sees it: which version, and its files."""

    dataset: str
    version: int
    digest: str  # sha256:<hex> of its manifest
    files: tuple[VersionFile, ...]

    @classmethod
    def of(cls, version: Version) -> DatasetVersionFiles:
        """A version read (and verified) by aifactory.data.versions.read_history."""
        return cls._from(version.manifest, version.digest)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> DatasetVersionFiles:
        """A version's manifest as written (`versions/vNNNNNN.json`); its digest is computed from it.
        Whether its signature verifies is read_history's to say: call this on verified manifests."""
        if manifest.get("format") != VERSION_FORMAT:
            raise DatasetVersionError(f"not an {VERSION_FORMAT} manifest")
        return cls._from(manifest, manifest_digest(dict(manifest)))

    @classmethod
    def _from(cls, manifest: Mapping[str, Any], digest: str) -> DatasetVersionFiles:
        try:
            files = tuple(
                VersionFile(str(item["path"]), str(item["sha256"]), int(item["size"]))
                for item in manifest["files"]
            )
            return cls(str(manifest["dataset"]), int(manifest["version"]), digest, files)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetVersionError(f"a dataset version manifest without its {exc}") from None

    def identity(self) -> dict[str, Any]:
        """What names the version (the policy's input, the promotion record)."""
        return {"dataset": self.dataset, "version": self.version, "digest": self.digest}


@dataclass(frozen=True)
class TrainingManifest:
    """The dataset versions one training job read."""

    datasets: tuple[DatasetVersionFiles, ...]

    def identities(self) -> list[dict[str, Any]]:
        return [d.identity() for d in self.datasets]


@dataclass(frozen=True)
class Overlap:
    """A file of the training data that is an evaluation file."""

    dataset: str  # the training dataset holding it
    version: int
    path: str
    sha256: str
    evaluation_path: str  # the evaluation file it is
    match: str  # "path" (the same file of the same dataset) or "content" (the same bytes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "path": self.path,
            "sha256": self.sha256,
            "evaluation_path": self.evaluation_path,
            "match": self.match,
        }


def evaluation_overlap(training: TrainingManifest, evaluation: DatasetVersionFiles) -> tuple[Overlap, ...]:
    """Every training file that is an evaluation file, by path or by content, in a fixed order."""
    by_path = {f.path: f for f in evaluation.files}
    by_content = {f.sha256: f for f in evaluation.files if f.size > 0}
    found: list[Overlap] = []
    for version in training.datasets:
        for item in version.files:
            same_file = by_path.get(item.path) if version.dataset == evaluation.dataset else None
            same_bytes = by_content.get(item.sha256) if item.size > 0 else None
            if same_file is not None:
                found.append(_overlap(version, item, same_file, "path"))
            elif same_bytes is not None:
                found.append(_overlap(version, item, same_bytes, "content"))
    return tuple(sorted(found, key=lambda o: (o.dataset, o.version, o.path)))


def _overlap(version: DatasetVersionFiles, item: VersionFile, evaluation: VersionFile, match: str) -> Overlap:
    return Overlap(version.dataset, version.version, item.path, item.sha256, evaluation.path, match)
