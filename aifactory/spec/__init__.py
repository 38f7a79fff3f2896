"""Site spec: load (YAML with positions), model, validate, JSON Schema export."""

from aifactory.spec.model import SiteSpec
from aifactory.spec.validate import LoadedSpec, load_spec, load_spec_text

__all__ = ["LoadedSpec", "SiteSpec", "load_spec", "load_spec_text"]
