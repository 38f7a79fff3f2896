"""The issuing side of the site's trust: the control host mints tokens, signs the revocation list and
runs the site CA. Nodes never import this package (tests/foundation/test_import_boundaries.py)."""
