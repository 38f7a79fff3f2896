"""A small Redfish client: what provisioning needs and nothing more.

Plain HTTP(S) with basic authentication (every Redfish service supports it; DSP0266 section 13.3),
JSON in and out, clear errors for the three things that go wrong in a datacenter: the BMC does not
answer, it refuses the credentials, or it answers something other than Redfish.

Credentials are held by the client only for the duration of a call chain; they never appear in an
error, a log line or a repr.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from aifactory.errors import ProvisionError

log = logging.getLogger(__name__)

POWER_ON_STATES = ("On",)
POWER_OFF_STATES = ("Off",)


@dataclass(frozen=True)
class BmcCredentials:
    """A BMC user and password. Parsed from the resolved secret: `USER:PASSWORD` or JSON
    `{"username": ..., "password": ...}`."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, value: str, *, reference: str) -> BmcCredentials:
        text = value.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
                return cls(str(data["username"]), str(data["password"]))
            except (ValueError, KeyError, TypeError):
                pass
        elif ":" in text:
            user, password = text.split(":", 1)
            if user and password:
                return cls(user, password)
        raise ProvisionError(
            f"the value of {reference} is not a BMC credential",
            code="bmc-credential-format",
            hint='store it as USER:PASSWORD or as JSON {"username": ..., "password": ...}',
        )

    def header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"


@dataclass(frozen=True)
class TlsSettings:
    """How to check the BMC's certificate: verify against the system store or a CA bundle, or not
    at all (only for a lab emulator on plain HTTP or a BMC with its factory self-signed cert, and
    the choice is recorded)."""

    verify: bool = True
    ca_bundle: str | None = None

    def context(self) -> ssl.SSLContext:
        if not self.verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.ca_bundle)


