"""The site's trust: who a caller is, whether the policy lets them, and the record that says so.

Two sides, kept apart so that a node never holds code (or keys) that can mint credentials:

    verifying (nodes; the control host too, before `sbatch`)
        tokens        the token format, the trust files, TokenVerifier, the revocation check   (no torch)
        certs         which tenant a client certificate from the site CA names (mTLS)          (no torch)
        decisionlog   the hash-chained decision log, its signed heads, verify_log              (no torch)
        authz         token/certificate -> tenant -> policy -> durable record (Guard)          (no torch)
        models        the model registry: OpenSSF model signatures, signed promotions, what a
                      server may load and what it refuses (docs/models.md)                     (no torch)

    issuing (the control host only: it holds the token key and the CA's key)
        issuing.tokens  the site's token key, issuing and revoking tokens, the signed revocation list
        issuing.certs   the site CA, tenant client and server certificates
        issuing.models  the site's model-signing key, signing a checkpoint into the registry, promotions

The verifying side never imports the issuing side (tests/foundation/test_import_boundaries.py), and
neither imports `aifactory.runtime`: training and serving use trust, not the other way round.
"""
