"""The local lab: an air-gapped site in miniature on one machine (docs/lab.md).

Hosts are network, mount and UTS namespaces with their own sshd; BMCs are sushy-tools Redfish
emulators; everything is named from the site name, so labs of different sites run side by side.
"""

from aifactory.lab.bmc import BmcCredential, lab_bmc_credential, lab_secret_resolver
from aifactory.lab.connection import lab_connection, lab_is_up
from aifactory.lab.execute import lab_command, lab_env, lab_exec
from aifactory.lab.lifecycle import lab_down, lab_up, restart_sshd
from aifactory.lab.query import lab_status
from aifactory.lab.status import BmcStatus, HostStatus, LabStatus

__all__ = [
    "BmcCredential",
    "BmcStatus",
    "HostStatus",
    "LabStatus",
    "lab_bmc_credential",
    "lab_command",
    "lab_connection",
    "lab_down",
    "lab_env",
    "lab_exec",
    "lab_is_up",
    "lab_secret_resolver",
    "lab_status",
    "lab_up",
    "restart_sshd",
]
