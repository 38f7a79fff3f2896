"""The site's trust: who a caller is, whether the policy lets them, and the record that says so.

Two sides, kept apart so that a node never holds code (or keys) that can mint credentials:

    verifying (nodes; the control host too, before `sbatch`)
        tokens        the token format, the trust files, TokenVerifier, the revocation check   (no torch)
        certs         which tenant a client certificate from the site CA names (mTLS)          (no torch)
        decisionlog   the hash-chained decision log, its signed heads, verify_log              (no torch)
        authz         token/certificate -> tenant -> policy -> durable record (Guard)          (no torch)

    issuing (the control host only: it holds the token key and the CA's key)
        issuing.tokens  the site's token key, issuing and revoking tokens, the signed revocation list
        issuing.certs   the site CA, tenant client and server certificates

The verifying side never imports the issuing side (tests/foundation/test_import_boundaries.py), and
neither imports `aifactory.runtime`: training and serving use trust, not the other way round.
"""
