"""The project's Redfish client: sushy (OpenStack Ironic's Redfish library) behind the small interface
that provisioning (host.py, identity.py) and the power collector (telemetry/power.py) use.

Why sushy, and what it is trusted with: docs/provision.md, "The Redfish client". In short:

- reads (collections, systems, processors, NICs, chassis, power) go through sushy's `Connector` and
  come back as the resources' JSON, plain dicts, which is what the callers read;
- actions go through sushy's typed resources, which know what BMCs get wrong: the reset checks the
  ResetType values the system allows, the boot override PATCH carries `If-Match` with the system's
  ETag (and goes to the `@Redfish.Settings` object where the BMC has one), virtual media falls back
  to PATCH or adds `TransferProtocolType` where a BMC wants it;
- the resources are built straight on the connector, never through sushy's service root object: that
  object loads message registries and fetches a registry's `PublicationUri` from the Internet, which
  an air-gapped site must never try (and it would cost a request more);
- basic authentication on every request, as before (every Redfish service supports it, DSP0266
  section 13.3): a provider call is short, and a session would be one more thing on the BMC to create
  and delete (BMCs cap them; a call killed halfway would leak one);
- TLS is checked against the CA file given (the site CA: `--bmc-ca`, the monitoring role's
  `monitoring_bmc_ca_bundle`), else against the system's trust store (OpenSSL's default paths, where
  a site installs its CA; requests alone would take certifi's public CAs instead).

Every failure becomes one ProvisionError that names the host, the endpoint and what was asked; the
credential is never part of an error, a log line or a repr (sushy logs requests with their headers
sanitized, and the Authorization header is added below what it logs).

Nothing here is ever pickled: Pulumi pickles the dynamic provider into the stack's state, so the
client is built inside each provider call from plain properties (BareMetalHostLogic.client) and
dropped after it; pickling one is refused outright (`__reduce_ex__`).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from sushy import exceptions as sushy_errors
from sushy.connector import Connector
from sushy.resources.constants import ResetType
from sushy.resources.manager.virtual_media import VirtualMedia
from sushy.resources.system.constants import BootSource, BootSourceOverrideEnabled
from sushy.resources.system.system import System

from aifactory.errors import ProvisionError
from aifactory.netns import NetworkNamespace

log = logging.getLogger(__name__)

POWER_ON_STATES = ("On",)
POWER_OFF_STATES = ("Off",)
DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3  # provisioning rides out a BMC's brief hiccup; the power collector tries once
RETRY_DELAY = 2.0
CLEARED_BOOT = {"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"}

_Result = TypeVar("_Result")


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


@dataclass(frozen=True)
class TlsSettings:
    """How to check the BMC's certificate: against a CA bundle (the site CA), else the system's trust
    store; or not at all (`--bmc-insecure`, recorded in the stack's inputs: only for a BMC still on
    its factory self-signed certificate)."""

    verify: bool = True
    ca_bundle: str | None = None

    def described(self) -> str:
        if not self.verify:
            return "no verification"
        return f"the CA file {self.ca_bundle}" if self.ca_bundle else "the system's trust store"

    def verify_argument(self, *, host: str) -> bool | str:
        """What sushy's Connector (requests) takes as `verify`: False, or the file or folder of the CAs
        to trust. A CA file that is not there fails here, named, before anything is sent."""
        if not self.verify:
            return False
        if self.ca_bundle:
            if not Path(self.ca_bundle).exists():
                raise ProvisionError(
                    f"the CA file {self.ca_bundle} for the BMC of {host} does not exist",
                    code="bmc-ca-missing",
                    hint="give the site CA's certificate (PEM) with --bmc-ca FILE",
                )
            return self.ca_bundle
        system = ssl.get_default_verify_paths()  # None where the file or folder is not there
        return system.cafile or system.capath or True


class RedfishClient:
    """One BMC's Redfish service, e.g. `https://10.9.0.3` (the service root is `/redfish/v1/`).

    `timeout`: seconds to connect and, separately, to wait for an answer. `attempts`: how often a
    request that cannot connect or gets no answer is sent (sushy's `server_side_retries`, which also
    retries a GET the BMC answered with a 5xx that many times), `RETRY_DELAY` apart. `network`: the
    network namespace the BMC fabric is reached from, when not this process's (aifactory.netns)."""

    def __init__(
        self,
        endpoint: str,
        credentials: BmcCredentials,
        *,
        host: str,
        credentials_reference: str = "the BMC credential",
        tls: TlsSettings | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        network: NetworkNamespace | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._network = network
        self.host = host
        self._credentials = credentials
        self._reference = credentials_reference
        self._tls = tls or TlsSettings()
        self._timeout = timeout
        self._attempts = max(1, attempts)  # sushy reads 0 as "its own default" (3)
        self._connection: Connector | None = None

    def __repr__(self) -> str:
        return f"RedfishClient({self.endpoint!r}, host={self.host!r})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a RedfishClient holds a BMC credential and a live connection and is never pickled: build "
            "it inside the provider call from the resource's properties"
        )

    # -- transport -------------------------------------------------------------------------------

    def _connector(self) -> Connector:
        if self._connection is None:
            connector = Connector(
                self.endpoint,
                verify=self._tls.verify_argument(host=self.host),
                server_side_retries=self._attempts,
                server_side_retries_delay=RETRY_DELAY,
                default_request_timeout=self._timeout,
                connect_timeout=self._timeout,
                response_callback=self._screen,
            )
            connector.set_http_basic_auth(self._credentials.username, self._credentials.password)
            self._connection = connector
        return self._connection

    def _url(self, path: str) -> str:
        """`path` on this BMC. A link to anywhere else is refused: the BMC's credential goes with
        every request."""
        url = urljoin(self.endpoint + "/", path)
        if urlsplit(url)[:2] != urlsplit(self.endpoint)[:2]:
            raise ProvisionError(
                f"the BMC of {self.host} at {self.endpoint} links to {url}, outside itself; not followed",
                code="bmc-not-redfish",
                hint="a Redfish link (@odata.id) is a path on the same service; check the BMC's firmware",
            )
        return url

    def _call(self, what: str, action: Callable[[], _Result]) -> _Result:
        """`action` (sushy asking the BMC `what`), its failures as the project's one error each. Every
        exchange with the BMC goes through here: from `network` when one was given (the control
        host's, where this process is not on it), so that no request leaves by this machine's routes."""
        try:
            return action() if self._network is None else self._network.run(action)
        except sushy_errors.HTTPError as exc:
            raise self._rejected(exc.status_code, what, exc.detail) from None
        except sushy_errors.ConnectionError as exc:
            raise self._unreachable(exc) from None
        except sushy_errors.SushyError as exc:  # what sushy checks before sending: allowed values, actions
            raise ProvisionError(
                f"the BMC of {self.host} cannot do {what}: {exc.message}",
                code="bmc-unsupported",
                hint="the BMC does not offer this; check its Redfish service or choose another boot source",
            ) from None
        except json.JSONDecodeError:  # sushy's readers parse with requests' .json(), which raises it
            raise self._not_redfish(what) from None

    def _rejected(self, status: int, what: str, detail: str | None) -> ProvisionError:
        if status in (401, 403):
            return ProvisionError(
                f"the BMC of {self.host} at {self.endpoint} refused the credential {self._reference} "
                f"(HTTP {status})",
                code="bmc-auth",
                hint=f"check the user and password, then update them: aifactory secret set SITE "
                f"{self._reference}",
            )
        return ProvisionError(
            f"the BMC of {self.host} rejected {what}: HTTP {status}{f' ({detail})' if detail else ''}",
            code="bmc-request-failed",
            hint="the BMC may not support this operation; run with --debug for the exchange",
        )

    def _screen(self, response: Any) -> None:
        """sushy's Connector calls this with every answer before it reads the errors among them.
        sushy 5.14 reads an error answer as DSP0266 section 9.6 shapes it (`{"error": {...}}`) and
        fails with an AttributeError on any other JSON (`{"error": "unauthorised"}`, a list); such an
        answer becomes the project's error here, before sushy reads it. Redfish-shaped errors go on
        to sushy, whose handling of them (retries, ETag and virtual media fallbacks) is the point."""
        if response.status_code < 400 or _sushy_reads_error(response.content):
            return
        raise self._rejected(response.status_code, f"{response.request.method} {response.url}", None)

    def _unreachable(self, exc: sushy_errors.ConnectionError) -> ProvisionError:
        """Why the BMC could not be asked, from the innermost error under sushy's (which it raises
        while handling requests' error, which wraps urllib3's, which wraps the socket's)."""
        chain = _causes(exc)
        if any(isinstance(cause, ssl.SSLError) for cause in chain):
            reason = next(c for c in chain if isinstance(c, ssl.SSLError))
            return ProvisionError(
                f"the TLS certificate of the BMC of {self.host} at {self.endpoint} does not verify "
                f"against {self._tls.described()}: {getattr(reason, 'verify_message', None) or reason}",
                code="bmc-tls",
                hint="give the CA that signed the BMC's certificate (the site CA) with --bmc-ca FILE",
            )
        if any(isinstance(cause, TimeoutError) for cause in chain):
            return ProvisionError(
                f"the BMC of {self.host} at {self.endpoint} did not answer within {self._timeout:g} s",
                code="bmc-unreachable",
                hint="check that the BMC is powered and not overloaded; a busy BMC may need a longer timeout",
            )
        innermost = chain[-1]
        text = getattr(innermost, "strerror", None) or str(innermost)
        return ProvisionError(
            f"cannot reach the BMC of {self.host} at {self.endpoint}: {text}",
            code="bmc-unreachable",
            hint="check the BMC address and port in the plan, that the BMC is powered and cabled, and "
            "that this machine has a route to the BMC fabric",
        )

    def _not_redfish(self, what: str) -> ProvisionError:
        return ProvisionError(
            f"the BMC of {self.host} answered {what} with something that is not JSON",
            code="bmc-not-redfish",
            hint="check that the endpoint is the BMC's Redfish service (https://<bmc address>)",
        )

    def get(self, path: str) -> dict[str, Any]:
        """The resource at `path` (on this BMC) as its JSON document."""
        url = self._url(path)
        response = self._call(f"GET {url}", lambda: self._connector().get(url))
        if not response.content:
            return {}
        try:
            parsed = json.loads(response.content)
        except ValueError:
            raise self._not_redfish(f"GET {url}") from None
        return parsed if isinstance(parsed, dict) else {"value": parsed}

    def _system(self, path: str) -> System:
        """sushy's typed ComputerSystem: it reads the system afresh (and its ETag before a PATCH)."""
        url = self._url(path)
        return self._call(f"GET {url}", lambda: System(self._connector(), url))

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
        """ComputerSystem.Reset, refused before sending when the system does not list `reset_type`
        among its allowed values."""
        path, value = system["@odata.id"], ResetType(reset_type)
        typed = self._system(path)
        self._call(f"the reset {reset_type} of {path}", lambda: typed.reset_system(value))

    def set_boot_override(self, system: dict[str, Any], *, target: str, enabled: str = "Once") -> None:
        """The boot source override, checked against the targets the system allows."""
        path, source, how_long = system["@odata.id"], BootSource(target), BootSourceOverrideEnabled(enabled)
        typed = self._system(path)
        self._call(
            f"the boot override {target} of {path}",
            lambda: typed.set_system_boot_options(target=source, enabled=how_long),
        )

    def clear_boot_override(self, system: dict[str, Any]) -> None:
        """Target `None`, override `Disabled`, with `If-Match` as sushy sends it. Not through
        set_system_boot_options: it accepts only the targets a BMC lists as allowed, and BMCs (the
        emulator among them) leave `None`, the schema's "no override", off that list."""
        url = self._url(system["@odata.id"])
        what = f"clearing the boot override of {url}"
        connector = self._connector()
        etag = self._call(what, lambda: connector.get(url).headers.get("ETag"))
        self._call(what, lambda: connector.patch(url, data={"Boot": CLEARED_BOOT}, etag=etag))

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

    def _virtual_media(self, slot: dict[str, Any]) -> VirtualMedia:
        url = self._url(slot["@odata.id"])
        return self._call(f"GET {url}", lambda: VirtualMedia(self._connector(), url))

    def insert_media(self, slot: dict[str, Any], image: str) -> None:
        """Insert `image`, write-protected (the InsertMedia action, or PATCH where that is the way)."""
        typed = self._virtual_media(slot)
        self._call(
            f"inserting {image} into {slot['@odata.id']}",
            lambda: typed.insert_media(image, inserted=True, write_protected=True),
        )

    def eject_media(self, slot: dict[str, Any]) -> None:
        typed = self._virtual_media(slot)
        self._call(f"ejecting the media of {slot['@odata.id']}", typed.eject_media)


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from or while handling, outermost first."""
    chain = [exc]
    while (following := chain[-1].__cause__ or chain[-1].__context__) is not None and following not in chain:
        chain.append(following)
    return chain


def _sushy_reads_error(content: bytes) -> bool:
    """Whether sushy 5.14's HTTPError can read this error answer: no JSON at all (it says "unknown
    error"), or an object whose `error` is an object with, if any, a list of objects or one object as
    its `@Message.ExtendedInfo`."""
    if not content:
        return True
    try:
        body = json.loads(content)
    except ValueError:
        return True
    error = body.get("error", {}) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return False
    info = error.get("@Message.ExtendedInfo")
    return (
        not info
        or isinstance(info, dict)
        or (isinstance(info, list) and all(isinstance(m, dict) for m in info))
    )
