"""The site spec, version 1 (docs/site-spec.md; the contract is site-v1).

Types, required fields and allowed values live here; cross-references, places and address space are
checked in aifactory.spec.validate. The committed JSON Schema (docs/site-v1.schema.json) is
generated from these models by `python -m aifactory.spec.schema`.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from aifactory.spec import grammar as g

SCHEMA_VERSION = "aifactory.site/v1"
NAME_PATTERN = g.NAME.pattern
COUNTRY_PATTERN = g.COUNTRY.pattern
PLACE_PATTERN = g.PLACE.pattern
REGION_PATTERN = g.REGION.pattern
SECRET_PATTERN = g.SECRET.pattern
RESOURCE_PATTERN = g.RESOURCE.pattern


def _rule(grammar: g.Grammar) -> StringConstraints:
    """A grammar's pattern and length bound, for the model and the JSON Schema alike."""
    return StringConstraints(pattern=grammar.pattern, max_length=grammar.max_length)


Name = Annotated[str, _rule(g.NAME), Field(description="a name: ^[a-z][a-z0-9-]{0,19}$")]
Country = Annotated[str, _rule(g.COUNTRY), Field(description="ISO 3166-1 alpha-2 country code")]
Place = Annotated[
    str, _rule(g.PLACE), Field(description="a country code or the name of a bloc from the places data")
]
Region = Annotated[str, _rule(g.REGION), Field(description="ISO 3166-2 code")]
SecretRef = Annotated[
    str, _rule(g.SECRET), Field(description="secret://<path>; {host} is replaced by each host's name")
]
ResourceRef = Annotated[str, _rule(g.RESOURCE), Field(description=g.RESOURCE.text)]
AbsolutePath = Annotated[
    str,
    _rule(g.PATH),
    Field(description="an absolute path: ^/[A-Za-z0-9._/-]+$ without '//', '..' or a trailing '/'"),
]
Cidr = Annotated[str, _rule(g.CIDR), Field(description="IPv4 or IPv6 network, e.g. 10.20.0.0/16")]
HardwareModel = Annotated[str, _rule(g.HARDWARE_MODEL), Field(description=g.HARDWARE_MODEL.text)]
Email = Annotated[str, _rule(g.EMAIL), Field(description=g.EMAIL.text)]
HealthCheck = Annotated[str, _rule(g.HEALTH_CHECK), Field(description=g.HEALTH_CHECK.text)]
Currency = Annotated[str, _rule(g.CURRENCY), Field(description=g.CURRENCY.text)]
MetricName = Annotated[str, _rule(g.METRIC), Field(description=g.METRIC.text)]
Digest = Annotated[str, _rule(g.DIGEST), Field(description=g.DIGEST.text)]
Schedule = Annotated[str, _rule(g.SCHEDULE), Field(description=g.SCHEDULE.text)]
StorageEndpoint = Annotated[
    str,
    _rule(g.STORAGE_ENDPOINT),
    Field(description="the server side, in the grammar of the storage kind (docs/site-spec.md)"),
]
EgressEndpoint = Annotated[str, _rule(g.EGRESS_ENDPOINT), Field(description=g.EGRESS_ENDPOINT.text)]
# Free text: description fields only.
Text = Annotated[str, _rule(g.TEXT), Field(description=g.TEXT.text)]
Classification = Literal["public", "internal", "confidential", "secret", "top-secret"]
CLASSIFICATIONS: tuple[str, ...] = ("public", "internal", "confidential", "secret", "top-secret")
DATASET_ACTIONS = ("read", "train", "contribute")  # contribute: feedback into it (docs/data.md)
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
    description: Text | None = None


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
    cidr: Cidr
    rails: int = Field(1, ge=1, le=16, description="one address per rail per host")
    speed_gbps: float | None = Field(None, gt=0)
    mtu: int | None = Field(None, ge=576, le=9216, description="optional addition: link MTU")
    vlan: int | None = Field(None, ge=1, le=4094, description="optional addition: VLAN id (ethernet/roce)")


# The profiles of the Debian 12 datastream the bundle carries (ssg-debian 0.1.76; a test keeps
# this list equal to `oscap info --profiles` of the content).
ScapProfile = Literal[
    "anssi_bp28_enhanced",
    "anssi_bp28_high",
    "anssi_bp28_intermediary",
    "anssi_bp28_minimal",
    "anssi_np_nt28_average",
    "anssi_np_nt28_high",
    "anssi_np_nt28_minimal",
    "anssi_np_nt28_restrictive",
    "standard",
]


