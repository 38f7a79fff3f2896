"""The signed offline bundle: build, verify and import everything an air-gapped site needs.

    build_bundle(planned, output=..., options=BuildOptions(key=...)) -> BuildResult  (planned: PlannedSite)
    verify_bundle(path, trust=allowed_signers) -> VerifyReport   (raises BundleError on any problem)
    import_bundle(path, trust=...) -> ImportedBundle             (.root .wheelhouse .collections_path
                                                                  .plan_path .version .digest)
    current_import(SiteState.for_site(site)) -> ImportedBundle | None

See docs/bundle.md.
"""

from aifactory.bundle.build import BuildOptions, BuildResult, build_bundle
from aifactory.bundle.importer import ImportedBundle, bundles_home, current_import, import_bundle
from aifactory.bundle.manifest import NAMESPACE, BundleVersion, Manifest
from aifactory.bundle.verify import VerifyReport, inspect_bundle, verify_bundle

__all__ = [
    "NAMESPACE",
    "BuildOptions",
    "BuildResult",
    "BundleVersion",
    "ImportedBundle",
    "Manifest",
    "VerifyReport",
    "build_bundle",
    "bundles_home",
    "current_import",
    "import_bundle",
    "inspect_bundle",
    "verify_bundle",
]
