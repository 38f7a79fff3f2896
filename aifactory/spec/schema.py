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

from aifactory.console import DEBUG_HELP, UsageParser, run_console
from aifactory.errors import ExitCode, Location, PrerequisiteError
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
    return run_console(_schema, argv)


def _schema(arguments: list[str]) -> int:
    parser = UsageParser(prog="python -m aifactory.spec.schema", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(DEFAULT_OUTPUT), help="file to write, or - for stdout")
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(arguments)
    text = schema_text()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{target} is out of date: run `python -m aifactory.spec.schema`", file=sys.stderr)
            return int(ExitCode.INVALID)
        return 0
    try:
        target.write_text(text)
    except OSError as exc:
        raise PrerequisiteError(
            f"cannot write the schema: {exc.strerror}",
            code="schema-not-written",
            location=Location(file=str(target)),
        ) from None
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
