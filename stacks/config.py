"""Read the stack's configuration once (set by `aifactory provision`, see docs/provision.md).

    aifactory:planFile    the plan JSON (`aifactory plan -o`), required
    aifactory:stateDir    the site's state folder, required (artifacts and the secret store live there)
    aifactory:pkeys       {tenant: "0x1a2b"}: partition keys held by the site (missing ones are derived)
    aifactory:factsFile   discovered facts with InfiniBand port GUIDs (optional)
    aifactory:assetsFile  asset register: expected manufacturer/model/serial per host (optional)
    aifactory:bmc         {scheme, port, verify_tls, ca_bundle, power_timeout, endpoints: {host: url}}
    aifactory:boot        {source: pxe | virtual-media, image: URL}

BMC credentials are resolved here from the plan's secret:// references (environment or the site's
encrypted store) and wrapped at once as Pulumi secrets.
"""

from pathlib import Path

import pulumi
from aifactory_stack.settings import StackSettings, read_settings


def load() -> StackSettings:
    cfg = pulumi.Config("aifactory")
    return read_settings(
        plan_file=Path(cfg.require("planFile")),
        state_dir=Path(cfg.require("stateDir")),
        pkeys=cfg.get_object("pkeys") or {},
        facts_file=cfg.get("factsFile"),
        assets_file=cfg.get("assetsFile"),
        bmc=cfg.get_object("bmc") or {},
        boot=cfg.get_object("boot") or {},
    )
