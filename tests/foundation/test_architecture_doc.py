"""docs/architecture.md lists the stages of `aifactory up` in the order the pipeline runs them."""

from __future__ import annotations

import re
from pathlib import Path

from aifactory.pipeline.up import stage_names

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
HEADING = "## The stages of `aifactory up`"


def documented_stages(text: str) -> list[str]:
    """The first column of the table under HEADING, in order."""
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"(?m)^\| `([a-z-]+)` \|", section)


def test_the_architecture_doc_lists_the_pipelines_stages_in_order() -> None:
    assert documented_stages(DOC.read_text(encoding="utf-8")) == stage_names()


def test_the_reader_finds_the_rows_in_order() -> None:
    text = f"{HEADING}\n\n| stage | x |\n|---|---|\n| `b` | 1 |\n| `a` | 2 |\n\n## next\n| `c` | 3 |\n"
    assert documented_stages(text) == ["b", "a"]
