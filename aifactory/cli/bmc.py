"""The BMC options the day-2 commands share (`upgrade`'s restarts, `replace`'s reinstall), and the
`BmcAccess` they make with the site's Connection: from the control host's network when this process
is not on it (Connection.control_network, aifactory.netns)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the parser is built on every command, sushy is heavy
    from aifactory.connection import Connection
    from aifactory.lifecycle.bmc_reboot import BmcAccess
    from aifactory.secrets import SecretResolver
    from aifactory.state import SiteState


def add_bmc_options(parser: argparse.ArgumentParser, *, why: str) -> None:
    """--bmc-scheme, --bmc-port, --bmc-ca; `why` says what the BMCs are reached for."""
    parser.add_argument(
        "--bmc-scheme",
        choices=("https", "http"),
        default="https",
        help=f"how to reach the BMCs {why} (default https; the lab's emulators use http)",
    )
    parser.add_argument("--bmc-port", type=int, help="BMC Redfish port (default: the scheme's)")
    parser.add_argument("--bmc-ca", type=Path, help="CA bundle that signs the BMCs' TLS certificates")


def bmc_access(args: argparse.Namespace, connection: Connection) -> BmcAccess:
    from aifactory.lifecycle.bmc_reboot import BmcAccess
    from aifactory.netns import NetworkNamespace
    from aifactory.provision.redfish import TlsSettings

    tls = TlsSettings(ca_bundle=str(args.bmc_ca.resolve()) if args.bmc_ca else None)
    network = NetworkNamespace(connection.control_network) if connection.control_network else None
    return BmcAccess(args.bmc_scheme, args.bmc_port, tls, network)


def site_secrets(state: SiteState, connection: Connection) -> SecretResolver:
    """The site's secret store, opened with AIFACTORY_PASSPHRASE_FILE (the connection's, else ours)."""
    from aifactory.secrets import STORE_FILE, SecretResolver

    passphrase = connection.env.get("AIFACTORY_PASSPHRASE_FILE") or os.environ.get(
        "AIFACTORY_PASSPHRASE_FILE"
    )
    return SecretResolver(state.path(STORE_FILE), passphrase)
