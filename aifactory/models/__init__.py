"""Signed models: the site's model-signing key, the registry on site storage, champion and challenger.

- `aifactory.models.registry` (verifying side, runs on nodes, torch-free): the registry's layout, the
  model versions by digest with their OpenSSF model signatures (`model-signing`, key mode, ECDSA),
  the signed promotion records, and `inspect`, which says what a server may serve and what it refuses.
- `aifactory.models.issue` (issuing side, the admin's control host): the site's model-signing key
  pair, `register` (copy a checkpoint into the registry, sign it) and `promote`.

See docs/models.md.
"""
