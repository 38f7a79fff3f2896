"""What a command's SITE argument names: a site spec file, or a site by its name.

Commands that work on a site's state (`lab down`, `token issue`, `secret set`, `jobs`...) accept
either. One rule for all of them: an argument ending in .yaml/.yml, or naming an existing file, is a
spec and is loaded (and validated); anything else must be a site name by the spec's own grammar, so
a mistyped path or a name like `../x` is refused instead of becoming a folder name in the state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aifactory.errors import UsageError
from aifactory.spec.model import NAME_PATTERN, SiteSpec
from aifactory.spec.validate import load_spec

SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SiteReference:
    name: str
    spec: SiteSpec | None = None  # set when the argument was a spec file
    spec_path: Path | None = None


def resolve_site(argument: str) -> SiteReference:
    path = Path(argument)
    if path.suffix in SPEC_SUFFIXES or path.is_file():
        spec = load_spec(path).spec
        return SiteReference(spec.site.name, spec, path)
    if not re.fullmatch(NAME_PATTERN, argument):  # fullmatch: `$` alone would let "name\n" through
        raise UsageError(
            f"{argument!r} is neither a site spec file nor a site name",
            hint="give the site's spec (a .yaml file) or its name: a lowercase letter, then up to 19 "
            "lowercase letters, digits or hyphens",
        )
    return SiteReference(argument)
