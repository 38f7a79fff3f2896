"""Provisioning: the Redfish client, the bare-metal host logic and its Pulumi dynamic provider,
fabric and storage artifact rendering, and the Automation API driver used by `aifactory provision`.

Only `provider` and `driver` import Pulumi; everything else runs without it.
"""
