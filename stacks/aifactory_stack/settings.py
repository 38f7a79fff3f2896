"""The stack's settings as one frozen value: the plan, where artifacts go, keys, facts, BMC access.

`read_settings` is what config.py calls; tests build settings with it directly (no Pulumi config).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

from aifactory.errors import PlanFormatError, ProvisionError
from aifactory.plan.model import Host, SitePlan
from aifactory.provision.partitions import assign_pkeys
from aifactory.secrets import SecretResolver


@dataclass(frozen=True)
class BmcSettings:
    scheme: str = "https"
    port: int | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None
    power_timeout: float = 120.0
    endpoints: dict[str, str] = field(default_factory=dict)

    def endpoint(self, host: Host) -> str:
        if host.name in self.endpoints:
            return self.endpoints[host.name]
        if host.bmc is None:
            raise ProvisionError(f"host {host.name} has no BMC in the plan", code="provision-input")
        address = host.bmc.address
        if ipaddress.ip_address(address).version == 6:
            address = f"[{address}]"
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{address}{port}"

    def tls(self) -> dict[str, Any]:
        return {"verify": self.verify_tls, "ca_bundle": self.ca_bundle}


@dataclass(frozen=True)
class BootSettings:
    source: str = "pxe"
    image: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "image": self.image}


@dataclass(frozen=True)
class StackSettings:
    plan: SitePlan
    state_dir: Path
    pkeys: dict[str, int]
    facts: dict[str, Any]
    assets: dict[str, dict[str, Any]]
    bmc: BmcSettings
    boot: BootSettings
    credentials: dict[str, pulumi.Output[str]]

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "provision" / "artifacts"

    @property
    def site(self) -> str:
        return self.plan.site.name


def _read_document(path: str | None, what: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProvisionError(f"cannot read the {what} {path}: {exc}", code="provision-input") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"the {what} {path} is not a mapping", code="provision-input")
    return data


def resolve_credentials(plan: SitePlan, resolver: SecretResolver) -> dict[str, pulumi.Output[str]]:
    """Each BMC's credential, resolved now and held only as a Pulumi secret."""
    return {
        h.name: pulumi.Output.secret(resolver.resolve(h.bmc.credentials, host=h.name).value)
        for h in plan.hosts
        if h.bmc is not None
    }


def read_settings(
    *,
    plan_file: Path,
    state_dir: Path,
    pkeys: dict[str, str] | None = None,
    facts_file: str | None = None,
    assets_file: str | None = None,
    bmc: dict[str, Any] | None = None,
    boot: dict[str, Any] | None = None,
    resolver: SecretResolver | None = None,
) -> StackSettings:
    try:
        plan = SitePlan.load(plan_file)
    except PlanFormatError as exc:
        raise ProvisionError(
            exc.message, code="provision-input", location=exc.location, hint=exc.hint
        ) from None
    held = {t: int(str(k), 16) for t, k in (pkeys or {}).items()}
    resolver = resolver or SecretResolver(store_path=state_dir / "secrets.enc")
    return StackSettings(
        plan=plan,
        state_dir=state_dir,
        pkeys=assign_pkeys([t.name for t in plan.tenants], held),
        facts=_read_document(facts_file, "discovered facts file"),
        assets=_read_document(assets_file, "asset register").get("hosts", {}),
        bmc=BmcSettings(**(bmc or {})),
        boot=BootSettings(**(boot or {})),
        credentials=resolve_credentials(plan, resolver),
    )
