"""The JSON Schema of the site spec, generated from the model.

    python -m aifactory.spec.schema            # writes docs/site-v1.schema.json
    python -m aifactory.spec.schema --check    # exit 1 if the committed copy differs
    python -m aifactory.spec.schema -o -       # print it

Editors and other tools can validate a spec's shape with it; `aifactory validate` does more (the
cross-references, places and address-space checks a schema cannot express).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifactory.console import generated_file_main
from aifactory.spec.model import SCHEMA_VERSION, SiteSpec

SCHEMA_ID = "https://aifactory.example/schemas/site-v1.schema.json"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "site-v1.schema.json"


def site_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a version 1 site spec."""
    body = SiteSpec.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "$comment": f"Generated from aifactory.spec.model by `python -m aifactory.spec.schema`: "
        f"do not edit. Describes {SCHEMA_VERSION}; see docs/site-spec.md.",
        **body,
    }


def schema_text() -> str:
    return json.dumps(site_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return generated_file_main(
        argv,
        prog="python -m aifactory.spec.schema",
        description=__doc__.splitlines()[0],
        text=schema_text,
        default_output=DEFAULT_OUTPUT,
        what="schema",
        code="schema-not-written",
    )


if __name__ == "__main__":
    sys.exit(main())
