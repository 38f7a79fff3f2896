"""The site spec, version 1 (docs/site-spec.md; the contract is site-v1).

Types, required fields and allowed values live here; cross-references, places and address space are
checked in aifactory.spec.validate. The committed JSON Schema (docs/site-v1.schema.json) is
generated from these models by `python -m aifactory.spec.schema`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = "aifactory.site/v1"
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,19}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
PLACE_PATTERN = r"^[A-Z][A-Z0-9-]{1,19}$"
REGION_PATTERN = r"^[A-Z]{2}-[A-Z0-9]{1,3}$"
SECRET_PATTERN = r"^secret://[A-Za-z0-9_.{}/-]+$"
RESOURCE_PATTERN = r"^(dataset|model)/[a-z][a-z0-9-]{0,19}$"

Name = Annotated[
    str, StringConstraints(pattern=NAME_PATTERN), Field(description="a name: ^[a-z][a-z0-9-]{0,19}$")
]
Country = Annotated[
    str, StringConstraints(pattern=COUNTRY_PATTERN), Field(description="ISO 3166-1 alpha-2 country code")
]
Place = Annotated[
    str,
    StringConstraints(pattern=PLACE_PATTERN),
    Field(description="a country code or the name of a bloc from the places data"),
]
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN), Field(description="ISO 3166-2 code")]
SecretRef = Annotated[
    str,
    StringConstraints(pattern=SECRET_PATTERN),
    Field(description="secret://<path>; {host} is replaced by each host's name"),
]
Classification = Literal["public", "internal", "confidential", "secret", "top-secret"]
CLASSIFICATIONS: tuple[str, ...] = ("public", "internal", "confidential", "secret", "top-secret")
DATASET_ACTIONS = ("read", "train")
MODEL_ACTIONS = ("infer", "read", "export")


class _Model(BaseModel):
    # Strict: "1" is not 1 and "yes" is not true; `x-` keys are dropped by the loader.
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, json_schema_extra={"patternProperties": {"^x-": {}}}
    )


class Site(_Model):
    """The site as a whole: its name, jurisdiction and whether it is air-gapped."""

    name: Name
    jurisdiction: Place = Field(description="everything must stay inside this place")
    air_gapped: bool = Field(True, description="no egress at all is allowed")
    description: str | None = None


class Datacenter(_Model):
    """A building that holds pools and storage; its country is where they are."""

    name: Name
    country: Country
    region: Region | None = None


class Fabric(_Model):
    """A network. Hosts get one stable address per rail; the first usable address is the gateway."""

    name: Name
    kind: Literal["ethernet", "infiniband", "roce"]
    purpose: Literal["management", "compute", "storage", "bmc"]
    cidr: str = Field(description="IPv4 or IPv6 network, e.g. 10.20.0.0/16")
    rails: int = Field(1, ge=1, le=16, description="one address per rail per host")
    speed_gbps: float | None = Field(None, gt=0)
    mtu: int | None = Field(None, ge=576, le=9216, description="optional addition: link MTU")
    vlan: int | None = Field(None, ge=1, le=4094, description="optional addition: VLAN id (ethernet/roce)")


class Platform(_Model):
    """What the hosts run: the bundle carries packages and wheels for it."""

    os: Literal["debian-12"] = "debian-12"
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    python: Literal["3.11"] = "3.11"


class GpuSpec(_Model):
    """The GPUs of each host of a pool."""

    model: str = Field(min_length=1)
    count: int = Field(ge=1, le=64)


class Hardware(_Model):
    """What each host of a pool has; `gpu` is required for role gpu."""

    gpu: GpuSpec | None = None
    cpus: int | None = Field(None, ge=1)
    memory_gib: int | None = Field(None, ge=1)


class Bmc(_Model):
    """How the provisioner reaches each host's baseboard management controller."""

    protocol: Literal["redfish"] = "redfish"
    fabric: Name
    credentials: SecretRef


class NodePool(_Model):
    """A group of identical hosts, named <site>-<pool>-<nnn>."""

    name: Name
    role: Literal["gpu", "cpu", "storage", "login", "control"]
    count: int = Field(ge=1, le=100_000)
    datacenter: Name
    platform: Platform = Platform()
    hardware: Hardware = Hardware()
    fabrics: list[Name] = Field(min_length=1)
    bmc: Bmc | None = None


class Storage(_Model):
    """A storage system; `mount_path` is required except for s3, where it is not allowed."""

    name: Name
    kind: Literal["lustre", "ceph", "nfs", "weka", "s3"]
    datacenter: Name
    capacity_tib: float = Field(gt=0)
    encrypted_at_rest: bool = False
    endpoint: str | None = None
    mount_path: str | None = None
    mounted_by: list[Name] | None = Field(None, description="default: every gpu and cpu pool")
    fabric: Name | None = None
    replicas: list[Name] = []


class Tenant(_Model):
    """An organisation that runs jobs, with a clearance on the classification scale."""

    name: Name
    clearance: Classification
    pools: list[Name] | None = Field(None, description="default: all pools")


class Dataset(_Model):
    """Data owned by a tenant, classified, kept inside its residency."""

    name: Name
    owner: Name
    classification: Classification
    residency: Place
    storage: Name
    path: str


class AiModel(_Model):
    """A model: its weights live at /models/<name> on its storage."""

    name: Name
    owner: Name
    trained_on: list[Name] = []
    classification: Classification
    storage: Name
    serve_on: list[Name] = []


class Grant(_Model):
    """Access for a tenant other than the owner; `to` is required exactly on export grants."""

    tenant: Name
    resource: Annotated[str, StringConstraints(pattern=RESOURCE_PATTERN)]
    actions: list[Literal["read", "train", "infer", "export"]] = Field(min_length=1)
    approved_by: str | None = None
    expires: Annotated[dt.date, Field(strict=False)] | None = None
    to: Place | None = Field(None, description="export grants only: where the model goes")

    @property
    def resource_kind(self) -> str:
        return self.resource.split("/", 1)[0]

    @property
    def resource_name(self) -> str:
        return self.resource.split("/", 1)[1]


class EgressRule(_Model):
    """One allowed destination outside the site (never on an air-gapped site)."""

    name: Name
    endpoint: str = Field(min_length=1)
    country: Country


class Egress(_Model):
    """Traffic allowed out of the site."""

    allow: list[EgressRule] = []


class SiteSpec(_Model):
    """One sovereign AI factory."""

    schema_: Literal["aifactory.site/v1"] = Field(alias="schema")
    site: Site
    datacenters: list[Datacenter] = Field(min_length=1)
    fabrics: list[Fabric] = Field(min_length=1)
    node_pools: list[NodePool] = Field(min_length=1)
    storage: list[Storage] = []
    tenants: list[Tenant] = []
    datasets: list[Dataset] = []
    models: list[AiModel] = []
    access: list[Grant] = []
    egress: Egress = Egress()

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
        title="aifactory site spec v1",
        json_schema_extra={"patternProperties": {"^x-": {}}},
    )
