"""Day 2 of a site's life: which versions run where, the signed authorization to go back to an older
one, and the operator-log records of every upgrade and rollback (docs/operations.md).

    versions.py    VersionHistory: the bundle versions imported, which is current, which host runs which
    activation.py  the admin-signed activation record and `activation_allows`, which anti-rollback consults
    records.py     the operator-log records an upgrade or rollback writes (CM-3 evidence)
    batches.py, journal.py, seams.py, upgrade.py, site_parts.py, change.py
                   `aifactory upgrade`: batches, the resumable journal, the steps and their real parts
    rollback.py    `aifactory rollback`: the upgrade's engine to an older version imported before

This package's __init__ imports nothing: aifactory.bundle's anti-rollback check imports activation.py,
and versions.py imports aifactory.bundle, so an eager import here would be a cycle.
"""