class RedfishClient:
    """One BMC's Redfish service, e.g. `https://10.9.0.3` (the service root is `/redfish/v1/`)."""

    def __init__(
        self,
        endpoint: str,
        credentials: BmcCredentials,
        *,
        host: str,
        credentials_reference: str = "the BMC credential",
        tls: TlsSettings | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.host = host
        self._credentials = credentials
        self._reference = credentials_reference
        self._tls = tls or TlsSettings()
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"RedfishClient({self.endpoint!r}, host={self.host!r})"

    # -- transport -------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = path if path.startswith("http") else self.endpoint + path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", self._credentials.header())
        request.add_header("Accept", "application/json")
        request.add_header("OData-Version", "4.0")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        context = self._tls.context() if url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=context) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(method, url, exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(url, exc.reason) from None
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(url, exc) from None
        if not raw:
            return {}
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ProvisionError(
                f"the BMC of {self.host} answered {method} {url} with something that is not JSON",
                code="bmc-not-redfish",
                hint="check that the endpoint is the BMC's Redfish service (https://<bmc address>)",
            ) from None
        return parsed if isinstance(parsed, dict) else {"value": parsed}

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def _http_error(self, method: str, url: str, exc: urllib.error.HTTPError) -> ProvisionError:
        if exc.code in (401, 403):
            return ProvisionError(
                f"the BMC of {self.host} at {self.endpoint} refused the credential {self._reference} "
                f"(HTTP {exc.code})",
                code="bmc-auth",
                hint=f"check the user and password, then update them: aifactory secret set SITE "
                f"{self._reference}",
            )
        detail = _redfish_message(exc)
        return ProvisionError(
            f"the BMC of {self.host} rejected {method} {url}: HTTP {exc.code}{detail}",
            code="bmc-request-failed",
            hint="the BMC may not support this operation; run with --debug for the exchange",
        )

    def _unreachable(self, url: str, reason: object) -> ProvisionError:
        text = getattr(reason, "strerror", None) or str(reason)
        hint = (
            "check the BMC address and port in the plan, that the BMC is powered and cabled, and "
            "that this machine has a route to the BMC fabric"
        )
        if isinstance(reason, ssl.SSLError):
            hint = "the BMC's TLS certificate does not verify: give its CA with --bmc-ca FILE"
        return ProvisionError(
            f"cannot reach the BMC of {self.host} at {url}: {text}",
            code="bmc-unreachable",
            hint=hint,
        )

    # -- Redfish operations ------------------------------------------------------------------------

    def systems(self) -> list[str]:
        """The @odata.id of every ComputerSystem the BMC manages."""
        root = self.get("/redfish/v1/")
        collection = (root.get("Systems") or {}).get("@odata.id")
        if not collection:
            raise ProvisionError(
                f"the BMC of {self.host} at {self.endpoint} lists no Systems collection",
                code="bmc-not-redfish",
                hint="check that the endpoint is the BMC's Redfish service",
            )
        return [m["@odata.id"] for m in self.get(collection).get("Members", []) if "@odata.id" in m]

    def find_system(self, selector: str | None = None) -> dict[str, Any]:
        """The one system this BMC manages, or the one whose Id, UUID or Name is `selector`."""
        systems = [self.get(path) for path in self.systems()]
        if selector:
            wanted = selector.lower()
            matches = [
                s
                for s in systems
                if wanted
                in {
                    str(s.get("Id", "")).lower(),
                    str(s.get("UUID", "")).lower(),
                    str(s.get("Name", "")).lower(),
                }
            ]
        else:
            matches = systems
        if len(matches) == 1:
            return matches[0]
        names = ", ".join(str(s.get("Id")) for s in systems) or "none"
        if not matches:
            raise ProvisionError(
                f"the BMC of {self.host} has no system {selector!r} (it has: {names})",
                code="bmc-system-not-found",
                hint="the hardware may have been replaced; check the system selector for this host",
            )
        raise ProvisionError(
            f"the BMC of {self.host} manages {len(matches)} systems ({names}); say which one",
            code="bmc-system-ambiguous",
            hint="set the host's system selector (Redfish Id or UUID) in the provisioning settings",
        )

    def system_by_uuid(self, uuid: str) -> dict[str, Any] | None:
        for path in self.systems():
            system = self.get(path)
            if str(system.get("UUID", "")).lower() == uuid.lower():
                return system
        return None

    def members(self, system: dict[str, Any], link: str) -> list[dict[str, Any]]:
        """Expand a collection linked from the system (Processors, EthernetInterfaces, ...)."""
        collection = (system.get(link) or {}).get("@odata.id")
        if not collection:
            return []
        return [self.get(m["@odata.id"]) for m in self.get(collection).get("Members", []) if "@odata.id" in m]

    def reset(self, system: dict[str, Any], reset_type: str) -> None:
        action = ((system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}).get(
            "target"
        ) or f"{system['@odata.id']}/Actions/ComputerSystem.Reset"
        self.request("POST", action, {"ResetType": reset_type})

    def set_boot_override(self, system: dict[str, Any], *, target: str, enabled: str = "Once") -> None:
        self.request(
            "PATCH",
            system["@odata.id"],
            {"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}},
        )

    def wait_power(
        self, system_path: str, wanted: tuple[str, ...], *, timeout: float, interval: float = 1.0
    ) -> dict[str, Any]:
        """Poll until PowerState is one of `wanted`; BMCs apply power changes asynchronously."""
        deadline = time.monotonic() + timeout
        while True:
            system = self.get(system_path)
            if system.get("PowerState") in wanted:
                return system
            if time.monotonic() >= deadline:
                raise ProvisionError(
                    f"the system of {self.host} did not reach power state {'/'.join(wanted)} within "
                    f"{timeout:.0f} s (it reports {system.get('PowerState')!r})",
                    code="bmc-power-timeout",
                    hint="look at the BMC's event log; raise --power-timeout for slow hardware",
                )
            time.sleep(interval)

    def virtual_media_slot(self, system: dict[str, Any]) -> dict[str, Any] | None:
        """The first CD/DVD virtual media slot, under the system or its manager."""
        places = [system]
        for manager in (system.get("Links") or {}).get("ManagedBy", []):
            if "@odata.id" in manager:
                places.append(self.get(manager["@odata.id"]))
        for place in places:
            for slot in self.members(place, "VirtualMedia"):
                if any(t in ("CD", "DVD") for t in slot.get("MediaTypes", [])):
                    return slot
        return None

    def insert_media(self, slot: dict[str, Any], image: str) -> None:
        target = ((slot.get("Actions") or {}).get("#VirtualMedia.InsertMedia") or {}).get(
            "target"
        ) or f"{slot['@odata.id']}/Actions/VirtualMedia.InsertMedia"
        self.request("POST", target, {"Image": image, "Inserted": True, "WriteProtected": True})

    def eject_media(self, slot: dict[str, Any]) -> None:
        target = ((slot.get("Actions") or {}).get("#VirtualMedia.EjectMedia") or {}).get(
            "target"
        ) or f"{slot['@odata.id']}/Actions/VirtualMedia.EjectMedia"
        self.request("POST", target, {})


def _redfish_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        message = (body.get("error") or {}).get("message")
    except (ValueError, AttributeError, OSError):
        message = None
    return f" ({message})" if message else ""