class Platform(_Model):
    """What the hosts run: the bundle carries packages and wheels for it."""

    os: Literal["debian-12"] = "debian-12"
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    python: Literal["3.11"] = "3.11"
    scap_profile: ScapProfile = Field(
        "anssi_bp28_intermediary",
        description="the SCAP Security Guide profile every host is scanned against after deploy "
        "(Debian 12 datastream of ssg-debian 0.1.76; docs/audit.md)",
    )


class GpuSpec(_Model):
    """The GPUs of each host of a pool."""

    model: HardwareModel
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


ENDPOINT_KIND_ERROR = "endpoint_kind"


def _storage_schema_extra() -> dict[str, Any]:
    """The per-kind endpoint grammars as JSON Schema conditionals, beside the `x-` keys."""
    return {
        "patternProperties": {"^x-": {}},
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"properties": {"endpoint": {"pattern": pattern}}},
            }
            for kind, pattern in g.STORAGE_ENDPOINT_PATTERNS.items()
        ],
    }


class Storage(_Model):
    """A storage system; `mount_path` is required except for s3, where it is not allowed."""

    name: Name
    kind: Literal["lustre", "ceph", "nfs", "weka", "s3"]
    datacenter: Name
    capacity_tib: float = Field(gt=0)
    encrypted_at_rest: bool = False
    endpoint: StorageEndpoint | None = None
    mount_path: AbsolutePath | None = None
    mounted_by: list[Name] | None = Field(None, description="default: every gpu and cpu pool")
    fabric: Name | None = None
    replicas: list[Name] = []

    model_config = ConfigDict(json_schema_extra=_storage_schema_extra())

    @model_validator(mode="after")
    def _endpoint_fits_kind(self) -> Storage:
        """The endpoint's grammar depends on the kind (an NFS export is not a Lustre NID list)."""
        if self.endpoint is not None and not re.fullmatch(
            g.STORAGE_ENDPOINT_PATTERNS[self.kind], self.endpoint
        ):
            raise PydanticCustomError(
                ENDPOINT_KIND_ERROR,
                "a {kind} endpoint must be {expected}",
                {"kind": self.kind, "expected": g.STORAGE_ENDPOINT_TEXT[self.kind], "field": "endpoint"},
            )
        return self


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
    path: AbsolutePath


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
    resource: ResourceRef
    actions: list[Literal["read", "train", "contribute", "infer", "export"]] = Field(min_length=1)
    approved_by: Email | None = None
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
    endpoint: EgressEndpoint
    country: Country


class Egress(_Model):
    """Traffic allowed out of the site."""

    allow: list[EgressRule] = []


DEFAULT_LOG_RETENTION_DAYS = 183  # six months: the EU AI Act's minimum for deployers (Art. 26(6))


class Logs(_Model):
    """How long the site keeps its audit logs (the runtime's decision logs)."""

    retention_days: int = Field(
        DEFAULT_LOG_RETENTION_DAYS,
        ge=1,
        le=36500,
        description="days a decision log segment must be kept (default 183: six months, the EU AI Act's "
        "minimum for deployers, Art. 26(6)); a younger segment missing fails the audit (AU-11)",
    )


DEFAULT_METRICS_RETENTION_DAYS = 15  # Prometheus' own default
DEFAULT_SCRAPE_INTERVAL_SECONDS = 30
DEFAULT_EVALUATION_INTERVAL_SECONDS = 30  # the alert rules' unit tests run at this interval


class Monitoring(_Model):
    """Prometheus, Alertmanager and every host's node exporter (docs/telemetry.md)."""

    pool: Name | None = Field(
        None,
        description="the node pool whose first host runs Prometheus and Alertmanager "
        "(default: the control host)",
    )
    retention_days: int = Field(
        DEFAULT_METRICS_RETENTION_DAYS, ge=1, le=3650, description="days Prometheus keeps its samples"
    )
    scrape_interval_seconds: int = Field(
        DEFAULT_SCRAPE_INTERVAL_SECONDS, ge=1, le=600, description="seconds between two scrapes of a target"
    )
    evaluation_interval_seconds: int = Field(
        DEFAULT_EVALUATION_INTERVAL_SECONDS,
        ge=1,
        le=600,
        description="seconds between two evaluations of the alert rules (their `for:` durations are "
        "tested at the default)",
    )


