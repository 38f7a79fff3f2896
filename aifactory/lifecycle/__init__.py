"""A site's life after its first deploy: upgrades (and the versions, activations and records they keep)."""
