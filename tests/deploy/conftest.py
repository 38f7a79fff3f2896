"""The deploy tests use the session's `lab` and `lab_bundle_import` (tests/conftest.py): the bundle
is built and imported once, and the same lab, once deployed, serves every later module that needs a
deployed site (`deployed_lab`)."""