class HealthThreshold(_Model):
    """A stricter threshold for one check on one pool's hosts: it may only tighten the threshold
    table's (policies/data/health_thresholds.json); a looser value is refused (docs/health.md)."""

    pool: Name
    check: HealthCheck
    value: float = Field(ge=0, le=1e9, description="in the check's unit, as the threshold table gives it")


DEFAULT_DRAIN_BUDGET_HOSTS = 1
DEFAULT_DRAIN_BUDGET_PERCENT = 25


class PoolDrainBudget(_Model):
    """One pool's own drain budget, in hosts, in place of the site-wide rule."""

    pool: Name
    hosts: int = Field(ge=0, le=100000, description="at most this many of the pool's hosts drained at once")


class DrainBudget(_Model):
    """How many compute hosts aifactory's health runs may hold drained at once: past it a fault shared
    by many hosts (site storage down) raises one incident instead of draining the site (docs/health.md)."""

    hosts: int = Field(
        DEFAULT_DRAIN_BUDGET_HOSTS, ge=0, le=100000, description="a pool may always lose this many hosts"
    )
    percent: int = Field(
        DEFAULT_DRAIN_BUDGET_PERCENT,
        ge=0,
        le=100,
        description="or this share of the pool's hosts (rounded down), whichever is larger",
    )
    site_hosts: int | None = Field(
        None,
        ge=0,
        le=100000,
        description="at most this many compute hosts of the site at once (default: the pools' rule "
        "applied to all the site's compute hosts)",
    )
    pools: list[PoolDrainBudget] = Field([], max_length=1000, description="pools with a budget of their own")


class Health(_Model):
    """The health gate's site settings (docs/health.md)."""

    thresholds: list[HealthThreshold] = Field([], max_length=1000)
    # Added after `health` first shipped: in the spec digest only when given (plan/build.py).
    drain_budget: DrainBudget | None = None


DEFAULT_FRONT_DOOR_PORT = 8443  # where clients reach the site's models
DEFAULT_FRONT_DOOR_BACKEND_PORT = 8601  # the nodes' listener for the front door (PROXY v2 only)


class FrontDoor(_Model):
    """HAProxy in front of the serving nodes, TCP mode (docs/runtime.md, "Front door")."""

    pool: Name | None = Field(
        None, description="the node pool whose first host runs the front door (default: the control host)"
    )
    port: int = Field(
        DEFAULT_FRONT_DOOR_PORT, ge=1, le=65535, description="the port clients reach the models on"
    )
    backend_port: int = Field(
        DEFAULT_FRONT_DOOR_BACKEND_PORT,
        ge=1,
        le=65535,
        description="each serving node's port for the front door: PROXY v2 headers from the front door only",
    )


class Contacts(_Model):
    """Who the site's hosts report to (docs/site-spec.md)."""

    security: Email = Field(
        description="the security operations address: every host's root mail alias (/etc/aliases) and "
        "the host scans' `var_postfix_root_mail_alias` (docs/audit.md)",
    )


DECIMAL_PLACES_ERROR = "decimal_places"


def decimal_of(value: float) -> Decimal:
    """The decimal a spec number was written as: YAML gives a float, whose shortest repr is the text
    written (for the at most 15 significant digits the economics bounds allow), so 0.1 stays 0.1."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _at_most_places(places: int) -> AfterValidator:
    """A number with at most `places` decimal places (cents, or a price's 6 places): beyond them a
    float would carry digits the writer never meant, and the plan stores the decimal exactly."""

    def check(value: float) -> float:
        exponent = decimal_of(value).normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > places:
            raise PydanticCustomError(
                DECIMAL_PLACES_ERROR, "must have at most {places} decimal places", {"places": places}
            )
        return value

    return AfterValidator(check)


# Money and ratios: a number (YAML int or float) with a bound on its decimal places.
Cents = Annotated[float, _at_most_places(2)]
Price = Annotated[float, _at_most_places(6)]
Ratio = Annotated[float, _at_most_places(3)]
MAX_PUE = 3  # above 3 a spec is wrong far more often than a building is that wasteful


class PoolEconomics(_Model):
    """What one pool's hosts cost to buy, and over how many years that is written off."""

    pool: Name
    capital_cost_per_host: Cents = Field(
        ge=0,
        le=1e9,
        allow_inf_nan=False,
        description="purchase cost of one host, in the currency (at most 2 decimals)",
    )
    amortisation_years: int = Field(ge=1, le=30, description="years the capital cost is spread over")


class Economics(_Model):
    """Prices that turn energy and hosts into a cost per decision (docs/economics.md)."""

    currency: Currency
    energy_price_per_kwh: Price = Field(
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="price of one kWh, in the currency (at most 6 decimals)",
    )
    pue: Ratio = Field(
        ge=1,
        le=MAX_PUE,
        allow_inf_nan=False,
        description="power usage effectiveness: the facility's energy over the IT energy, 1 to 3 "
        "(at most 3 decimals)",
    )
    fixed_cost_per_year: Cents = Field(
        ge=0,
        le=1e12,
        allow_inf_nan=False,
        description="the site's yearly operating cost besides energy and hosts (staff, rent, support), "
        "in the currency (at most 2 decimals)",
    )
    pools: list[PoolEconomics] = Field(
        [], max_length=1000, description="capital cost per pool; a pool not listed has none"
    )


MAX_DATASET_VERSION = 999_999_999  # the version numbers aifactory data reads (v1 to v999999999)
MAX_METRIC_VALUE = 1e15  # far beyond any metric; keeps the policy's arithmetic in exact-enough range


class LoopTrigger(_Model):
    """When a loop turn starts: enough new feedback, a schedule, or both (docs/loop.md)."""

    new_samples: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="a turn starts once this many feedback records came into the model's training "
        "data since its champion was trained",
    )
    schedule: Schedule | None = Field(
        None, description="when turns start (with new_samples: when to look whether enough came in)"
    )


