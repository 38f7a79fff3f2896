"""Countries, regions, blocs and the classification order: one data file for validator and policies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from aifactory.resources import places_data_path


@dataclass(frozen=True)
class Places:
    countries: frozenset[str]
    regions: dict[str, tuple[str, ...]]
    blocs: dict[str, tuple[str, ...]]
    classifications: tuple[str, ...]
    raw: dict[str, Any]

    def is_country(self, code: str) -> bool:
        return code in self.countries

    def is_bloc(self, name: str) -> bool:
        return name in self.blocs

    def is_region(self, code: str) -> bool:
        return code in self.regions.get(code[:2], ())

    def regions_of(self, country: str) -> list[str]:
        return list(self.regions.get(country, ()))

    def countries_of(self, place: str) -> list[str]:
        """A place as a sorted list of countries (a country stands for itself)."""
        if place in self.blocs:
            return list(self.blocs[place])
        return [place] if place in self.countries else []

    def all_places(self) -> list[str]:
        return sorted(self.countries | set(self.blocs))

    def rank(self, classification: str) -> int:
        return self.classifications.index(classification)


@lru_cache(maxsize=4)
def load_places(path: Path | None = None) -> Places:
    raw = json.loads((path or places_data_path()).read_text())
    return Places(
        countries=frozenset(raw["countries"]),
        regions={k: tuple(v) for k, v in raw["regions"].items()},
        blocs={k: tuple(sorted(v)) for k, v in raw["blocs"].items()},
        classifications=tuple(raw["classifications"]),
        raw=raw,
    )
