"""Bare-metal host lifecycle over Redfish, as a plain class (no Pulumi needed to use or test it).

    create  find the host's system, record its identity, check it against the plan (stop on a
            mismatch before touching anything), set the boot source, power on and wait
    diff    compare the desired properties and the live system with what was recorded: a different
            system UUID behind the BMC (swapped hardware), another BMC or another system selector
            need a replace; a changed or drifted boot source, power state or expectation an update
    update  set the boot source again, power on, re-check the inventory
    delete  power off and clear the boot override (and eject virtual media)
    read    the live state, for `pulumi refresh`

Boot overrides: the plan asks for a one-time override (`Once`). Some BMCs (and the sushy-tools
emulator) keep every override as `Continuous`; both are treated alike: only the target is compared.

`props` are the resource's inputs: host, endpoint, system (optional selector), credentials (the
resolved secret value, a Pulumi secret), credentials_ref, boot {source, image}, expect {...},
tls {verify, ca_bundle}, power_timeout. `outs` add identity, inventory, power_state, boot_reported,
bmc_state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from aifactory.errors import Location, Problem, ProvisionError
from aifactory.provision.identity import Expectation, check_inventory, read_identity
from aifactory.provision.redfish import (
    POWER_OFF_STATES,
    POWER_ON_STATES,
    BmcCredentials,
    RedfishClient,
    TlsSettings,
)

log = logging.getLogger(__name__)

BOOT_TARGETS = {"pxe": "Pxe", "virtual-media": "Cd", "disk": "Hdd"}
CLEARED_TARGETS = ("None", None, "")
DEFAULT_POWER_TIMEOUT = 120.0
REPLACE_KEYS = ("endpoint", "system")
UPDATE_KEYS = ("boot", "expect", "credentials", "credentials_ref", "tls", "power_timeout")


@dataclass(frozen=True)
class HostDiff:
    changes: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.replaces)


class BareMetalHostLogic:
    """Stateless: every call gets what it needs in `props`/`outs`, so nothing secret lives here."""

    def __init__(self, *, poll_interval: float = 1.0) -> None:
        self.poll_interval = poll_interval

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def client(props: dict[str, Any]) -> RedfishClient:
        reference = str(props.get("credentials_ref") or "the BMC credential")
        credentials = BmcCredentials.parse(str(props.get("credentials") or ""), reference=reference)
        tls = props.get("tls") or {}
        return RedfishClient(
            str(props["endpoint"]),
            credentials,
            host=str(props["host"]),
            credentials_reference=reference,
            tls=TlsSettings(bool(tls.get("verify", True)), tls.get("ca_bundle")),
        )

    @staticmethod
    def boot_target(props: dict[str, Any]) -> str:
        source = str((props.get("boot") or {}).get("source", "pxe"))
        if source not in BOOT_TARGETS:
            raise ProvisionError(
                f"{props.get('host')}: unknown boot source {source!r}",
                code="provision-boot-source",
                hint=f"use one of {', '.join(BOOT_TARGETS)}",
            )
        return BOOT_TARGETS[source]

    @staticmethod
    def _observed(system: dict[str, Any]) -> dict[str, Any]:
        boot = system.get("Boot") or {}
        return {
            "power_state": system.get("PowerState"),
            "boot_reported": {
                "target": boot.get("BootSourceOverrideTarget"),
                "enabled": boot.get("BootSourceOverrideEnabled"),
                "mode": boot.get("BootSourceOverrideMode"),
            },
            "bmc_state": "reachable",
        }

    def _timeout(self, props: dict[str, Any]) -> float:
        return float(props.get("power_timeout") or DEFAULT_POWER_TIMEOUT)

    def _apply(self, client: RedfishClient, system: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
        """Set the boot source and power on; return the system as it then reports itself."""
        target = self.boot_target(props)
        image = (props.get("boot") or {}).get("image")
        if target == "Cd":
            if not image:
                raise ProvisionError(
                    f"{props['host']}: virtual-media boot needs an image URL",
                    code="provision-boot-source",
                    hint="give the bundle's installer image URL (boot.image)",
                )
            slot = client.virtual_media_slot(system)
            if slot is None:
                raise ProvisionError(
                    f"the BMC of {props['host']} offers no CD virtual media slot",
                    code="bmc-no-virtual-media",
                    hint="boot this host by PXE instead",
                )
            client.insert_media(slot, str(image))
        client.set_boot_override(system, target=target, enabled="Once")
        path = system["@odata.id"]
        if system.get("PowerState") not in POWER_ON_STATES:
            client.reset(system, "On")
            return client.wait_power(
                path, POWER_ON_STATES, timeout=self._timeout(props), interval=self.poll_interval
            )
        return client.get(path)

    def _checked_identity(
        self, client: RedfishClient, system: dict[str, Any], props: dict[str, Any]
    ) -> dict[str, Any]:
        identity = read_identity(client, system)
        check = check_inventory(identity, Expectation.from_dict(props.get("expect")))
        if not check.ok:
            raise ProvisionError(
                f"the system behind the BMC of {props['host']} does not match the plan",
                code="provision-inventory-mismatch",
                hint="fix the plan or the asset register, or install the right hardware; nothing was "
                "changed on this host",
                problems=[_problem(props["host"], m.render()) for m in check.mismatches],
            )
        return {"identity": identity.as_dict(), "inventory": check.as_dict()}

    # -- lifecycle ---------------------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        client = self.client(props)
        system = client.find_system(props.get("system"))
        recorded = self._checked_identity(client, system, props)
        system = self._apply(client, system, props)
        outs = {**props, **recorded, **self._observed(system)}
        return recorded["identity"]["uuid"], outs

    def diff(self, olds: dict[str, Any], news: dict[str, Any], *, live: bool = True) -> HostDiff:
        changes: list[str] = []
        replaces: list[str] = []
        reasons: list[str] = []
        for key in REPLACE_KEYS:
            if olds.get(key) != news.get(key):
                replaces.append(key)
                reasons.append(f"{key} changed: {olds.get(key)!r} -> {news.get(key)!r}")
        for key in UPDATE_KEYS:
            if olds.get(key) != news.get(key):
                changes.append(key)
                reasons.append(
                    f"{key} changed"
                    if key == "credentials"
                    else f"{key} changed: {olds.get(key)!r} -> {news.get(key)!r}"
                )
        if live and not replaces:
            self._live_diff(olds, news, changes, replaces, reasons)
        return HostDiff(tuple(dict.fromkeys(changes)), tuple(dict.fromkeys(replaces)), tuple(reasons))

    def _live_diff(
        self,
        olds: dict[str, Any],
        news: dict[str, Any],
        changes: list[str],
        replaces: list[str],
        reasons: list[str],
    ) -> None:
        client = self.client(news)
        system = client.find_system(news.get("system"))
        recorded_uuid = str((olds.get("identity") or {}).get("uuid", "")).lower()
        live_uuid = str(system.get("UUID") or system.get("Id", "")).lower()
        if recorded_uuid and live_uuid != recorded_uuid:
            replaces.append("identity")
            reasons.append(
                f"the BMC now reports a different system (UUID {recorded_uuid} -> "
                f"{live_uuid}): swapped hardware"
            )
            return
        observed = self._observed(system)
        wanted = self.boot_target(news)
        reported = observed["boot_reported"]["target"]
        if reported != wanted:
            changes.append("boot")
            reasons.append(f"boot source drifted: BMC reports {reported!r}, plan wants {wanted!r}")
        if observed["power_state"] not in POWER_ON_STATES:
            changes.append("power_state")
            reasons.append(f"power state drifted: BMC reports {observed['power_state']!r}")

    def update(self, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
        client = self.client(news)
        system = client.find_system(news.get("system"))
        recorded = self._checked_identity(client, system, news)
        old_uuid = str((olds.get("identity") or {}).get("uuid", ""))
        if old_uuid and recorded["identity"]["uuid"] != old_uuid.lower():
            raise ProvisionError(
                f"the BMC of {news['host']} reports a different system than recorded",
                code="provision-system-swapped",
                hint="this needs a replace; run the preview again",
            )
        system = self._apply(client, system, news)
        return {**news, **recorded, **self._observed(system)}

    def read(self, outs: dict[str, Any]) -> dict[str, Any]:
        client = self.client(outs)
        uuid = str((outs.get("identity") or {}).get("uuid", ""))
        system = client.system_by_uuid(uuid) if uuid else client.find_system(outs.get("system"))
        if system is None:
            return {**outs, "bmc_state": "system-missing", "power_state": None}
        return {**outs, **self._observed(system)}

    def delete(self, outs: dict[str, Any]) -> None:
        client = self.client(outs)
        uuid = str((outs.get("identity") or {}).get("uuid", ""))
        system = client.system_by_uuid(uuid) if uuid else None
        if system is None:
            log.warning(
                "%s: the recorded system %s is no longer behind its BMC; nothing to power off",
                outs.get("host"),
                uuid,
            )
            return
        if system.get("PowerState") not in POWER_OFF_STATES:
            client.reset(system, "ForceOff")
            system = client.wait_power(
                system["@odata.id"],
                POWER_OFF_STATES,
                timeout=self._timeout(outs),
                interval=self.poll_interval,
            )
        if self.boot_target(outs) == "Cd":
            slot = client.virtual_media_slot(system)
            if slot is not None and slot.get("Inserted"):
                client.eject_media(slot)
        client.clear_boot_override(system)


def _problem(host: str, message: str) -> Problem:
    return Problem("inventory-mismatch", message, Location(path=f"hosts.{host}"))