class EvaluationSet(_Model):
    """The fixed dataset version champion and challenger are measured on; never trained on."""

    dataset: Name
    version: int = Field(
        ge=1, le=MAX_DATASET_VERSION, description="the dataset version (aifactory data versions)"
    )
    digest: Digest | None = Field(
        None, description="the version's digest: when given, a version with another digest is refused"
    )


class LoopMetric(_Model):
    """One metric of the evaluation report and its promotion rule: the target metrics (with the two
    improvement minima) must improve; every other metric may be worse by at most its tolerance."""

    name: MetricName
    better: Literal["higher", "lower"] = Field(description="which way is better for this metric")
    min_improvement: float | None = Field(
        None,
        gt=0,
        le=MAX_METRIC_VALUE,
        allow_inf_nan=False,
        description="a target metric: the challenger beats the champion by at least this much, in the "
        "metric's unit",
    )
    min_relative_improvement: float | None = Field(
        None,
        gt=0,
        le=1000,
        allow_inf_nan=False,
        description="a target metric: and by at least this share of the champion's value (0.02: 2%)",
    )
    tolerance: float | None = Field(
        None,
        ge=0,
        le=MAX_METRIC_VALUE,
        allow_inf_nan=False,
        description="any other metric: how much worse than the champion it may be, in its unit "
        "(default 0: not worse at all)",
    )


class SignOff(_Model):
    """A person's signed sign-off before a promotion (human oversight, EU AI Act Art. 14)."""

    by: list[Email] = Field(min_length=1, max_length=100, description="who may sign off; one of them must")


class Canary(_Model):
    """The challenger serves a share of the requests for a while before it becomes the champion."""

    share: float = Field(
        gt=0, lt=1, allow_inf_nan=False, description="the share of requests the challenger answers, in (0, 1)"
    )
    duration_minutes: int = Field(
        ge=1,
        le=10080,
        description="how long the canary must hold before it becomes the champion, at most a week",
    )
    # Added later: optional, so older specs plan byte-identically (CanaryPlan leaves them out when None).
    min_requests: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="the canary is judged once it answered this many requests in the window (default 20)",
    )
    window_seconds: int | None = Field(
        None,
        ge=1,
        le=86_400,
        description="the error rates of canary and champion are compared over this many last seconds "
        "(default 60)",
    )
    error_margin: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="the canary is withdrawn when its error rate is above the champion's by more than "
        "this fraction (0.05: five points; default 0.05)",
    )


class Loop(_Model):
    """The closed loop of one model: retrain on new data, evaluate, promote by policy (docs/loop.md)."""

    model: Name
    trigger: LoopTrigger
    evaluation: EvaluationSet
    metrics: list[LoopMetric] = Field(min_length=1)
    sign_off: SignOff | None = None
    canary: Canary | None = None


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
    # Added after v1 first shipped: optional, and in the spec digest only when given (plan/build.py).
    logs: Logs | None = None
    monitoring: Monitoring | None = None
    health: Health | None = None
    contacts: Contacts | None = None
    economics: Economics | None = None
    front_door: FrontDoor | None = None
    loop: list[Loop] | None = None

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
        title="aifactory site spec v1",
        json_schema_extra={"patternProperties": {"^x-": {}}},
    )
